"""Exact token ids and labels per version, against each checkpoint's own code: the ids equal
the checkpoint's chat template (2.0: its chat() prompt builder) rendered with the inference
processor's image placeholders and encoded in one call; the labels are exactly the answers
and the token ending each of them."""
import json
import re

import pytest
import torch
from PIL import Image

from conftest import REGISTRY, REMOTE_VERSIONS
from dataset import SupervisedDataset
from minicpmv_ft.errors import DataError

IGNORE = -100
END_OF_ANSWER = {"2.0": "</s>", "2.5": "<|eot_id|>", "2.6": "<|im_end|>", "4.0": "<|im_end|>", "4.5": "<|im_end|>"}


def conv(*turns):
    return [{"role": r, "content": c} for r, c in turns]


def reference_ids(tiny, version, messages, images=()):
    """The checkpoint's own encoding of a whole conversation: image markers replaced by the
    inference slicer's placeholders (numbered by appearance), rendered by the chat template
    (2.0: chat()'s `<用户>`/`<AI>` concatenation, EOS at the end), encoded in one call."""
    tok, model = tiny(version)
    slicer = model._slicer()
    paths, k = dict(images), 0
    rendered = []
    for message in messages:
        content = message["content"]
        for marker in re.findall(r"<image(?:_\d+)?>", content):
            grid = slicer.slices(Image.open(paths[marker]).convert("RGB"))[1]
            content = content.replace(marker, slicer.placeholder(tok, grid, k), 1)
            k += 1
        rendered.append({**message, "content": content})
    if version == "2.0":
        text = "".join({"user": "<用户>", "assistant": "<AI>"}[m["role"]] + m["content"] for m in rendered) + tok.eos_token
    else:
        text = tok.apply_chat_template(rendered, tokenize=False)
        if version == "2.5":  # its template always appends a generation header; training must not
            header = "<|start_header_id|>assistant<|end_header_id|>\n\n"
            assert text.endswith(header)
            text = text[: -len(header)]
    return tok(text, add_special_tokens=REGISTRY[version].encode_adds_special_tokens)["input_ids"]


def decode(tok, ids):
    """The text of a run of ids. Sentencepiece-style pieces (2.0, 4.0) are joined directly: their
    decoders add (2.0) or strip (4.0) a space at the start of a decoded run."""
    pieces = tok.convert_ids_to_tokens(ids)
    if tok.convert_tokens_to_ids("▁") in (None, tok.unk_token_id):
        return tok.decode(ids)
    out = bytearray()
    for piece in pieces:
        byte = re.fullmatch(r"<0x([0-9A-F]{2})>", piece)
        out += bytes([int(byte.group(1), 16)]) if byte else piece.replace("▁", " ").encode()
    return out.decode()


def trained_runs(tok, labels):
    """Each maximal run of trained labels, decoded."""
    runs, run = [], []
    for label in labels + [IGNORE]:
        if label != IGNORE:
            run.append(label)
        elif run:
            runs.append(decode(tok, run))
            run = []
    return runs


def item_of(tiny, version, sample, **kwargs):
    tok, model = tiny(version)
    return SupervisedDataset([sample], tok, model.config, **kwargs)[0]


def assert_matches_checkpoint(tiny, version, sample, answers, images=()):
    tok = tiny(version)[0]
    item = item_of(tiny, version, sample)
    ids, labels = item["input_ids"].tolist(), item["labels"].tolist()
    assert ids == reference_ids(tiny, version, sample["conversations"], images)
    assert trained_runs(tok, labels) == [a + END_OF_ANSWER[version] for a in answers]
    return item


@pytest.mark.parametrize("version", REMOTE_VERSIONS)
def test_single_turn_text_only(tiny, version):
    sample = {"id": "t", "conversations": conv(("user", "How are you?"), ("assistant", "Fine, thanks."))}
    item = assert_matches_checkpoint(tiny, version, sample, ["Fine, thanks."])
    assert item["position_ids"].tolist() == list(range(len(item["input_ids"])))
    assert item["pixel_values"] == [] and item["tgt_sizes"].shape == (0, 2) and item["image_bound"].shape == (0, 2)
    tok = tiny(version)[0]
    assert (item["input_ids"][0] == tok.bos_token_id) == (version in ("2.0", "2.5", "4.0"))


@pytest.mark.parametrize("version", REMOTE_VERSIONS)
def test_multi_turn_with_image_in_second_turn(tiny, version, image_file):
    path = image_file(size=(300, 300))  # not sliced
    turns = conv(("user", "Hi"), ("assistant", "Hello!"), ("user", "Look: <image> what is it?"), ("assistant", "Noise."))
    sample = {"id": 7, "image": path, "conversations": turns}
    item = assert_matches_checkpoint(tiny, version, sample, ["Hello!", "Noise."], [("<image>", path)])
    tok, q = tiny(version)[0], REGISTRY[version].default_query_num
    ids = item["input_ids"].tolist()
    start = ids.index(tok.im_start_id) + 1
    assert item["image_bound"].tolist() == [[start, start + q]] and ids[start:start + q] == [tok.unk_token_id] * q
    assert item["tgt_sizes"].tolist() == [[32, 32]]  # 300x300 upscaled to 448x448


@pytest.mark.parametrize("version", REMOTE_VERSIONS)
def test_image_without_marker_goes_before_first_user_turn(tiny, version, image_file):
    path = image_file(size=(640, 480))  # sliced into a 2 x 1 grid
    sample = {"image": path, "conversations": conv(("user", "Describe."), ("assistant", "Random pixels."))}
    tok = tiny(version)[0]
    item = item_of(tiny, version, sample)
    with_marker = conv(("user", "<image>\nDescribe."), ("assistant", "Random pixels."))
    assert item["input_ids"].tolist() == reference_ids(tiny, version, with_marker, [("<image>", path)])
    assert trained_runs(tok, item["labels"].tolist()) == ["Random pixels." + END_OF_ANSWER[version]]
    q = REGISTRY[version].default_query_num
    bounds = item["image_bound"].tolist()
    assert len(bounds) == 3 and all(e - s == q for s, e in bounds)
    assert all(set(item["input_ids"][s:e].tolist()) == {tok.unk_token_id} for s, e in bounds)
    # source 518x392 then two 448x420 slices (640x480: grid 2x1, cell 320x480 resized)
    assert item["tgt_sizes"].tolist() == [[28, 37], [39, 26], [39, 26]]


@pytest.mark.parametrize("version", REMOTE_VERSIONS)
def test_multi_image_ids_bounds_and_pixel_order(tiny, version, image_file):
    first, second = image_file("a.png", (640, 480), 1), image_file("b.png", (300, 300), 2)
    # <image_01> appears first in the text, so it is image 0 for ids, bounds and pixels
    sample = {"image": {"<image_00>": first, "<image_01>": second},
              "conversations": conv(("user", "<image_01> vs <image_00>: same?"), ("assistant", "No."))}
    item = assert_matches_checkpoint(tiny, version, sample, ["No."], [("<image_00>", first), ("<image_01>", second)])
    assert item["tgt_sizes"].tolist() == [[32, 32], [28, 37], [39, 26], [39, 26]]
    assert len(item["pixel_values"]) == 4 and len(item["image_bound"]) == 4
    patch_major = REGISTRY[version].pixel_layout == "patch_major"
    expected_shape = (3, 14, 32 * 32 * 14) if patch_major else (3, 448, 448)
    assert tuple(item["pixel_values"][0].shape) == expected_shape
    assert "temporal_ids" not in item  # still images: as chat(), no temporal ids (4.5 takes them for videos)


@pytest.mark.parametrize("version", [v for v in REMOTE_VERSIONS if REGISTRY[v].chat.system_allowed])
def test_system_turn(tiny, version):
    sample = {"conversations": conv(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hey."))}
    assert_matches_checkpoint(tiny, version, sample, ["Hey."])


@pytest.mark.parametrize("version", [v for v in REMOTE_VERSIONS if REGISTRY[v].chat.system_allowed])
def test_whitespace_and_multi_turn_exactly_as_the_template(tiny, version):
    sample = {"conversations": conv(("system", "Answer in French."), ("user", "What is 2+2?"), ("assistant", " Four. "),
                                    ("user", "\nAnd 3+3?"), ("assistant", "Six!\n"))}
    strip = version == "2.5"  # its template trims content
    assert_matches_checkpoint(tiny, version, sample, ["Four." if strip else " Four. ", "Six!" if strip else "Six!\n"])


# ---- MiniCPM-V 2.0: the whole prompt in one sentencepiece call, as its chat() does ----------

def test_2_0_encodes_the_whole_conversation_in_one_call(tiny):
    """Turn by turn, every later turn would start with an extra `▁` piece; in one call the
    dummy prefix is only at the start, and <s> comes first."""
    tok = tiny("2.0")[0]
    sample = {"conversations": conv(("user", "Q1"), ("assistant", "There is a cat."), ("user", "What?"),
                                    ("assistant", "There is one."))}
    ids = item_of(tiny, "2.0", sample)["input_ids"].tolist()
    pieces = tok.convert_ids_to_tokens(ids)
    assert pieces[0] == "<s>" and pieces[1].startswith("▁") and sum(p.startswith("▁<") for p in pieces) == 1
    assert pieces[pieces.index("here") - 1] == "T"  # "<AI>There" splits as the whole string does, not "▁There"
    assert ids == tok.encode("<用户>Q1<AI>There is a cat.<用户>What?<AI>There is one.</s>")


def test_2_0_piece_straddling_the_end_of_an_answer_is_trained_by_where_it_starts(tiny):
    """"?<" is one piece of the tiny 2.0 vocabulary: it starts inside the answer "Is it?", so it
    is trained; the next token learns EOS (the model stops after that answer)."""
    tok = tiny("2.0")[0]
    sample = {"conversations": conv(("user", "Q"), ("assistant", "Is it?"), ("user", "Why?"), ("assistant", "No."))}
    item = item_of(tiny, "2.0", sample)
    ids, labels = item["input_ids"].tolist(), item["labels"].tolist()
    pieces = tok.convert_ids_to_tokens(ids)
    straddle = pieces.index("?<")
    assert labels[straddle] == ids[straddle] and labels[straddle + 1] == tok.eos_token_id
    assert pieces[straddle + 1] == "用户" and ids[straddle + 1] != tok.eos_token_id
    assert labels[:straddle - 3] == [IGNORE] * (straddle - 3)
    assert ids[-1] == labels[-1] == tok.eos_token_id
    assert all(label in (IGNORE, token) for k, (label, token) in enumerate(zip(labels, ids)) if k != straddle + 1)


# ---- MiniCPM-V 4.5: thinking -----------------------------------------------------------------

def template_ids(tok, messages, **kwargs):
    return tok(tok.apply_chat_template(messages, tokenize=False, **kwargs), add_special_tokens=False)["input_ids"]


def test_4_5_answer_without_reasoning_gets_an_untrained_empty_think_block(tiny):
    tok = tiny("4.5")[0]
    messages = conv(("user", "Hi"), ("assistant", "Hello!"))
    item = item_of(tiny, "4.5", {"conversations": messages})
    ids, labels = item["input_ids"].tolist(), item["labels"].tolist()
    assert ids == template_ids(tok, messages)
    # what inference with thinking off feeds the model, followed by the trained answer
    prompt = template_ids(tok, messages[:1], add_generation_prompt=True, enable_thinking=False)
    assert ids[:len(prompt)] == prompt and labels[:len(prompt)] == [IGNORE] * len(prompt)
    assert tok.decode(prompt).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert trained_runs(tok, labels) == ["Hello!<|im_end|>"]


@pytest.mark.parametrize("written_as", ["reasoning_content", "think tags"])
def test_4_5_reasoning_is_trained_after_the_thinking_prompt(tiny, written_as):
    tok = tiny("4.5")[0]
    if written_as == "reasoning_content":
        answer = {"role": "assistant", "content": "It is 4.", "reasoning_content": "2 plus 2 makes 4."}
    else:
        answer = {"role": "assistant", "content": "<think>\n2 plus 2 makes 4.\n</think>\n\nIt is 4."}
    messages = [{"role": "user", "content": "2+2?"}, answer]
    item = item_of(tiny, "4.5", {"conversations": messages})
    ids, labels = item["input_ids"].tolist(), item["labels"].tolist()
    assert ids == template_ids(tok, messages)
    prompt = template_ids(tok, messages[:1], add_generation_prompt=True, enable_thinking=True)
    assert ids[:len(prompt)] == prompt and labels[:len(prompt)] == [IGNORE] * len(prompt)
    assert trained_runs(tok, labels) == ["2 plus 2 makes 4.\n</think>\n\nIt is 4.<|im_end|>"]


def test_4_5_earlier_reasoning_dropped_as_the_template_does_unless_kept(tiny):
    tok, model = tiny("4.5")
    messages = [{"role": "user", "content": "A?"}, {"role": "assistant", "content": "Yes.", "reasoning_content": "Because."},
                {"role": "user", "content": "B?"}, {"role": "assistant", "content": "No."}]
    item = item_of(tiny, "4.5", {"conversations": messages})
    assert item["input_ids"].tolist() == template_ids(tok, messages)
    assert trained_runs(tok, item["labels"].tolist()) == ["Yes.<|im_end|>", "No.<|im_end|>"]
    kept = item_of(tiny, "4.5", {"conversations": messages}, keep_earlier_reasoning=True)
    text = tok.decode(kept["input_ids"])
    assert "<|im_start|>assistant\n<think>\nBecause.\n</think>\n\nYes.<|im_end|>" in text
    assert trained_runs(tok, kept["labels"].tolist()) == ["Because.\n</think>\n\nYes.<|im_end|>", "No.<|im_end|>"]


@pytest.mark.parametrize("version", [v for v in REMOTE_VERSIONS if not REGISTRY[v].chat.thinking])
def test_reasoning_on_a_model_without_thinking_is_an_error(tiny, version):
    sample = {"id": "r", "conversations": [{"role": "user", "content": "Q"},
                                           {"role": "assistant", "content": "A", "reasoning_content": "why"}]}
    tok, model = tiny(version)
    with pytest.raises(DataError, match=rf"turn 1 has reasoning_content, but MiniCPM-V {version} has no thinking mode"):
        SupervisedDataset([sample], tok, model.config)
    # issue 18.19: the same reasoning written as a think block trained as literal text
    sample["conversations"][1] = {"role": "assistant", "content": "<think>\nwhy\n</think>\n\nA"}
    with pytest.raises(DataError, match=rf"turn 1 has a <think> block, but MiniCPM-V {version} has no thinking mode"):
        SupervisedDataset([sample], tok, model.config)


# ---- files and options -----------------------------------------------------------------------

def test_json_and_jsonl_files_with_relative_image_paths(tiny, tmp_path, image_file):
    image_file("pic.png", (200, 100))
    samples = [{"id": "a", "image": "pic.png", "conversations": conv(("user", "<image>"), ("assistant", "x"))},
               {"id": "b", "conversations": conv(("user", "y"), ("assistant", "z"))}]
    tok, model = tiny("2.6")
    (tmp_path / "d.json").write_text(json.dumps(samples))
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(s) for s in samples) + "\n")
    from_json = SupervisedDataset(str(tmp_path / "d.json"), tok, model.config)
    from_jsonl = SupervisedDataset(str(tmp_path / "d.jsonl"), tok, model.config)
    assert len(from_json) == len(from_jsonl) == 2
    for i in range(2):
        a, b = from_json[i], from_jsonl[i]
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    assert len(from_json[0]["pixel_values"]) == 1


@pytest.mark.parametrize("max_slice_nums,views", [(1, 1), (4, 5), (9, 10)])
def test_max_slice_nums_override(tiny, image_file, max_slice_nums, views):
    path = image_file(size=(1400, 1400))
    sample = {"image": path, "conversations": conv(("user", "?"), ("assistant", "!"))}
    item = item_of(tiny, "2.5", sample, max_slice_nums=max_slice_nums)
    assert len(item["pixel_values"]) == views == len(item["image_bound"])
