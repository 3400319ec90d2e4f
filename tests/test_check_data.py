"""check_data.py reports every bad sample exactly, the length statistics, and marks trained spans."""
import json
import re

import pytest

import check_data
from conftest import REMOTE_VERSIONS, make_image
from dataset import SupervisedDataset


def conv(*turns):
    return [{"role": r, "content": c} for r, c in turns]


def write_dataset(folder):
    make_image(folder / "ok.png", (300, 300))
    make_image(folder / "wide.png", (1000, 400))
    whole = (folder / "ok.png").read_bytes()
    (folder / "cut.png").write_bytes(whole[:1500])  # header fine, pixels missing
    samples = [
        {"id": "good", "image": "ok.png", "conversations": conv(("user", "<image>\nWhat?"), ("assistant", "Noise."))},
        {"id": "text", "conversations": conv(("user", "Hi"), ("assistant", "Hello there."))},
        {"id": "missing", "image": "nope.png", "conversations": conv(("user", "x"), ("assistant", "y"))},
        {"id": "cut", "image": "cut.png", "conversations": conv(("user", "x"), ("assistant", "y"))},
        {"id": "count", "image": {"<image_00>": "ok.png", "<image_01>": "ok.png"},
         "conversations": conv(("user", "<image_00>"), ("assistant", "y"))},
        {"id": "unknown", "image": {"<image_00>": "ok.png"},
         "conversations": conv(("user", "<image_00><image_03>"), ("assistant", "y"))},
        {"id": "roles", "conversations": conv(("user", "a"), ("user", "b"), ("assistant", "c"))},
        {"id": "noanswer", "conversations": conv(("user", "a"))},
        {"id": "long-prompt", "conversations": conv(("user", "word " * 300), ("assistant", "y"))},
        {"id": "cut-image", "image": "wide.png", "conversations": conv(("user", "a " * 100 + "<image>"), ("assistant", "y"))},
    ]
    (folder / "data.json").write_text(json.dumps(samples))
    return folder / "data.json"


EXPECTED_PROBLEMS = [
    (2, "missing", "failed", "image not found: {folder}/nope.png"),
    (3, "cut", "failed", "cannot read image {folder}/cut.png: Truncated File Read"),
    (4, "count", "failed", "image count mismatch: <image_01> appears 0 times in the text (must be once)"),
    (5, "unknown", "failed", 'unknown image placeholder(s) <image_03>: not keys of "image"'),
    (6, "roles", "failed", "turn 1 is 'user' but 'assistant' was expected: turns must be an optional system turn, "
                           "then user and assistant alternating, starting with user"),
    (7, "noanswer", "failed", "no assistant turn: nothing to train on"),
    (8, "long-prompt", "dropped", "no trained token within model_max_length 200"),
    (9, "cut-image", "dropped", "model_max_length 200 cuts an image span"),
]


@pytest.mark.parametrize("version", REMOTE_VERSIONS)
def test_reports_every_problem_and_the_lengths(tiny_model_dir, tiny, tmp_path, capsys, version):
    data = write_dataset(tmp_path)
    report_file = tmp_path / "report.json"
    code = check_data.main(["--model_name_or_path", str(tiny_model_dir(version)), "--data_path", str(data),
                            "--model_max_length", "200", "--num_workers", "2", "--json", str(report_file)])
    assert code == 1
    report = json.loads(report_file.read_text())
    assert report["failed"] == 6
    (file_report,) = report["files"]
    assert file_report["counts"] == {"samples": 10, "ok": 2, "truncated": 0, "dropped": 2, "failed": 6}
    problems = [(p["index"], p["id"], p["status"], p["reason"]) for p in file_report["problems"]]
    expected = [(i, sid, status, reason.format(folder=tmp_path)) for i, sid, status, reason in EXPECTED_PROBLEMS]
    assert [p[:3] for p in problems] == [p[:3] for p in expected]
    for got, want in zip(problems, expected):
        assert got[3].startswith(want[3]), (got, want)

    # lengths, measured independently through the dataset's own items
    tok, model = tiny(version)
    full = SupervisedDataset(str(data), tok, model.config, skip_bad_samples=True, verify_images=True,
                             model_max_length=10**6)
    lengths = {full.sample(k).sample_id: len(full[k]["input_ids"]) for k in range(len(full))}
    assert file_report["model_max_length_to_keep"]["all"] == max(lengths.values())
    assert file_report["tokens"]["total"]["max"] == max(lengths.values())
    assert file_report["views_per_image"] == {"1": 1, "4": 1}  # ok.png whole; wide.png 1 + 3 slices (3 x 1 grid)
    out = capsys.readouterr().out
    assert f"FAILED {data}, sample 2 (id 'missing'): image not found" in out
    assert "FAILED: 6 sample(s) cannot be trained on as written" in out
    assert ("WARNING: 2 sample(s) dropped, training leaves them out: 1 no trained token within model_max_length "
            "200; 1 model_max_length 200 cuts an image span") in out
    assert "OK:" not in out


def test_clean_data_exits_zero_and_shows_trained_spans(tiny_model_dir, tmp_path, capsys):
    make_image(tmp_path / "ok.png", (300, 300))
    samples = [{"id": "a", "image": "ok.png", "conversations": conv(("user", "<image>\nWhat?"), ("assistant", "Noise."))},
               {"id": "b", "conversations": conv(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hey."))}]
    (tmp_path / "d.json").write_text(json.dumps(samples))
    code = check_data.main(["--model_name_or_path", str(tiny_model_dir("2.6")), "--data_path", str(tmp_path / "d.json"),
                            "--show", "2", "--num_workers", "1"])
    out = capsys.readouterr().out
    assert code == 0 and "OK: every sample trains as written" in out
    assert ("<|im_start|>user\n<image_id>0</image_id><image><unk>x64</image>\nWhat?<|im_end|>\n"
            "<|im_start|>assistant\n[[Noise.<|im_end|>]]\n") in out
    assert "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n" \
           "[[Hey.<|im_end|>]]\n" in out


def test_verify_images_decodes_what_the_default_check_only_reads_the_ends_of(tiny_model_dir, tmp_path, capsys):
    """A PNG with intact header and end but broken compressed pixels passes the default check
    (header + end marker, as training) and fails with --verify_images."""
    make_image(tmp_path / "ok.png", (300, 300))
    whole = bytearray((tmp_path / "ok.png").read_bytes())
    whole[2000:2400] = bytes(400)  # inside the pixel data
    (tmp_path / "broken.png").write_bytes(bytes(whole))
    samples = [{"id": "b", "image": "broken.png", "conversations": conv(("user", "<image>\nWhat?"), ("assistant", "N."))}]
    (tmp_path / "d.json").write_text(json.dumps(samples))
    argv = ["--model_name_or_path", str(tiny_model_dir("2.6")), "--data_path", str(tmp_path / "d.json"),
            "--num_workers", "1"]
    assert check_data.main(argv) == 0
    assert check_data.main(argv + ["--verify_images"]) == 1
    assert f"FAILED {tmp_path / 'd.json'}, sample 0 (id 'b'): cannot read image {tmp_path / 'broken.png'}" \
        in capsys.readouterr().out


def test_dropped_samples_are_a_warning_not_ok(tiny_model_dir, tmp_path, capsys):
    samples = [{"id": "a", "conversations": conv(("user", "Hi"), ("assistant", "Hey."))},
               {"id": "long", "conversations": conv(("user", "word " * 300), ("assistant", "y"))}]
    (tmp_path / "d.json").write_text(json.dumps(samples))
    code = check_data.main(["--model_name_or_path", str(tiny_model_dir("2.6")), "--data_path", str(tmp_path / "d.json"),
                            "--model_max_length", "100", "--num_workers", "1"])
    out = capsys.readouterr().out
    assert code == 0  # dropping is reported, the rest trains
    assert "WARNING: 1 sample(s) dropped, training leaves them out: 1 no trained token within model_max_length 100" \
        in out
    assert "OK:" not in out


def test_minicpm_shows_the_end_of_answer_trained_at_the_next_turn(tiny_model_dir, tmp_path, capsys):
    samples = [{"id": "m", "conversations": conv(("user", "Q1"), ("assistant", "A1"), ("user", "Q2"), ("assistant", "A2"))}]
    (tmp_path / "d.json").write_text(json.dumps(samples))
    check_data.main(["--model_name_or_path", str(tiny_model_dir("2.0")), "--data_path", str(tmp_path / "d.json"),
                     "--show", "1", "--num_workers", "1"])
    out = capsys.readouterr().out
    assert "A1]][[</s>]]<用户>Q2<AI>[[" in out and out.count("</s>]]") == 2


@pytest.mark.parametrize("index,sample_id,status,reason", [p for p in EXPECTED_PROBLEMS if p[2] == "failed"],
                         ids=[p[1] for p in EXPECTED_PROBLEMS if p[2] == "failed"])
def test_finetune_refuses_the_same_samples(tiny_model_dir, tmp_path, index, sample_id, status, reason):
    """finetune.py runs the same checks before loading weights and stops on the same sample."""
    import finetune
    from minicpmv_ft.errors import DataError

    data = write_dataset(tmp_path)
    samples = json.loads(data.read_text())
    (tmp_path / "one_bad.json").write_text(json.dumps([samples[0], samples[index]]))
    args = ["--model_name_or_path", str(tiny_model_dir("2.5")), "--data_path", str(tmp_path / "one_bad.json"),
            "--output_dir", str(tmp_path / "out"), "--use_cpu", "true"]
    with pytest.raises(DataError) as info:
        finetune.train(args)
    assert (info.value.index, info.value.sample_id) == (1, sample_id)
    assert info.value.reason.startswith(reason.format(folder=tmp_path))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content,message", [
    ("[]", "no samples: the JSON list is empty"),
    (json.dumps([{"id": "p", "conversations": conv(("user", "word " * 50), ("assistant", "y"))}]),
     "no sample left to train on"),
])
def test_nothing_to_train_on_is_not_ok(tiny_model_dir, tmp_path, capsys, content, message):
    """Issue 8.8: an empty file or one where every sample is dropped said OK and exited 0."""
    (tmp_path / "d.json").write_text(content)
    code = check_data.main(["--model_name_or_path", str(tiny_model_dir("2.6")), "--data_path", str(tmp_path / "d.json"),
                            "--model_max_length", "20", "--num_workers", "1"])
    out = capsys.readouterr().out
    assert code == 1 and message in out and f"FAILED: nothing to train on in {tmp_path / 'd.json'}" in out
    assert "OK" not in out.splitlines()[-1]


def test_preference_pairs_are_checked_pair_by_pair(tiny_model_dir, tmp_path, capsys):
    """Both sides as training encodes them; a bad pair named with its reason; a pair's length its
    prompt with the longer answer; SFT training names pair data for what it is."""
    import finetune

    make_image(tmp_path / "ok.png", (300, 300))
    pair = {"image": "ok.png", "question": "What is it?", "chosen": "Noise.", "rejected": "A cat."}
    pairs = [{"id": "good", **pair}, {"id": "same", **pair, "rejected": "Noise."},
             {"id": "long", **pair, "rejected": "no " * 300}, {"id": "prompt", "chosen": "a", "rejected": "b",
                                                                "conversations": conv(("user", "Hi"), ("assistant", "x"))}]
    (tmp_path / "pairs.json").write_text(json.dumps(pairs))
    argv = ["--model_name_or_path", str(tiny_model_dir("2.6")), "--data_path", str(tmp_path / "pairs.json"),
            "--model_max_length", "200", "--num_workers", "1", "--json", str(tmp_path / "report.json")]
    assert check_data.main(argv) == 1
    out = capsys.readouterr().out
    source = tmp_path / "pairs.json"
    assert "pairs 4: ok 1 (of which truncated 0), dropped 1, failed 2" in out
    assert f"FAILED {source}, pair 1 (id 'same'): the chosen and the rejected answer are the same" in out
    assert f"DROPPED {source}, pair 2 (id 'long'): its rejected side: model_max_length 200 cuts it" in out
    assert f"FAILED {source}, pair 3 (id 'prompt'): native pair: the prompt must end with a user turn" in out
    assert "FAILED: 2 pair(s) cannot be trained on as written" in out
    assert "WARNING: 1 pair(s) dropped, training leaves them out: 1 its rejected side: model_max_length 200" in out
    report = json.loads((tmp_path / "report.json").read_text())["files"][0]
    sides = SupervisedDataset([{"image": str(tmp_path / "ok.png"), "conversations": conv(
        ("user", "<image>\nWhat is it?"), ("assistant", answer))} for answer in ("Noise.", "A cat.")],
        *load(tiny_model_dir("2.6")))
    assert report["unit"] == "pairs" and report["tokens"]["total"]["max"] > 200
    assert sides.lengths[0] != sides.lengths[1]
    assert report["tokens"]["total"]["p50"] == max(sides.lengths)  # the good pair: its longer side
    with pytest.raises(Exception, match=r"sample 0 \(id 'good'\): a preference pair \(a chosen and a rejected answer\): "
                                        "train pairs with --method dpo"):
        finetune.train(["--model_name_or_path", str(tiny_model_dir("2.6")), "--data_path", str(tmp_path / "pairs.json"),
                        "--output_dir", str(tmp_path / "out"), "--use_cpu", "true", "--report_to", "none"])


def load(path):
    from transformers import AutoConfig, AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=True), AutoConfig.from_pretrained(path,
                                                                                                  trust_remote_code=True)


@pytest.mark.parametrize("version", ["2.6", "4.6"])
def test_show_names_each_side_of_a_pair_and_collapses_a_videos_placeholders(tiny_model_dir, sample_data, tmp_path,
                                                                           capsys, version):
    """Issue 29: --show called both sides of a pair "sample 0" and printed a video's placeholder
    tokens one by one."""
    from conftest import make_video

    check_data.main(["--model_name_or_path", str(tiny_model_dir(version)), "--data_path", str(sample_data / "pairs.json"),
                     "--show", "1", "--num_workers", "1"])
    headers = [line.split(" (id")[0] for line in capsys.readouterr().out.splitlines() if line.startswith("--- ")]
    assert headers == ["--- pair 0, chosen", "--- pair 0, rejected"]
    make_video(tmp_path / "clip.mp4", frames=12)
    (tmp_path / "v.json").write_text(json.dumps([{"id": "v", "video": "clip.mp4", "conversations": conv(
        ("user", "<video>\nWhat?"), ("assistant", "Grey."))}]))
    check_data.main(["--model_name_or_path", str(tiny_model_dir(version)), "--data_path", str(tmp_path / "v.json"),
                     "--show", "1", "--num_workers", "1"])
    shown = capsys.readouterr().out.split("--- sample 0 (id 'v')")[1]
    assert re.search(r"(<[^<>\s]+>)\1\1", shown) is None and re.search(r">x\d+", shown)
