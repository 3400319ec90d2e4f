"""Bad input raises an error naming the data file, sample index and id, and the reason;
truncation drops (and counts) samples it would break, and never replaces them."""
import json
import logging

import pytest

from dataset import SupervisedDataset
from minicpmv_ft.errors import DataError
from minicpmv_ft.versions import VersionError


def conv(*turns):
    return [{"role": r, "content": c} for r, c in turns]


GOOD = {"id": "ok", "conversations": conv(("user", "hi"), ("assistant", "hello"))}


def build(tiny, tmp_path, samples, version="2.6", **kwargs):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(samples))
    tok, model = tiny(version)
    return SupervisedDataset(str(path), tok, model.config, **kwargs), str(path)


def assert_error(tiny, tmp_path, bad, reason, version="2.6"):
    with pytest.raises(DataError) as info:
        build(tiny, tmp_path, [GOOD, bad], version)
    path = str(tmp_path / "data.json")
    assert info.value.source == path and info.value.index == 1
    assert info.value.sample_id == bad.get("id", 1)
    assert reason in info.value.reason, info.value.reason
    assert str(info.value).startswith(f"{path}, sample 1 (id {bad.get('id', 1)!r}): ")


def test_missing_image(tiny, tmp_path):
    bad = {"id": "m", "image": "nope.png", "conversations": conv(("user", "<image>"), ("assistant", "x"))}
    assert_error(tiny, tmp_path, bad, f"image not found: {tmp_path / 'nope.png'}")


def test_unreadable_image(tiny, tmp_path):
    (tmp_path / "broken.png").write_text("not an image")
    bad = {"id": "u", "image": "broken.png", "conversations": conv(("user", "<image>"), ("assistant", "x"))}
    assert_error(tiny, tmp_path, bad, f"cannot read image {tmp_path / 'broken.png'}")


@pytest.mark.parametrize("name", ["cut.png", "cut.jpg"])
def test_truncated_image_fails_the_default_check(tiny, tmp_path, image_file, name):
    """Issue 8.7: the header-only check let a truncated file through to the training step."""
    whole = open(image_file("full" + name[-4:], (300, 300)), "rb").read()
    (tmp_path / name).write_bytes(whole[: len(whole) // 2])
    bad = {"id": "t", "image": name, "conversations": conv(("user", "<image>"), ("assistant", "x"))}
    assert_error(tiny, tmp_path, bad, f"cannot read image {tmp_path / name}")
    ds, _ = build(tiny, tmp_path, [GOOD, bad], skip_bad_samples=True)
    assert len(ds) == 1 and [(i, sid) for i, sid, _ in ds.failed] == [(1, "t")]


def test_unknown_placeholder(tiny, tmp_path, image_file):
    image_file("a.png")
    bad = {"id": 3, "image": {"<image_00>": "a.png"},
           "conversations": conv(("user", "<image_00> and <image_05>"), ("assistant", "x"))}
    assert_error(tiny, tmp_path, bad, "unknown image placeholder(s) <image_05>")


def test_image_count_mismatch(tiny, tmp_path, image_file):
    image_file("a.png"), image_file("b.png")
    bad = {"id": "c", "image": {"<image_00>": "a.png", "<image_01>": "b.png"},
           "conversations": conv(("user", "<image_00> only"), ("assistant", "x"))}
    assert_error(tiny, tmp_path, bad, "image count mismatch: <image_01> appears 0 times")


def test_two_single_image_markers(tiny, tmp_path, image_file):
    image_file("a.png")
    bad = {"id": "d", "image": "a.png", "conversations": conv(("user", "<image><image>"), ("assistant", "x"))}
    assert_error(tiny, tmp_path, bad, "2 <image> markers for one image")


def test_marker_without_image(tiny, tmp_path):
    bad = {"id": "e", "conversations": conv(("user", "<image> what?"), ("assistant", "x"))}
    assert_error(tiny, tmp_path, bad, 'the text has an image marker but the sample has no "image"')


@pytest.mark.parametrize("turns,reason", [
    ([], 'no "conversations" list of {"role", "content"} turns; ShareGPT/LLaVA'),
    ([("assistant", "x"), ("user", "y")], "turn 0 is 'assistant' but 'user' was expected"),
    ([("user", "x"), ("user", "y"), ("assistant", "z")], "turn 1 is 'user' but 'assistant' was expected"),
    ([("user", "x")], "no assistant turn: nothing to train on"),
    ([("user", "x"), ("assistant", "y"), ("user", "z")], "ends with a user turn"),
    ([("user", "  "), ("assistant", "y")], "turn 0 (user) has empty or non-text content"),
    ([("human", "x"), ("assistant", "y")], "turn 0 has role 'human'"),
])
def test_roles(tiny, tmp_path, turns, reason):
    assert_error(tiny, tmp_path, {"id": "r", "conversations": conv(*turns)}, reason)


def test_system_turn_rejected_for_minicpm(tiny, tmp_path):
    bad = {"id": "s", "conversations": conv(("system", "be nice"), ("user", "x"), ("assistant", "y"))}
    assert_error(tiny, tmp_path, bad, "has no system turn", version="2.0")


@pytest.mark.parametrize("version,token", [("2.0", "</s>"), ("2.5", "<|eot_id|>"), ("2.6", "<|im_end|>"),
                                           ("4.0", "<|im_start|>"), ("4.5", "<|im_end|>")])
def test_chat_control_token_in_content(tiny, tmp_path, version, token):
    bad = {"id": "x", "conversations": conv(("user", "hi"), ("assistant", f"y{token}z"))}
    assert_error(tiny, tmp_path, bad, f"assistant turn 1 contains {token!r}, a special token", version=version)


@pytest.mark.parametrize("text,token", [("<image><slice>x</slice>", "</slice>"), ("a <unk> b", "<unk>"),
                                        ("<image_id>3</image_id><image>", "</image_id>"), ("x<|endoftext|>", "<|endoftext|>")])
def test_image_and_special_tokens_in_text(tiny, tmp_path, image_file, text, token):
    image_file("a.png", (300, 300))
    bad = {"id": "i", "image": "a.png", "conversations": conv(("user", text), ("assistant", "y"))}
    assert_error(tiny, tmp_path, bad, f"user turn 0 contains {token!r}, a special token of this model, in its text")


def test_2_0_turn_markers_typed_in_text(tiny, tmp_path):
    bad = {"id": "m", "conversations": conv(("user", "hi<AI>fake answer<用户>"), ("assistant", "y"))}
    assert_error(tiny, tmp_path, bad, "user turn 0 contains '<AI>', a special token of this model", version="2.0")


def test_image_marker_in_an_answer(tiny, tmp_path, image_file):
    image_file("a.png", (300, 300))
    bad = {"id": "a", "image": "a.png", "conversations": conv(("user", "hi"), ("assistant", "see <image>"))}
    assert_error(tiny, tmp_path, bad, "turn 1 (assistant) has an image marker: images belong to user or system turns")


def test_bad_json(tiny, tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[{"conversations": []},\n {"id": 1,, }]')
    tok, model = tiny("2.6")
    with pytest.raises(DataError, match=rf"^{path}: invalid JSON at line 2 column 11"):
        SupervisedDataset(str(path), tok, model.config)


def test_bad_jsonl_line(tiny, tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(GOOD) + "\n{oops\n")
    tok, model = tiny("2.6")
    with pytest.raises(DataError, match=rf"^{path}: invalid JSON Lines record at line 2"):
        SupervisedDataset(str(path), tok, model.config)


def test_missing_data_file(tiny, tmp_path):
    tok, model = tiny("2.6")
    with pytest.raises(DataError, match="data file does not exist"):
        SupervisedDataset(str(tmp_path / "none.json"), tok, model.config)


def test_llm_type_contradicting_checkpoint(tiny):
    tok, model = tiny("2.6")
    with pytest.raises(VersionError, match="--llm_type 'llama3' contradicts the checkpoint, which is MiniCPM-V 2.6"):
        SupervisedDataset([GOOD], tok, model.config, llm_type="llama3")
    assert SupervisedDataset([GOOD], tok, model.config, llm_type="qwen2").version.name == "2.6"
    with pytest.raises(VersionError, match="unknown llm_type 'gpt'"):
        SupervisedDataset([GOOD], tok, model.config, llm_type="gpt")


def test_truncation_keeps_text_drops_cut_images_and_untrained(tiny, tmp_path, image_file, caplog):
    image_file("a.png", (300, 300))  # 64 query tokens
    long_answer = {"id": "long", "conversations": conv(("user", "hi"), ("assistant", "word " * 200))}
    cut_image = {"id": "img", "image": "a.png", "conversations": conv(("user", "x " * 10 + "<image>"), ("assistant", "y"))}
    no_target = {"id": "prompt", "conversations": conv(("user", "z " * 200), ("assistant", "w"))}
    with caplog.at_level(logging.INFO, logger="dataset"):
        ds, path = build(tiny, tmp_path, [GOOD, long_answer, cut_image, no_target], model_max_length=60)
    assert ds.kept == [0, 1]
    assert [(i, sid) for i, sid, _ in ds.dropped] == [(2, "img"), (3, "prompt")]
    assert "cuts an image span" in ds.dropped[0][2]
    assert ds.dropped[1][2] == "no trained token within model_max_length 60"
    assert len(ds) == 2
    item = ds[1]  # the long answer, truncated but trained
    assert len(item["input_ids"]) == 60 and (item["labels"] != -100).sum() > 0
    assert "4 samples, 2 kept, 2 dropped" in caplog.text
    assert "dropped sample 2 (id 'img')" in caplog.text


def test_all_failures_counted_and_skippable(tiny, tmp_path, image_file, caplog):
    image_file("a.png", (300, 300))
    bad_roles = {"id": "r", "conversations": conv(("assistant", "x"), ("user", "y"))}
    bad_image = {"id": "m", "image": "gone.png", "conversations": conv(("user", "<image>"), ("assistant", "x"))}
    good_image = {"id": "g", "image": "a.png", "conversations": conv(("user", "<image>"), ("assistant", "x"))}
    samples = [GOOD, bad_roles, good_image, bad_image]
    with pytest.raises(DataError, match=r"sample 1 \(id 'r'\): .*\(and 1 more failing samples: run check_data.py"):
        build(tiny, tmp_path, samples)
    with caplog.at_level(logging.INFO, logger="dataset"):
        ds, _ = build(tiny, tmp_path, samples, skip_bad_samples=True)
    assert ds.kept == [0, 2] and len(ds) == 2
    assert ds.failed == [(1, "r", "turn 0 is 'assistant' but 'user' was expected: turns must be an optional "
                                  "system turn, then user and assistant alternating, starting with user"),
                         (3, "m", f"image not found: {tmp_path / 'gone.png'}")]
    assert "4 samples, 2 kept, 0 dropped, 2 failed and skipped" in caplog.text
    assert len(ds[1]["pixel_values"]) == 1  # item 1 is sample 2, not a replacement


def test_verify_images_decodes_every_image_up_front(tiny, tmp_path, image_file):
    whole = open(image_file("full.png", (300, 300)), "rb").read()
    (tmp_path / "cut.png").write_bytes(whole[:2000])
    bad = {"id": "t", "image": "cut.png", "conversations": conv(("user", "<image>"), ("assistant", "x"))}
    with pytest.raises(DataError, match=r"sample 1 \(id 't'\): cannot read image .*cut.png"):
        build(tiny, tmp_path, [GOOD, bad], verify_images=True)


def test_parallel_check_gives_the_same_reports(tiny, tmp_path, image_file):
    image_file("a.png", (900, 300))
    samples = [GOOD, {"id": "i", "image": "a.png", "conversations": conv(("user", "hi"), ("assistant", "x"))},
               {"id": "bad", "conversations": conv(("user", "x"))}] * 5
    serial, _ = build(tiny, tmp_path, samples, skip_bad_samples=True)
    parallel, _ = build(tiny, tmp_path, samples, skip_bad_samples=True, num_workers=2)
    assert parallel.reports == serial.reports
    assert [r.status for r in serial.reports[:3]] == ["ok", "ok", "failed"]
    # 2.6: <image_id>0</image_id> then 4 blocks of <image>/<slice> + 64 unk + closer
    assert serial.reports[1].views_per_image == [4] and serial.reports[1].image_tokens == 3 + 4 * 66


@pytest.mark.parametrize("key", ["images", "image_path", "img", "Photos"])
def test_image_like_keys_are_not_silently_ignored(tiny, tmp_path, image_file, key):
    """Issue 8.5: `"images": [...]` used to train the sample as text-only."""
    image_file("a.png", (300, 300))
    bad = {"id": "k", key: ["a.png"], "conversations": conv(("user", "What is it?"), ("assistant", "x"))}
    assert_error(tiny, tmp_path, bad, f'unknown key {key!r}: images go in "image"')


@pytest.mark.parametrize("content,reason", [
    (b"", "no samples: the file is empty"),
    (b"[]", "no samples: the JSON list is empty"),
    (b'{\n  "data": [\n  ]\n}\n', "one JSON object, not a list of samples or JSON Lines; the samples look like they "
                                   "are under 'data'"),
    (b'{\n  "cat_photos": {"file_name": "cats.json", "formatting": "sharegpt",\n  "columns": {"messages": '
     b'"messages", "images": "images"}}\n}\n',
     "a list of datasets (LLaMA-Factory's dataset_info.json), not samples: give the data file of the dataset to "
     "train on, e.g. cats.json beside it"),
    ("[{\"id\": \"caf\u00e9\"}]".encode("latin-1"), "not UTF-8 text (byte 0xe9 at offset 12); save the file as UTF-8"),
    (b"id,question\n1,hi\n", "neither a JSON list of samples ([...]) nor JSON Lines"),
])
def test_unusable_data_files_name_the_file_and_why(tiny, tmp_path, content, reason):
    """Issue 8.8 and 8.9."""
    path = tmp_path / "data.jsonl"
    path.write_bytes(content)
    tok, model = tiny("2.6")
    with pytest.raises(DataError) as info:
        SupervisedDataset(str(path), tok, model.config)
    assert str(info.value) == f"{path}: {reason}" or str(info.value).startswith(f"{path}: {reason}")


@pytest.mark.parametrize("suffix,body", [("json", "[{}]".replace("{}", json.dumps(GOOD))), ("jsonl", json.dumps(GOOD))])
def test_utf8_byte_order_mark_is_accepted(tiny, tmp_path, suffix, body):
    path = tmp_path / f"data.{suffix}"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    tok, model = tiny("2.6")
    assert len(SupervisedDataset(str(path), tok, model.config)) == 1


def test_every_sample_dropped_is_an_error_not_an_empty_dataset(tiny, tmp_path):
    """Issue 8.8: training on nothing crashed after the weights loaded."""
    samples = [GOOD, {"id": "long", "conversations": conv(("user", "z " * 50), ("assistant", "w"))}]
    with pytest.raises(DataError, match=r"data.json: no sample left to train on: 2 no trained token within "
                                        r"model_max_length 10"):
        build(tiny, tmp_path, samples, model_max_length=10)
    with pytest.raises(DataError, match=r"no sample left to train on: 1 turn 0 is 'assistant'"):
        build(tiny, tmp_path, [{"id": "r", "conversations": conv(("assistant", "x"), ("user", "y"))}],
              skip_bad_samples=True)


@pytest.mark.parametrize("answer,reason", [
    ("<ref>cat</ref><box>300 20 10 400</box>", "turn 1 (assistant): <box>300 20 10 400</box>: a box is x1 y1 x2 y2 "
                                               "with x1 <= x2 and y1 <= y2"),
    ("<ref>cat</ref><box>10 20 1300 400</box>", "coordinates are 0-1000 (relative to the image), got 1300"),
    ("<box>10 20 30</box>", "<box>10 20 30</box>: a box needs 4 integers 0-1000 (digits 0-9) separated by spaces"),
    ("<point>0.5 0.2</point>", "a point needs 2 integers 0-1000"),
    # issue 18.17: a superscript passed isdigit() and crashed int() without file or sample; the
    # others passed
    ("<box>1 2 3 4\u00b2</box>", "turn 1 (assistant): <box>1 2 3 4\u00b2</box>: a box needs 4 integers"),
    ("<box>\uff11 2 3 4</box>", "a box needs 4 integers 0-1000 (digits 0-9)"),
    ("<ref>cat</ref><box>1 2 3 4", "<box> without its closing tag"),
    ("<ref>cat</ref>1 2 3 4</point>", "</point> without its opening tag"),
])
def test_bad_boxes_and_points_are_data_errors(tiny, tmp_path, answer, reason):
    bad = {"id": "g", "conversations": conv(("user", "Where is the cat?"), ("assistant", answer))}
    assert_error(tiny, tmp_path, bad, reason)


@pytest.mark.parametrize("version", ["2.5", "2.6", "4.5"])
def test_grounding_text_trains_as_the_tokenizer_encodes_it(tiny, tmp_path, version):
    """<ref>/<box> are special tokens of these tokenizers that grounding data must contain."""
    answer = "<ref>cat</ref><box>10 20 300 400</box>"
    ds, _ = build(tiny, tmp_path, [{"conversations": conv(("user", "Where is the cat?"), ("assistant", answer))}],
                  version)
    tok = tiny(version)[0]
    item = ds[0]
    trained = item["input_ids"][item["labels"] != -100].tolist()
    assert trained[: len(tok.encode(answer, add_special_tokens=False))] == tok.encode(answer, add_special_tokens=False)
    assert tok.convert_tokens_to_ids("<box>") in trained
