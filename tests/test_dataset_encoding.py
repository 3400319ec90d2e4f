"""Exact token ids and labels per version: the chat formats written out by hand from the
specification (../shared/minicpmv-interface.md) and compared with what dataset.py builds."""
import json

import pytest
import torch

from conftest import LLM_TYPES
from dataset import SupervisedDataset
from minicpmv_ft.chat_tokens import ChatEncoder
from minicpmv_ft.versions import VERSIONS

IGNORE = -100


class Literal:
    """Builds expected (ids, labels) piece by piece."""

    def __init__(self, tok):
        self.tok, self.ids, self.labels = tok, [], []

    def text(self, text, trained=False):
        self.add(self.tok(text, add_special_tokens=False)["input_ids"], trained)

    def token(self, token, trained=False, label=None):
        token_id = self.tok.convert_tokens_to_ids(token)
        self.add([token_id], trained)
        if label is not None:
            self.labels[-1] = label

    def add(self, ids, trained):
        self.ids += ids
        self.labels += ids if trained else [IGNORE] * len(ids)

    def image(self, llm_type, q, grid=None, index=0):
        """Placeholder of one image, per the specification's placeholder section."""
        tok = self.tok
        if llm_type == "qwen":
            self.token(tok.im_id_start), self.text(str(index)), self.token(tok.im_id_end)
        self.token(tok.im_start), self.add([tok.unk_token_id] * q, False), self.token(tok.im_end)
        if grid is None:
            return
        cols, rows = grid
        if llm_type != "qwen":
            self.token(tok.slice_start)
        for r in range(rows):
            if r:
                self.text("\n")
            for _ in range(cols):
                opener, closer = (tok.slice_start, tok.slice_end) if llm_type == "qwen" else (tok.im_start, tok.im_end)
                self.token(opener), self.add([tok.unk_token_id] * q, False), self.token(closer)
        if llm_type != "qwen":
            self.token(tok.slice_end)


def write_turns(lit, llm_type, turns, system=None):
    """turns: (role, [text | callable adding an image placeholder]) in order."""
    if llm_type == "llama3":
        lit.token("<|begin_of_text|>")
    if llm_type == "qwen":
        system = system or "You are a helpful assistant."
    if system is not None:
        turns = [("system", [system])] + turns
    pending = None
    for i, (role, parts) in enumerate(turns):
        trained = role == "assistant"
        if llm_type == "minicpm":
            lit.token("<用户>" if role == "user" else "<AI>", label=pending)
            pending = None
        elif llm_type == "llama3":
            lit.token("<|start_header_id|>"), lit.text(role), lit.token("<|end_header_id|>"), lit.text("\n\n")
        else:
            lit.token("<|im_start|>"), lit.text(role + "\n")
        for part in parts:
            part() if callable(part) else lit.text(part, trained)
        if llm_type == "minicpm":
            if i == len(turns) - 1:
                lit.token(lit.tok.eos_token, trained)
            elif trained:
                pending = lit.tok.eos_token_id
        elif llm_type == "llama3":
            lit.token("<|eot_id|>", trained)
        else:
            lit.token("<|im_end|>", trained), lit.text("\n")
    return lit.ids, lit.labels


def dataset_item(tiny, llm_type, samples, **kwargs):
    tok, model = tiny(llm_type)
    ds = SupervisedDataset(samples, tok, model.config, **kwargs)
    return ds, ds[0]


@pytest.mark.parametrize("llm_type", LLM_TYPES)
def test_single_turn_text_only(tiny, llm_type):
    sample = {"id": "t", "conversations": [{"role": "user", "content": "How are you?"},
                                           {"role": "assistant", "content": "Fine, thanks."}]}
    _, item = dataset_item(tiny, llm_type, [sample])
    lit = Literal(tiny(llm_type)[0])
    ids, labels = write_turns(lit, llm_type, [("user", ["How are you?"]), ("assistant", ["Fine, thanks."])])
    assert item["input_ids"].tolist() == ids
    assert item["labels"].tolist() == labels
    assert item["position_ids"].tolist() == list(range(len(ids)))
    assert item["pixel_values"] == [] and item["tgt_sizes"].shape == (0, 2) and item["image_bound"].shape == (0, 2)


@pytest.mark.parametrize("llm_type", LLM_TYPES)
def test_multi_turn_with_image_in_second_turn(tiny, llm_type, image_file):
    path = image_file(size=(300, 300))  # not sliced
    turns = [("user", "Hi"), ("assistant", "Hello!"), ("user", "Look: <image> what is it?"), ("assistant", "Noise.")]
    sample = {"id": 7, "image": path, "conversations": [{"role": r, "content": c} for r, c in turns]}
    _, item = dataset_item(tiny, llm_type, [sample])
    tok = tiny(llm_type)[0]
    q = VERSIONS[llm_type].default_query_num
    lit = Literal(tok)
    ids, labels = write_turns(lit, llm_type, [
        ("user", ["Hi"]), ("assistant", ["Hello!"]),
        ("user", ["Look: ", lambda: lit.image(llm_type, q), " what is it?"]), ("assistant", ["Noise."])])
    assert item["input_ids"].tolist() == ids
    assert item["labels"].tolist() == labels
    start = ids.index(tok.im_start_id) + 1
    assert item["image_bound"].tolist() == [[start, start + q]]
    assert item["tgt_sizes"].tolist() == [[32, 32]]  # 300x300 upscaled to 448x448


@pytest.mark.parametrize("llm_type", LLM_TYPES)
def test_image_without_marker_goes_before_first_user_turn(tiny, llm_type, image_file):
    path = image_file(size=(640, 480))  # sliced into a 2 x 1 grid
    sample = {"image": path, "conversations": [{"role": "user", "content": "Describe."},
                                               {"role": "assistant", "content": "Random pixels."}]}
    _, item = dataset_item(tiny, llm_type, [sample])
    tok = tiny(llm_type)[0]
    q = VERSIONS[llm_type].default_query_num
    lit = Literal(tok)
    ids, labels = write_turns(lit, llm_type, [
        ("user", [lambda: lit.image(llm_type, q, grid=(2, 1)), "\nDescribe."]), ("assistant", ["Random pixels."])])
    assert item["input_ids"].tolist() == ids
    assert item["labels"].tolist() == labels
    bounds = item["image_bound"].tolist()
    assert len(bounds) == 3 and all(e - s == q for s, e in bounds)
    assert all(set(item["input_ids"][s:e].tolist()) == {tok.unk_token_id} for s, e in bounds)
    # source 518x392 then two 448x420 slices (640x480: grid 2x1, cell 320x480 resized)
    assert item["tgt_sizes"].tolist() == [[28, 37], [39, 26], [39, 26]]


@pytest.mark.parametrize("llm_type", LLM_TYPES)
def test_multi_image_ids_bounds_and_pixel_order(tiny, llm_type, image_file):
    first, second = image_file("a.png", (640, 480), 1), image_file("b.png", (300, 300), 2)
    # <image_01> appears first in the text, so it is image 0 for ids, bounds and pixels
    sample = {"image": {"<image_00>": first, "<image_01>": second},
              "conversations": [{"role": "user", "content": "<image_01> vs <image_00>: same?"},
                                {"role": "assistant", "content": "No."}]}
    _, item = dataset_item(tiny, llm_type, [sample])
    tok = tiny(llm_type)[0]
    q = VERSIONS[llm_type].default_query_num
    lit = Literal(tok)
    ids, labels = write_turns(lit, llm_type, [
        ("user", [lambda: lit.image(llm_type, q, None, 0), " vs ", lambda: lit.image(llm_type, q, (2, 1), 1),
                  ": same?"]), ("assistant", ["No."])])
    assert item["input_ids"].tolist() == ids
    assert item["labels"].tolist() == labels
    assert item["tgt_sizes"].tolist() == [[32, 32], [28, 37], [39, 26], [39, 26]]
    assert len(item["pixel_values"]) == 4 and len(item["image_bound"]) == 4
    patch_major = VERSIONS[llm_type].pixel_layout == "patch_major"
    expected_shape = (3, 14, 32 * 32 * 14) if patch_major else (3, 448, 448)
    assert tuple(item["pixel_values"][0].shape) == expected_shape


@pytest.mark.parametrize("llm_type", ["llama3", "qwen"])
def test_system_turn(tiny, llm_type):
    turns = [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hey.")]
    sample = {"conversations": [{"role": r, "content": c} for r, c in turns]}
    _, item = dataset_item(tiny, llm_type, [sample])
    lit = Literal(tiny(llm_type)[0])
    ids, labels = write_turns(lit, llm_type, [("user", ["Hi"]), ("assistant", ["Hey."])], system="Be brief.")
    assert item["input_ids"].tolist() == ids
    assert item["labels"].tolist() == labels


@pytest.mark.parametrize("llm_type", ["llama3", "qwen"])
@pytest.mark.parametrize("system", [None, "Answer in French."])
def test_rendering_equals_checkpoint_chat_template(tiny, llm_type, system):
    """The text we train on is what the checkpoint's own template renders, and our chunked
    tokenization equals tokenizing that text in one go (as inference does)."""
    tok, _ = tiny(llm_type)
    turns = [("user", "What is 2+2?"), ("assistant", " Four. "), ("user", "\nAnd 3+3?"), ("assistant", "Six!\n")]
    if system:
        turns = [("system", system)] + turns
    messages = [{"role": r, "content": c} for r, c in turns]
    encoder = ChatEncoder(tok, VERSIONS[llm_type])
    template = tok.apply_chat_template(messages, tokenize=False)
    ours = encoder.render_text(turns)
    if llm_type == "llama3":  # the 2.5 template always appends a generation header; training must not
        assert template == ours + "<|start_header_id|>assistant<|end_header_id|>\n\n"
    else:
        assert template == ours
    ids, _ = encoder.encode(turns)
    assert ids == tok(ours, add_special_tokens=False)["input_ids"]


def test_minicpm_rendering_and_eos_label_between_turns(tiny):
    tok, _ = tiny("minicpm")
    turns = [("user", "Q1"), ("assistant", "A1"), ("user", "Q2"), ("assistant", "A2")]
    encoder = ChatEncoder(tok, VERSIONS["minicpm"])
    assert encoder.render_text(turns) == "<用户>Q1<AI>A1<用户>Q2<AI>A2" + tok.eos_token
    ids, labels = encoder.encode(turns)
    second_user = [i for i, t in enumerate(ids) if t == tok.convert_tokens_to_ids("<用户>")][1]
    assert labels[second_user] == tok.eos_token_id  # the model learns to stop after A1
    assert ids[-1] == labels[-1] == tok.eos_token_id
    assert ids == tok(encoder.render_text(turns), add_special_tokens=False)["input_ids"]


def test_json_and_jsonl_files_with_relative_image_paths(tiny, tmp_path, image_file):
    image_file("pic.png", (200, 100))
    samples = [{"id": "a", "image": "pic.png", "conversations": [{"role": "user", "content": "<image>"},
                                                                 {"role": "assistant", "content": "x"}]},
               {"id": "b", "conversations": [{"role": "user", "content": "y"}, {"role": "assistant", "content": "z"}]}]
    tok, model = tiny("qwen")
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
    sample = {"image": path, "conversations": [{"role": "user", "content": "?"}, {"role": "assistant", "content": "!"}]}
    _, item = dataset_item(tiny, "llama3", [sample], max_slice_nums=max_slice_nums)
    assert len(item["pixel_values"]) == views == len(item["image_bound"])
