"""Video samples: exact ids, labels, image bounds and temporal ids against each checkpoint's own
video path (frames as images through its inference slicer, no image ids; 4.5's processor drops
the placeholders of all but the first frame of a group and the newline before each), and bad
videos as data errors."""
import dataclasses
import re
from functools import partial

import pytest
import torch

from conftest import REGISTRY, make_video
from dataset import SupervisedDataset, data_collator
from minicpmv_ft.batching import REMOTE_MEDIA, packed_collate
from minicpmv_ft.errors import DataError
from minicpmv_ft.video import VideoScheme

# the remote-code versions' video paths; the native ones' (their video processors): test_native_video.py
VIDEO_VERSIONS = [name for name, version in REGISTRY.items() if version.video and not version.video.by_processor]
# 4.5 with a small frame budget, so a 2.5 s video packs 2 frames per group: 8 frames, 4 groups
GROUPED_SMALL = VideoScheme("grouped", fps=3, max_frames=4, max_slice_nums=1, max_group=3)


def reference_ids(tok, model, version, question, answer, frames, kept):
    """The checkpoint's encoding of chat(msgs=[{"role": "user", "content": frames + [question]}],
    use_image_id=False, max_slice_nums=...): the content joined by "\\n" with one image tag per
    frame, the template rendered, then each tag replaced by the inference slicer's placeholder,
    or (4.5, a frame not first in its group) by nothing, the text before it stripped."""
    slicer = model._slicer(REGISTRY[version].video.max_slice_nums)
    slicer.use_image_id = False
    tag = "(<image>./</image>)"
    content = "\n".join([tag] * len(kept) + [question])
    text = tok.apply_chat_template([{"role": "user", "content": content}, {"role": "assistant", "content": answer}],
                                   tokenize=False)
    chunks = text.split(tag)
    out = ""
    for k, keep in enumerate(kept):
        out += chunks[k] + slicer.placeholder(tok, slicer.slices(frames[k])[1], k) if keep else chunks[k].strip()
    out += chunks[-1]
    return tok(out, add_special_tokens=REGISTRY[version].encode_adds_special_tokens)["input_ids"]


@pytest.mark.parametrize("version", VIDEO_VERSIONS)
def test_video_sample_matches_the_checkpoints_video_path(tiny, tmp_path, version):
    tok, model = tiny(version)
    path = make_video(tmp_path / "clip.mp4", frames=25, fps=10)  # 2.5 s
    scheme = GROUPED_SMALL if REGISTRY[version].video.sampling == "grouped" else None
    sample = {"video": "clip.mp4", "conversations": [{"role": "user", "content": "<video>\nWhat changes?"},
                                                     {"role": "assistant", "content": "It gets brighter."}]}
    dataset = SupervisedDataset([sample], tok, model.config, base_dir=str(tmp_path), video=scheme)
    item = dataset[0]
    from minicpmv_ft.video import decode_frames, plan_frames, read_video_info

    plan = plan_frames(read_video_info(path), dataset.version.video)
    frames = decode_frames(path, plan.indices)
    expected = reference_ids(tok, model, version, "What changes?", "It gets brighter.", frames, plan.kept)
    assert item["input_ids"].tolist() == expected
    q = model.config.query_num
    starts = [i + 1 for i, t in enumerate(expected) if t == tok.im_start_id]
    assert item["image_bound"].tolist() == [[s, s + q] for s in starts]
    trained = tok.decode([t for t, label in zip(expected, item["labels"].tolist()) if label != -100])
    assert trained.startswith("It gets brighter.")
    if scheme is None:  # 2.6 / 4.0: 1 frame a second -> frames 0, 10, 20, each an unsliced image
        assert plan.indices == [0, 10, 20] and len(item["pixel_values"]) == len(starts) == 3
        assert "temporal_ids" not in item or item["temporal_ids"] == [[-1]] * 3
    else:  # 4.5: 8 frames in 4 groups of 2; one placeholder per group, every frame's pixels
        assert plan.indices == [1, 4, 7, 10, 14, 17, 20, 23] and len(starts) == 4
        assert item["temporal_ids"] == [[1, 4], [7, 10], [14, 17], [20, 23]]
        assert len(item["pixel_values"]) == 8 and item["tgt_sizes"].shape == (8, 2)


def test_4_5_images_and_videos_in_one_sample_are_in_text_order(tiny, tmp_path):
    from conftest import make_image

    tok, model = tiny("4.5")
    make_video(tmp_path / "a.mp4", frames=25, fps=10)
    make_image(tmp_path / "p.png", (300, 200))
    sample = {"image": "p.png", "video": {"<video_00>": "a.mp4"},
              "conversations": [{"role": "user", "content": "<video_00> then this picture: <image> Same colours?"},
                                {"role": "assistant", "content": "No."}]}
    item = SupervisedDataset([sample], tok, model.config, base_dir=str(tmp_path), video=GROUPED_SMALL)[0]
    # video first (4 groups of 2 frames), then the image's one view; bounds in the same order
    assert item["temporal_ids"] == [[1, 4], [7, 10], [14, 17], [20, 23], [-1]]
    assert len(item["pixel_values"]) == 9 and len(item["image_bound"]) == 5
    ids = item["input_ids"].tolist()
    assert tok.convert_tokens_to_ids("<image_id>") not in ids  # a sample with a video has no image ids


def test_a_mixed_batch_of_videos_an_image_and_text_runs_forward_and_backward(tiny, tmp_path):
    from conftest import make_image

    make_video(tmp_path / "short.mp4", frames=12, fps=10)
    make_video(tmp_path / "long.mp4", frames=30, fps=10)
    make_image(tmp_path / "p.png", (300, 200))

    def turn(content):
        return [{"role": "user", "content": content}, {"role": "assistant", "content": "Fine."}]

    samples = [{"video": "short.mp4", "conversations": turn("<video>\nDescribe.")},
               {"video": "long.mp4", "conversations": turn("<video>\nDescribe.")},
               {"image": "p.png", "conversations": turn("<image>\nAnd this?")},
               {"conversations": turn("No picture.")}]
    one_row = partial(packed_collate, layout=REMOTE_MEDIA)
    for version, collate, scheme in (("2.6", data_collator, None), ("4.5", one_row, GROUPED_SMALL)):
        tok, model = tiny(version)
        dataset = SupervisedDataset(samples, tok, model.config, base_dir=str(tmp_path), video=scheme)
        batch = collate([dataset[i] for i in range(4)])
        labels = batch.pop("labels")
        model.train()
        model.zero_grad()
        logits = model(data=batch, attention_mask=batch.get("attention_mask"), use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten())
        loss.backward()
        assert torch.isfinite(loss)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "resampler" in n)
        model.zero_grad()


@pytest.mark.parametrize("content,reason", [
    (None, "video not found: {folder}/clip.mp4"),
    (b"", "{folder}/clip.mp4: cannot read video"),
    (b"garbage" * 50, "{folder}/clip.mp4: cannot read video"),
])
def test_unreadable_videos_fail_the_check_naming_the_sample(tiny, tmp_path, content, reason):
    tok, model = tiny("2.6")
    if content is not None:
        (tmp_path / "clip.mp4").write_bytes(content)
    sample = {"id": "v1", "video": "clip.mp4", "conversations": [{"role": "user", "content": "<video> What?"},
                                                                {"role": "assistant", "content": "x"}]}
    with pytest.raises(DataError, match=re.escape("sample 0 (id 'v1'): " + reason.format(folder=tmp_path))):
        SupervisedDataset([sample], tok, model.config, base_dir=str(tmp_path))


@pytest.mark.parametrize("version", [name for name, v in REGISTRY.items() if not v.video])
def test_a_video_on_a_version_without_video_is_a_data_error(tiny, tmp_path, version):
    tok, model = tiny(version)
    make_video(tmp_path / "clip.mp4", frames=5)
    sample = {"video": "clip.mp4", "conversations": [{"role": "user", "content": "<video> What?"},
                                                     {"role": "assistant", "content": "x"}]}
    from minicpmv_ft.versions import VERSIONS

    takers = ", ".join(name for name, entry in VERSIONS.items() if entry.video)  # the registry's, not a list
    with pytest.raises(DataError, match=re.escape(f"MiniCPM-V {REGISTRY[version].name} takes no video; use one that "
                                                  f"does ({takers}), or give frames as images")):
        SupervisedDataset([sample], tok, model.config, base_dir=str(tmp_path))


def test_the_check_reports_frames_groups_and_tokens_per_video(tiny, tmp_path):
    tok, model = tiny("4.5")
    make_video(tmp_path / "clip.mp4", frames=25, fps=10)
    sample = {"video": "clip.mp4", "conversations": [{"role": "user", "content": "<video>\nWhat?"},
                                                     {"role": "assistant", "content": "x"}]}
    dataset = SupervisedDataset([sample], tok, model.config, base_dir=str(tmp_path), video=GROUPED_SMALL)
    (video,) = dataset.reports[0].videos
    q = model.config.query_num
    assert video == {"path": str(tmp_path / "clip.mp4"), "seconds": 2.5, "frames": 8, "groups": 4,
                     "tokens": 4 * (q + 2) + 3}  # 4 blocks of <image> + q + </image>, 3 newlines between


def test_check_data_reports_video_frames_groups_and_tokens(tiny_model_dir, tmp_path, capsys):
    import json

    import check_data

    make_video(tmp_path / "clip.mp4", frames=25, fps=10)
    sample = {"video": "clip.mp4", "conversations": [{"role": "user", "content": "<video>\nWhat?"},
                                                     {"role": "assistant", "content": "x"}]}
    (tmp_path / "d.json").write_text(json.dumps([sample]))
    code = check_data.main(["--model_name_or_path", str(tiny_model_dir("2.6")), "--data_path", str(tmp_path / "d.json"),
                            "--num_workers", "1", "--json", str(tmp_path / "r.json")])
    assert code == 0
    videos = json.loads((tmp_path / "r.json").read_text())["files"][0]["videos"]
    tokens = 3 * 66 + 2  # 2.6: 3 frames (1 a second) of <image> + 64 + </image>, 2 newlines
    assert videos == {"count": 1, "seconds": {"p50": 2.5, "max": 2.5}, "frames": {"p50": 3, "max": 3},
                      "groups": {"p50": 3, "max": 3}, "tokens": {"p50": tokens, "max": tokens},
                      "tokens_per_second": round(tokens / 2.5, 1)}
    out = capsys.readouterr().out
    assert f"videos 1: seconds p50 2.5 max 2.5; frames p50 3 max 3; placeholders (groups) p50 3 max 3; tokens p50 " \
           f"{tokens} max {tokens} ({round(tokens / 2.5, 1)} per second of video)" in out
    assert "no images" not in out and "views per image" not in out  # issue 18.9: video-only data


@pytest.mark.parametrize("version,scheme", [("2.6", None), ("4.0", None), ("4.5", None), ("4.5", GROUPED_SMALL)])
def test_chat_about_a_video_sees_the_prompt_pixels_and_groups_training_uses(tiny, tmp_path, monkeypatch, version,
                                                                            scheme):
    import chat

    tok, model = tiny(version)
    entry = REGISTRY[version] if scheme is None else dataclasses.replace(REGISTRY[version], video=scheme)
    path = make_video(tmp_path / "clip.mp4", frames=25, fps=10)
    captured = []
    monkeypatch.setattr(model, "_generate", lambda data, tokenizer, **decoding: captured.append(data) or "")
    frames, extra = chat.video_frames(entry, path)
    chat.answer(model, tok, entry, frames, "What changes?", extra=extra)
    (data,) = captured
    sample = {"video": path, "conversations": [{"role": "user", "content": "<video>\nWhat changes?"},
                                               {"role": "assistant", "content": "It gets brighter."}]}
    item = SupervisedDataset([sample], tok, model.config, version=entry)[0]
    prompt = data["input_ids"][0].tolist()
    assert item["input_ids"].tolist()[:len(prompt)] == prompt
    assert item["image_bound"].tolist() == data["image_bound"][0].tolist()
    assert len(item["pixel_values"]) == len(data["pixel_values"][0])
    assert all(torch.equal(a, b) for a, b in zip(item["pixel_values"], data["pixel_values"][0]))
    if entry.temporal_ids:
        assert item["temporal_ids"] == data["temporal_ids"][0]


def test_chat_command_line_answers_about_a_video(tiny_model_dir, tmp_path, capsys):
    import chat

    path = make_video(tmp_path / "clip.mp4", frames=25, fps=10)
    chat.main(["--model", str(tiny_model_dir("4.5")), "--video", path, "--question", "What?", "--max_new_tokens", "3"])
    assert capsys.readouterr().out.count("\n") == 1
    with pytest.raises(SystemExit) as exit_info:
        chat.main(["--model", str(tiny_model_dir("2.5")), "--video", path, "--question", "What?"])
    assert exit_info.value.code == 2 and "takes no video" in capsys.readouterr().err


def test_predict_asks_about_a_video_sample_as_chat_does(tiny_model_dir, tmp_path, capsys):
    import json

    import predict

    make_video(tmp_path / "clip.mp4", frames=25, fps=10)
    samples = [{"id": "v", "video": "clip.mp4", "conversations": [{"role": "user", "content": "<video>\nWhat?"},
                                                                 {"role": "assistant", "content": "x"}]},
               {"id": "t", "conversations": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "y"}]},
               {"id": "two", "video": {"<video_00>": "clip.mp4", "<video_01>": "clip.mp4"},
                "conversations": [{"role": "user", "content": "<video_00><video_01> Same?"},
                                  {"role": "assistant", "content": "z"}]}]
    (tmp_path / "d.json").write_text(json.dumps(samples))
    predict.main(["--model", str(tiny_model_dir("2.6")), "--data", str(tmp_path / "d.json"), "--out",
                  str(tmp_path / "p.jsonl"), "--max_new_tokens", "3"])
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == ["v", "t"] and rows[0]["question"] == "What?"
    captured = capsys.readouterr()
    assert "sample 2 (id 'two'): predict.py asks about one video, without images, per sample" in captured.err
    assert "2 samples predicted (1 could not be asked and were skipped, each listed above)" in captured.out
