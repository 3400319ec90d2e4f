"""Video files -> the frames (and 4.5's temporal groups) each checkpoint's inference feeds.

    info = read_video_info(path)                 # container metadata only (the data check)
    plan = plan_frames(info, scheme)             # which frames, their temporal ids and groups
    frames = decode_frames(path, plan.indices)   # RGB PIL images of exactly those frames

How each checkpoint generation samples a video is its registry entry's `VideoScheme`, from
the checkpoints' published video examples (they read with decord: the frame count and the
average frame rate of the stream; a frame's time is its index / that rate):
- "stride" (2.6, 4.0): every round(fps / scheme.fps)-th frame; above max_frames, max_frames of
  those taken uniformly (the middle of equal runs); frames are images (no image ids, up to
  scheme.max_slice_nums slices each).
- "grouped" (4.5): frames chosen uniformly at scheme.fps (more than max_frames only by packing
  up to max_group frames into one group), each frame's time snapped to the nearest 0.1 s of the
  video's grid -> its temporal id (truncated to an integer as the example's astype does),
  consecutive frames grouped; the 3-D resampler makes one 64-token block per group.
- "processor" (4.6, 4.7): the checkpoint's own video processor picks the frames (its
  `sample_frames`: one a second, at most its max_num_frames) and makes their views,
  placeholders and pixels (minicpmv_ft/processor_video.py); max_frames / max_slice_nums None
  mean the processor's own settings.

Decoding uses PyAV (FFmpeg's libraries, bundled in its wheels, so it installs from the package
index alone; torchcodec needs a system FFmpeg). Frames are counted by decoding order, as
decord indexes them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


SAMPLINGS = ("stride", "grouped", "processor")


@dataclass(frozen=True)
class VideoScheme:
    sampling: str  # SAMPLINGS: "stride" (frames as images), "grouped" (4.5's temporal groups), "processor"
    fps: float | None  # frames sampled per second of video (None: the video processor's)
    max_frames: int | None  # frames (stride, processor) or groups x frames before packing (grouped), at most
    max_slice_nums: int | None  # slices per frame
    max_group: int = 1  # grouped: frames per group at most (the example's MAX_NUM_PACKING)
    time_scale: float = 0.1  # grouped: the temporal id grid, seconds

    def __post_init__(self):
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"video sampling {self.sampling!r} is none of {SAMPLINGS}")

    @property
    def grouped(self) -> bool:
        """4.5's way: temporal groups (one placeholder each) and temporal ids for the model."""
        return self.sampling == "grouped"

    @property
    def by_processor(self) -> bool:
        """The checkpoint's video processor samples and processes the frames (native checkpoints)."""
        return self.sampling == "processor"


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    fps: float  # average frame rate of the video stream
    size: tuple[int, int]  # (W, H)

    @property
    def duration(self) -> float:
        return self.frames / self.fps


@dataclass(frozen=True)
class FramePlan:
    indices: list[int]  # frame numbers in decoding order, non-decreasing
    groups: list[list[int]]  # temporal ids per group (grouped), or one [-1] per frame (stride)

    @property
    def kept(self) -> list[bool]:
        """Per frame: it carries a placeholder (the first frame of each group does)."""
        return [k == 0 for group in self.groups for k in range(len(group))]


class VideoError(ValueError):
    """A video that cannot be read; the message says why."""


def read_video_info(path: str) -> VideoInfo:
    """Frame count, average frame rate and frame size of the first video stream, from the
    container (no decoding unless the container does not record the count)."""
    import av

    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoError("no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            frames = stream.frames or sum(1 for _ in container.decode(stream))
            size = (stream.codec_context.width, stream.codec_context.height)
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise VideoError(f"cannot read video: {exc}") from None
    if not rate or float(rate) <= 0:
        raise VideoError("the video stream has no frame rate")
    if frames <= 0:
        raise VideoError("the video has no frames")
    if min(size) <= 0:
        raise VideoError(f"frame size {size[0]}x{size[1]}")
    return VideoInfo(int(frames), float(rate), size)


def uniform_sample(values: list, count: int) -> list:
    """`count` of `values`, the middle one of each of `count` equal runs (the examples' sampler)."""
    gap = len(values) / count
    return [values[int(k * gap + gap / 2)] for k in range(count)]


def plan_frames(info: VideoInfo, scheme: VideoScheme) -> FramePlan:
    if not scheme.grouped:
        step = max(1, round(info.fps / scheme.fps))
        indices = list(range(0, info.frames, step))
        if len(indices) > scheme.max_frames:
            indices = uniform_sample(indices, scheme.max_frames)
        return FramePlan(indices, [[-1] for _ in indices])
    duration = info.duration
    if scheme.fps * int(duration) <= scheme.max_frames:
        per_group = 1
        count = round(min(scheme.fps, round(info.fps)) * min(scheme.max_frames, duration))
    else:
        per_group = math.ceil(duration * scheme.fps / scheme.max_frames)
        if per_group <= scheme.max_group:
            count = round(duration * scheme.fps)
        else:
            count, per_group = round(scheme.max_frames * scheme.max_group), scheme.max_group
    # more frames than the video has repeat some, as the example's sampler does
    indices = uniform_sample(list(range(info.frames)), max(1, count))
    ids = temporal_ids(np.asarray(indices) / info.fps, duration, scheme.time_scale)
    return FramePlan(indices, [ids[k:k + per_group] for k in range(0, len(ids), per_group)])


def temporal_ids(times: np.ndarray, duration: float, scale: float) -> list[int]:
    """Each time snapped to the nearest point of the grid 0, scale, 2*scale, ... < duration (the
    first of two equally near), divided by the scale and truncated to an integer."""
    grid = np.arange(0, duration, scale)
    if len(grid) == 0:
        grid = np.zeros(1)
    nearest = grid[np.abs(grid[None, :] - times[:, None]).argmin(axis=1)]
    return (nearest / scale).astype(np.int32).tolist()


def decode_frames(path: str, indices: list[int]):
    """RGB PIL images of the frames with these decoding-order numbers."""
    import av

    wanted, frames = set(indices), {}
    try:
        with av.open(path) as container:
            for number, frame in enumerate(container.decode(container.streams.video[0])):
                if number in wanted:
                    frames[number] = frame.to_image(threads=1).convert("RGB")
                if number >= indices[-1]:
                    break
    except (av.error.FFmpegError, OSError) as exc:
        raise VideoError(f"cannot decode video: {exc}") from None
    missing = [i for i in indices if i not in frames]
    if missing:
        raise VideoError(f"frame {missing[0]} could not be decoded (the file has fewer frames than it declares, "
                         "or is cut short)")
    return [frames[i] for i in indices]
