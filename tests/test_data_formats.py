"""ShareGPT/LLaVA and "messages" samples train exactly as the same sample written in ours."""
import json
import os

import pytest
import torch

import check_data
from conftest import make_image
from dataset import SupervisedDataset
from minicpmv_ft.errors import DataError


def native(*turns, image=None):
    record = {"conversations": [{"role": r, "content": c} for r, c in turns]}
    if image is not None:
        record["image"] = image
    return record


def sharegpt(*turns, **images):
    names = {"user": "human", "assistant": "gpt", "system": "system"}
    return {"conversations": [{"from": names[r], "value": c} for r, c in turns], **images}


def messages(*turns, **images):
    return {"messages": [{"role": r, "content": c} for r, c in turns], **images}


def items(tiny, tmp_path, records, **kwargs):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    tok, model = tiny("2.6")
    ds = SupervisedDataset(str(path), tok, model.config, **kwargs)
    return [ds[k] for k in range(len(ds))]


def assert_same_items(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], torch.Tensor):
                assert torch.equal(a[key], b[key]), key
            elif isinstance(a[key], list) and a[key] and isinstance(a[key][0], torch.Tensor):
                assert all(torch.equal(x, y) for x, y in zip(a[key], b[key])), key
            else:
                assert a[key] == b[key], key


@pytest.fixture
def images(tmp_path):
    make_image(tmp_path / "a.png", (300, 200), seed=1)
    make_image(tmp_path / "b.png", (200, 300), seed=2)


def test_sharegpt_and_messages_equal_ours(tiny, tmp_path, images):
    ours = [native(("user", "<image>\nWhat is it?"), ("assistant", "A shape.")),
            native(("system", "Be brief."), ("user", "Compare <image_00> and <image_01>."), ("assistant", "Alike."),
                   image={"<image_00>": "a.png", "<image_01>": "b.png"}),
            native(("user", "Hi"), ("assistant", "Hello."))]
    ours[0]["image"] = "a.png"
    llava = [sharegpt(("user", "<image>\nWhat is it?"), ("assistant", "A shape."), image="a.png"),
             sharegpt(("system", "Be brief."), ("user", "Compare <image> and <image>."), ("assistant", "Alike."),
                      image=["a.png", "b.png"]),
             sharegpt(("user", "Hi"), ("assistant", "Hello."))]
    openai = [messages(("user", "<image>\nWhat is it?"), ("assistant", "A shape."), images=["a.png"]),
              messages(("system", "Be brief."), ("user", "Compare <image> and <image>."), ("assistant", "Alike."),
                       images=["a.png", "b.png"]),
              messages(("user", "Hi"), ("assistant", "Hello."))]
    want = items(tiny, tmp_path, ours)
    assert_same_items(items(tiny, tmp_path, llava), want)
    assert_same_items(items(tiny, tmp_path, openai), want)
    assert_same_items(items(tiny, tmp_path, llava, data_format="sharegpt"), want)
    assert_same_items(items(tiny, tmp_path, llava + openai + ours)[3:6], want)  # auto: each sample by its keys


def test_an_image_asked_about_again_in_a_later_turn_trains_as_ours(tiny, tmp_path, images):
    """LLaMA-Factory's mllm_demo layout: a marker at the start of the first question and at the end
    of a later one, the same file listed once per marker."""
    ours = native(("user", "<image_00>Who are they?"), ("assistant", "Two players."),
                  ("user", "What are they doing?<image_01>"), ("assistant", "Celebrating."),
                  image={"<image_00>": "a.png", "<image_01>": "a.png"})
    theirs = messages(("user", "<image>Who are they?"), ("assistant", "Two players."),
                      ("user", "What are they doing?<image>"), ("assistant", "Celebrating."), images=["a.png", "a.png"])
    got, want = items(tiny, tmp_path, [theirs]), items(tiny, tmp_path, [ours])
    assert_same_items(got, want)
    assert len(got[0]["pixel_values"]) >= 2  # both images' views


@pytest.mark.parametrize("record,data_format,reason", [
    (sharegpt(("user", "<image> and <image>"), ("assistant", "x"), images=["a.png", "b.png", "a.png"]), "auto",
     "sharegpt sample: 3 images but 2 <image> markers; each image needs one <image> in the text"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "f"}]}, "auto",
     "sharegpt sample: turn 1 is from 'function_call'; allowed: human, user, gpt, assistant, system"),
    (messages(("user", "q"), ("tool", "x")), "auto", "messages sample: message 1 has role 'tool'"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "q"}]}]}, "auto",
     "messages sample: message 0: content must be text with <image> markers"),
    (sharegpt(("user", "q"), ("assistant", "a"), image="a.png", images=["b.png"]), "auto",
     'sharegpt sample: both "image" and "images"'),
    (sharegpt(("user", "q"), ("assistant", "a")), "native",
     "looks like sharegpt data, but --data_format is native; use --data_format sharegpt (or auto)"),
    ({"instruction": "q", "output": "a"}, "auto",
     'no "conversations" list of {"role", "content"} turns; ShareGPT/LLaVA ("from"/"value") and "messages" samples '
     "are read too"),
])
def test_foreign_samples_that_cannot_be_read_say_why(tiny, tmp_path, images, record, data_format, reason):
    record["id"] = "bad"
    with pytest.raises(DataError) as info:
        items(tiny, tmp_path, [native(("user", "q"), ("assistant", "a")), record], data_format=data_format)
    assert info.value.index == 1 and info.value.sample_id == "bad"
    assert reason in info.value.reason, info.value.reason


def test_image_folder_is_where_relative_paths_start(tiny, tiny_model_dir, tmp_path, capsys):
    (tmp_path / "pictures").mkdir()
    make_image(tmp_path / "pictures" / "a.png", (300, 200), seed=1)
    records = [sharegpt(("user", "<image>\nWhat?"), ("assistant", "A shape."), image="a.png")]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.json").write_text(json.dumps(records))
    with pytest.raises(DataError, match=f"image not found: {tmp_path / 'data' / 'a.png'}"):
        SupervisedDataset(str(tmp_path / "data" / "train.json"), *tiny("2.6")[:1], tiny("2.6")[1].config)
    tok, model = tiny("2.6")
    ds = SupervisedDataset(str(tmp_path / "data" / "train.json"), tok, model.config,
                           base_dir=str(tmp_path / "pictures"))
    assert ds.sample(0).image_paths == [str(tmp_path / "pictures" / "a.png")]
    code = check_data.main(["--model_name_or_path", str(tiny_model_dir("2.6")), "--num_workers", "1",
                            "--data_path", str(tmp_path / "data" / "train.json"),
                            "--image_folder", str(tmp_path / "pictures")])
    assert code == 0 and "OK: every sample trains as written" in capsys.readouterr().out


def convert(*argv):
    import subprocess
    import sys

    from conftest import ROOT

    return subprocess.run([sys.executable, str(ROOT / "tools" / "convert_data.py"), *map(str, argv)],
                          capture_output=True, text=True, timeout=120)


def test_convert_sharegpt_writes_ours_with_paths_from_the_output_folder(tiny, tmp_path, images):
    llava = [sharegpt(("user", "<image>\nWhat is it?"), ("assistant", "A shape."), image="a.png"),
             sharegpt(("user", "Compare <image> and <image>."), ("assistant", "Alike."), image=["a.png", "b.png"]),
             sharegpt(("user", "<image>"), ("assistant", "x"), image=["a.png", "b.png"])]
    (tmp_path / "llava.json").write_text(json.dumps(llava))
    (tmp_path / "out").mkdir()
    done = convert("--from", "sharegpt", tmp_path / "llava.json", "--out", tmp_path / "out" / "train.json")
    assert done.returncode == 0, done.stderr
    assert f"NOT CONVERTED {tmp_path / 'llava.json'}, record 2: sharegpt sample: 2 images but 1 <image>" in done.stderr
    assert "wrote 2 samples" in done.stdout and "1 not converted" in done.stdout
    written = json.loads((tmp_path / "out" / "train.json").read_text())
    assert written[0]["image"] == "../a.png"
    assert written[1]["image"] == {"<image_00>": "../a.png", "<image_01>": "../b.png"}
    assert written[1]["conversations"][0] == {"role": "user", "content": "Compare <image_00> and <image_01>."}
    tok, model = tiny("2.6")
    converted = SupervisedDataset(str(tmp_path / "out" / "train.json"), tok, model.config)
    assert_same_items([converted[0], converted[1]], items(tiny, tmp_path, llava[:2]))


def test_convert_csv_and_a_folder_of_captioned_images(tiny, tmp_path, images):
    (tmp_path / "table.csv").write_text("image,question,answer\na.png,What is it?,A shape.\n,Hi,Hello.\nb.png,Why?,\n")
    done = convert("--from", "csv", tmp_path / "table.csv", "--out", tmp_path / "t.jsonl")
    assert done.returncode == 0, done.stderr
    assert "record 2: row 4: empty answer" in done.stderr
    rows = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert rows == [
        {"id": 0, "image": "a.png", "conversations": [{"role": "user", "content": "<image>\nWhat is it?"},
                                                      {"role": "assistant", "content": "A shape."}]},
        {"id": 1, "conversations": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}]
    (tmp_path / "a.txt").write_text("A small shape.\n")
    done = convert("--from", "folder", tmp_path, "--out", tmp_path / "captions.json", "--question", "What is shown?")
    assert done.returncode == 0, done.stderr
    assert f"{tmp_path / 'b.png'}: no caption (b.txt is missing or empty)" in done.stderr
    assert json.loads((tmp_path / "captions.json").read_text()) == [
        {"id": "a", "image": "a.png", "conversations": [{"role": "user", "content": "<image>\nWhat is shown?"},
                                                        {"role": "assistant", "content": "A small shape."}]}]
    tok, model = tiny("2.6")
    assert len(SupervisedDataset(str(tmp_path / "captions.json"), tok, model.config)) == 1
    # issue 29: a.png and a.JPG both took a.txt's caption, under one id
    make_image(tmp_path / "a.JPG", (8, 8))
    done = convert("--from", "folder", tmp_path, "--out", tmp_path / "again.json")
    assert f"{tmp_path / 'a.JPG'}: a.JPG and a.png share the caption file a.txt and one id; rename all but one" \
        in done.stderr and done.returncode == 1 and not (tmp_path / "again.json").exists()  # nothing else to convert


def test_convert_rebases_videos_and_reports_what_it_cannot_convert(tmp_path):
    """Issue 18.15: video paths kept pointing next to the output; non-objects, foreign encodings,
    a missing input or output folder gave tracebacks; unrecognised records passed as converted."""
    (tmp_path / "clip.mp4").write_bytes(b"")
    records = [sharegpt(("user", "<video>\nWhat happens?"), ("assistant", "It moves."), video="clip.mp4"),
               ["not", "an", "object"], {"question": "Q", "answer": "A"}]
    (tmp_path / "in.json").write_text(json.dumps(records))
    done = convert("--from", "sharegpt", tmp_path / "in.json", "--out", tmp_path / "new" / "out.json")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert json.loads((tmp_path / "new" / "out.json").read_text())[0]["video"] == "../clip.mp4"
    assert f"{tmp_path / 'in.json'}, record 1: a record must be a JSON object, got list" in done.stderr
    assert f"{tmp_path / 'in.json'}, record 2: not a sharegpt record (its keys: question, answer)" in done.stderr
    assert "wrote 1 samples" in done.stdout and "2 not converted" in done.stdout
    (tmp_path / "latin.csv").write_bytes("question,answer\nQu'est-ce?,Caf\xe9.\n".encode("latin-1"))
    (tmp_path / "pics").mkdir()
    make_image(tmp_path / "pics" / "a.png", (8, 8))
    (tmp_path / "pics" / "a.txt").write_bytes("Caf\xe9".encode("latin-1"))
    for argv, line in (
            (("csv", tmp_path / "latin.csv"), f"convert_data: {tmp_path / 'latin.csv'}: not UTF-8 text (byte 0xe9"),
            (("folder", tmp_path / "pics"), f"NOT CONVERTED {tmp_path / 'pics'}, record 0: {tmp_path / 'pics' / 'a.txt'}: "
                                            "not UTF-8 text"),
            (("csv", tmp_path / "none.csv"), f"convert_data: {tmp_path / 'none.csv'}: no such file")):
        done = convert("--from", argv[0], argv[1], "--out", tmp_path / "o.json")
        assert done.returncode == 1 and "Traceback" not in done.stderr and done.stderr.startswith(line), done.stderr


def test_videos_in_sharegpt_and_messages_data_equal_ours(tiny, tmp_path):
    from conftest import make_video

    make_video(tmp_path / "v.mp4", frames=12)
    make_video(tmp_path / "w.mp4", frames=15)
    ours = [{"video": "v.mp4", "conversations": [{"role": "user", "content": "<video>\nWhat?"},
                                                 {"role": "assistant", "content": "Grey."}]},
            {"video": {"<video_00>": "v.mp4", "<video_01>": "w.mp4"},
             "conversations": [{"role": "user", "content": "<video_00> then <video_01>: longer?"},
                               {"role": "assistant", "content": "The second."}]}]
    foreign = [sharegpt(("user", "<video>\nWhat?"), ("assistant", "Grey."), videos=["v.mp4"]),
               messages(("user", "<video> then <video>: longer?"), ("assistant", "The second."),
                        videos=["v.mp4", "w.mp4"])]
    assert_same_items(items(tiny, tmp_path, foreign), items(tiny, tmp_path, ours))


@pytest.mark.parametrize("make", [native, sharegpt, messages])
def test_reasoning_content_trains_alike_in_every_format(tiny, tmp_path, make):
    """Issue 18.4: ShareGPT dropped a turn's reasoning_content (the answer trained with an empty
    think block). 4.5 trains the reasoning in all three formats, the same ids and labels."""
    record = make(("user", "Why?"), ("assistant", "Because."))
    turns = record.get("conversations", record.get("messages"))
    turns[1]["reasoning_content"] = "First the shape."
    tok, model = tiny("4.5")
    ds = SupervisedDataset([record], tok, model.config)
    reference = native(("user", "Why?"), ("assistant", "Because."))
    reference["conversations"][1]["reasoning_content"] = "First the shape."
    want = SupervisedDataset([reference], tok, model.config)[0]
    got = ds[0]
    assert torch.equal(got["input_ids"], want["input_ids"]) and torch.equal(got["labels"], want["labels"])
    trained = tok.decode(got["labels"][got["labels"] != -100])
    assert "First the shape." in trained and "Because." in trained


@pytest.mark.parametrize("make", [native, sharegpt, messages])
def test_a_misspelt_key_in_a_turn_is_a_data_error_naming_it(tiny, tmp_path, make):
    record = make(("user", "Why?"), ("assistant", "Because."))
    record.get("conversations", record.get("messages"))[1]["reasoning"] = "First the shape."
    tok, model = tiny("4.5")
    with pytest.raises(DataError, match=r"sample 0 .*(turn|message) 1: unknown key 'reasoning' \(a turn has "):
        SupervisedDataset([record], tok, model.config)


def test_an_unknown_sample_key_is_an_error_in_ours_and_counted_in_foreign_formats(tiny, tmp_path, caplog):
    tok, model = tiny("2.6")
    ours = {**native(("user", "Q"), ("assistant", "A")), "reasoning": "R"}
    with pytest.raises(DataError, match=r"unknown key 'reasoning' \(a sample has id, image, video, conversations\)"):
        SupervisedDataset([ours], tok, model.config)
    foreign = [{**sharegpt(("user", "Q"), ("assistant", "A")), "source": "web", "reasoning": "R"},
               {**messages(("user", "Q"), ("assistant", "A")), "source": "web"}]
    with caplog.at_level("WARNING"):
        ds = SupervisedDataset(foreign, tok, model.config)
    assert len(ds) == 2
    assert "keys no step reads were ignored: 'source' in 2 samples, 'reasoning' in 1 sample" in caplog.text


def test_a_sample_system_column_becomes_the_system_turn(tiny, tmp_path):
    """LLaMA-Factory's ShareGPT / messages "system" column is the system prompt, not an extra key."""
    tok, model = tiny("2.6")
    want = SupervisedDataset([native(("system", "Be brief."), ("user", "Q"), ("assistant", "A"))], tok, model.config)[0]
    for record in (sharegpt(("user", "Q"), ("assistant", "A")), messages(("user", "Q"), ("assistant", "A"))):
        got = SupervisedDataset([{**record, "system": "Be brief."}], tok, model.config)[0]
        assert torch.equal(got["input_ids"], want["input_ids"]) and torch.equal(got["labels"], want["labels"])
    with pytest.raises(DataError, match="a \"system\" prompt and a system turn"):
        SupervisedDataset([{**sharegpt(("system", "S"), ("user", "Q"), ("assistant", "A")), "system": "S"}], tok,
                          model.config)


def test_parquet_with_images_inside_trains_as_its_json_with_paths(tiny, tmp_path):
    """A Hugging Face LLaVA-style Parquet file: ShareGPT rows whose images are bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    make_image(tmp_path / "a.png", (300, 200), seed=1)
    make_image(tmp_path / "b.png", (200, 300), seed=2)
    turns = (("user", "<image>\n<image>\nWhich?"), ("assistant", "The first."))
    with_paths = sharegpt(*turns, images=[str(tmp_path / "a.png"), str(tmp_path / "b.png")])
    inside = sharegpt(*turns, images=[{"bytes": (tmp_path / name).read_bytes(), "path": None} for name in ("a.png", "b.png")])
    pq.write_table(pa.Table.from_pylist([inside]), tmp_path / "data.parquet")
    tok, model = tiny("2.6")
    from_parquet = SupervisedDataset(str(tmp_path / "data.parquet"), tok, model.config)
    assert len(os.listdir(tmp_path / "data.images")) == 2
    assert_same_items([from_parquet[0]], items(tiny, tmp_path, [with_paths]))
