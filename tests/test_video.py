"""Video frames as the checkpoints' published video examples sample them (values worked out by
hand from their rules), and unreadable videos as errors."""
import numpy as np
import pytest

from conftest import make_video
from minicpmv_ft.versions import VERSIONS
from minicpmv_ft.video import (FramePlan, VideoError, VideoInfo, VideoScheme, decode_frames, plan_frames,
                               read_video_info, temporal_ids)

STRIDE = VERSIONS["2.6"].video
GROUPED = VERSIONS["4.5"].video


def test_a_written_video_reads_back_with_its_count_rate_size_and_frames(tmp_path):
    path = make_video(tmp_path / "v.mp4", frames=25, fps=10)
    info = read_video_info(path)
    assert (info.frames, info.fps, info.size, info.duration) == (25, 10.0, (64, 48), 2.5)
    frames = decode_frames(path, [0, 10, 20])
    assert [frame.size for frame in frames] == [(64, 48)] * 3
    means = [float(np.asarray(frame).mean()) for frame in frames]
    assert np.allclose(means, [0, 100, 200], atol=2)  # frame k is grey 10 k (a lossy codec: within 2)


def test_frames_decode_in_a_process_forked_after_this_one_decoded(tmp_path):
    """DataLoader workers are forked from a process that may have decoded frames before (the data
    check, an earlier run in the same process): the frame converter's thread pool, kept by PyAV
    between calls, was inherited half-alive, and a forked worker's first frame hung forever in
    libswscale (a video training run stopped with no error)."""
    import multiprocessing
    import queue

    make_video(tmp_path / "v.mp4", frames=20, fps=10, size=(48, 32))
    expected = [np.asarray(frame) for frame in decode_frames(str(tmp_path / "v.mp4"), [0, 5, 10])]
    results = multiprocessing.get_context("fork").Queue()
    child = multiprocessing.get_context("fork").Process(
        target=lambda: results.put([np.asarray(frame) for frame in decode_frames(str(tmp_path / "v.mp4"), [0, 5, 10])]))
    child.start()
    try:
        decoded = results.get(timeout=60)  # before join: the child exits once its frames are sent
    except queue.Empty:
        decoded = None
    child.kill()
    assert decoded is not None, "decoding in the forked process hung"
    assert len(decoded) == 3 and all(np.array_equal(a, b) for a, b in zip(decoded, expected))


def test_stride_sampling_of_2_6_and_4_0():
    assert VERSIONS["4.0"].video == STRIDE and STRIDE.max_slice_nums == 2
    assert plan_frames(VideoInfo(25, 10.0, (64, 48)), STRIDE) == FramePlan([0, 10, 20], [[-1], [-1], [-1]])
    # 29.97 fps -> every 30th frame; 100 s -> 100 frames, over 64: 64 of them, the middle of equal runs
    plan = plan_frames(VideoInfo(2997, 29.97, (640, 480)), STRIDE)
    every_30th = list(range(0, 2997, 30))
    assert len(every_30th) == 100 and len(plan.indices) == 64
    assert plan.indices[:3] == [every_30th[0], every_30th[2], every_30th[3]]  # gap 100/64: int(0.78), int(2.34), ...
    assert all(group == [-1] for group in plan.groups) and all(plan.kept)


def test_grouped_sampling_of_4_5_short_medium_and_long():
    short = plan_frames(VideoInfo(25, 10.0, (64, 48)), GROUPED)
    # 2.5 s: round(min(3, 10) * 2.5) = 8 frames, gap 25 / 8; times / 0.1 s snapped to the grid
    assert short.indices == [1, 4, 7, 10, 14, 17, 20, 23]
    assert short.groups == [[1], [4], [7], [10], [14], [17], [20], [23]]
    medium = plan_frames(VideoInfo(3000, 30.0, (64, 48)), GROUPED)
    # 100 s: 300 frames > 180 -> 2 per group; frames 5, 15, 25, 35 at 0.167, 0.5, 0.833, 1.167 s -> ids 2, 5, 8, 12
    assert len(medium.indices) == 300 and medium.indices[:3] == [5, 15, 25]
    assert medium.groups[:2] == [[2, 5], [8, 12]] and len(medium.groups) == 150
    assert medium.kept[:4] == [True, False, True, False]
    long = plan_frames(VideoInfo(30000, 30.0, (64, 48)), GROUPED)
    # 1000 s: 17 per group would be needed; capped at 3 per group, 180 x 3 frames
    assert len(long.indices) == 540 and {len(group) for group in long.groups} == {3} and len(long.groups) == 180


def test_temporal_ids_truncate_as_the_published_example():
    # 0.7 s is the grid value 7 * 0.1 = 0.7000000000000001, / 0.1 -> 7.000000000000001 -> 7;
    # 0.3 / 0.1 = 2.9999999999999996 would truncate to 2, but the grid holds 3 * 0.1 = 0.30000000000000004
    assert temporal_ids(np.array([0.7, 0.3, 0.05, 0.149]), 1.0, 0.1) == [7, 3, 0, 1]


@pytest.mark.parametrize("content,reason", [
    (b"", "cannot read video"),
    (b"not a video at all" * 10, "cannot read video"),
])
def test_unreadable_videos_are_errors(tmp_path, content, reason):
    (tmp_path / "bad.mp4").write_bytes(content)
    with pytest.raises(VideoError, match=reason):
        read_video_info(str(tmp_path / "bad.mp4"))


def test_a_video_cut_short_fails_when_its_frames_are_decoded(tmp_path):
    with open(make_video(tmp_path / "v.mp4", 40), "rb") as handle:
        whole = handle.read()
    (tmp_path / "cut.mp4").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(VideoError):
        info = read_video_info(str(tmp_path / "cut.mp4"))
        decode_frames(str(tmp_path / "cut.mp4"), plan_frames(info, STRIDE).indices + [info.frames - 1])


def test_a_native_versions_video_options_are_its_video_processors():
    """--video_max_frames / --video_max_slice_nums override its video processor's settings (None:
    its own); it takes one frame a second, so --video_fps is refused; an unknown sampling fails."""
    from minicpmv_ft.arguments import DataArguments, video_scheme

    native = next(v for v in VERSIONS.values() if v.video and v.video.by_processor)
    scheme = video_scheme(native, DataArguments(data_path="x", video_max_frames=3))
    assert (scheme.max_frames, scheme.max_slice_nums) == (3, None)
    with pytest.raises(ValueError, match=f"--video_fps: MiniCPM-V {native.name}'s video processor takes one frame a "
                                         "second"):
        video_scheme(native, DataArguments(data_path="x", video_fps=2))
    with pytest.raises(ValueError, match="video sampling 'strided' is none of"):
        VideoScheme("strided", fps=1, max_frames=8, max_slice_nums=1)
