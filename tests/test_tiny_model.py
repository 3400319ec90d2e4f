"""The tiny models expose the real checkpoints' interface (docs/tiny-models.md)."""
import json

import pytest
import timm
import torch

from conftest import REGISTRY, REMOTE_VERSIONS, chat_call
from dataset import SupervisedDataset


def test_config_fields(tiny):
    v2, v25, v26, v40, v45 = (tiny(v)[1].config for v in REMOTE_VERSIONS)
    assert [c.query_num for c in (v2, v25, v26, v40, v45)] == [64, 96, 64, 64, 64]
    assert v2.max_slice_nums == 9 and v2.scale_resolution == 448 and v2.scale_emb == 12
    assert not hasattr(v2, "batch_vision_input") and not hasattr(v2, "slice_config")
    assert v25.slice_config.max_slice_nums == 9 and v25.vision_config.patch_size == 14
    assert all(c.batch_vision_input for c in (v25, v26, v40, v45)) and not hasattr(v25, "use_image_id")
    assert all(c.use_image_id and c.vision_batch_size == 16 for c in (v26, v40, v45))
    assert (v40.version, v45.version, v45.batch_3d_resampler) == (4.0, 4.5, True)
    assert not hasattr(v40, "scale_emb") and not hasattr(v40, "batch_3d_resampler")
    for config in (v2, v25, v26, v40, v45):
        assert config.patch_size == 14 and config.auto_map["AutoModel"] == "modeling_minicpmv.MiniCPMV"


def test_tokenizer_attributes(tiny):
    v2, v25, v26, v40, v45 = (tiny(v)[0] for v in REMOTE_VERSIONS)
    assert not v2.is_fast and all(t.is_fast for t in (v25, v26, v40, v45))
    assert (v2.unk_id, v2.bos_id, v2.eos_id) == (0, 1, 2)
    for tok in (v2, v25, v26, v40, v45):
        assert (tok.im_start, tok.im_end, tok.slice_start, tok.slice_end, tok.unk_token) == (
            "<image>", "</image>", "<slice>", "</slice>", "<unk>")
        assert tok.convert_ids_to_tokens([tok.im_start_id, tok.im_end_id]) == ["<image>", "</image>"]
    assert v25.convert_ids_to_tokens(v25.eot_id) == "<|eot_id|>" and not hasattr(v26, "eot_id")
    assert v25.pad_token == "!" and v25.bos_token == "<|begin_of_text|>"
    for tok in (v26, v40, v45):
        assert tok.convert_ids_to_tokens([tok.slice_start_id, tok.slice_end_id, tok.im_id_start_id, tok.im_id_end_id]) \
            == ["<slice>", "</slice>", "<image_id>", "</image_id>"]
    assert v2.chat_template is None and "You are a helpful assistant." in v26.chat_template
    assert "system" not in v40.chat_template and "<think>" in v45.chat_template


def test_2_0_tokenizer_as_the_real_one(tiny):
    """Slow sentencepiece, BOS added, legacy dummy prefix once per run of text, `<用户>`/`<AI>`
    ordinary text; special: `<unk> <s> </s>` and the image markup at ids 101-112."""
    tok = tiny("2.0")[0]
    assert tok.add_bos_token and tok.legacy
    assert tok.convert_ids_to_tokens([101, 102, 111, 112]) == ["<image>", "</image>", "<slice>", "</slice>"]
    assert {t.content for t in tok.added_tokens_decoder.values()} == {
        "<unk>", "<s>", "</s>", "<image>", "</image>", "<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>",
        "<point>", "</point>", "<slice>", "</slice>"}
    pieces = tok.convert_ids_to_tokens(tok.encode("<用户>hi<AI>There"))
    assert pieces[0] == "<s>" and pieces[1] == "▁<" and "▁<" not in pieces[2:]


def test_4_0_tokenizer_as_the_real_one(tiny):
    """<s> on encode() but not in apply_chat_template; `▁` before every run of text."""
    tok = tiny("4.0")[0]
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.convert_ids_to_tokens([101, 117, 118]) == ["<image>", "<think>", "</think>"]
    ids = tok.encode("<|im_start|>assistant\n")
    assert tok.convert_ids_to_tokens(ids[:2]) == ["<s>", "<|im_start|>"] and tok.convert_ids_to_tokens(ids)[2][0] == "▁"
    assert tok.convert_ids_to_tokens(tok.encode("<|im_end|>\n", add_special_tokens=False)) == ["<|im_end|>", "▁", "\n"]
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=True)[0] != tok.bos_token_id


def test_4_5_tokenizer_as_the_real_one(tiny):
    """`<unk>` is a remapped id of the base vocabulary; `<think>`/`</think>` are not special."""
    tok = tiny("4.5")[0]
    base = tok.backend_tokenizer.get_vocab_size(with_added_tokens=False)
    assert tok.unk_token_id < base and tok.convert_ids_to_tokens(tok.unk_token_id) == "<unk>"
    assert tok.bos_token is None and tok.eos_token == "<|im_end|>"
    think = [t for t in tok.added_tokens_decoder.values() if t.content in ("<think>", "</think>")]
    assert len(think) == 2 and not any(t.special for t in think)
    assert tok.im_start_id > tok.convert_tokens_to_ids("</think>")


def test_model_modules(tiny):
    models = [tiny(v)[1] for v in REMOTE_VERSIONS]
    assert isinstance(models[0].vpm, timm.models.VisionTransformer)
    assert [type(m.llm).__name__ for m in models] == [
        "MiniCPMForCausalLM", "LlamaForCausalLM", "Qwen2ForCausalLM", "LlamaForCausalLM", "Qwen3ForCausalLM"]
    with pytest.raises(NotImplementedError):
        models[0].get_input_embeddings()
    for m in models[1:]:
        assert m.get_input_embeddings() is m.llm.model.embed_tokens
        assert m.resampler.query.shape == (m.config.query_num, m.llm.config.hidden_size)


@pytest.mark.parametrize("version", REMOTE_VERSIONS)
def test_chat_prompt_and_pixels_match_training(tiny, image_file, monkeypatch, version):
    """chat() builds its prompt with its own processor code; for the same conversation our
    training ids start with exactly that prompt and the pixel tensors are identical."""
    from PIL import Image

    tok, model = tiny(version)
    path = image_file(size=(1000, 700))
    captured = {}
    monkeypatch.setattr(model, "_generate", lambda data, tokenizer, **decoding: captured.update(data) or "ok")
    msgs = [{"role": "user", "content": "What is it?"}]
    assert chat_call(model, version, Image.open(path), msgs, tok) == "ok"
    item = SupervisedDataset([{"image": path, "conversations": msgs + [{"role": "assistant", "content": "A."}]}],
                             tok, model.config)[0]
    prompt = captured["input_ids"][0].tolist()
    assert prompt == item["input_ids"].tolist()[: len(prompt)]
    assert captured["image_bound"][0].tolist() == item["image_bound"].tolist()
    assert all(torch.equal(a, b) for a, b in zip(captured["pixel_values"][0], item["pixel_values"]))
    assert torch.equal(captured["tgt_sizes"][0], item["tgt_sizes"])
    if "temporal_ids" in item:
        assert captured["temporal_ids"][0] == item["temporal_ids"]


@pytest.mark.parametrize("version", REMOTE_VERSIONS)
def test_chat_generates_text(tiny, tiny_model_dir, image_file, version):
    """Through our loader: the published 2.0 chat() cannot generate without its load fix."""
    from PIL import Image

    from minicpmv_ft.loading import load_model
    
    tok, _ = tiny(version)
    model = load_model(tiny_model_dir(version), REGISTRY[version]).eval()
    image = Image.open(image_file(size=(300, 200)))
    answer = chat_call(model, version, image, [{"role": "user", "content": "Hi?"}], tok, max_new_tokens=4)
    assert isinstance(answer, str)


def test_4_5_chat_thinking_switch_changes_the_prompt(tiny, monkeypatch):
    tok, model = tiny("4.5")
    prompts = []
    monkeypatch.setattr(model, "_generate", lambda data, tokenizer, **decoding: prompts.append(data["input_ids"][0].tolist()) or "")
    for thinking in (False, True):
        model.chat(None, [{"role": "user", "content": "Hi"}], tok, enable_thinking=thinking)
    assert tok.decode(prompts[0]).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert tok.decode(prompts[1]).endswith("<|im_start|>assistant\n<think>\n")


def test_4_5_temporal_ids_are_checked(tiny, image_file):
    tok, model = tiny("4.5")
    path = image_file(size=(300, 300))
    batch = SupervisedDataset([{"image": path, "conversations": [{"role": "user", "content": "<image>"},
                                                               {"role": "assistant", "content": "x"}]}],
                              tok, model.config)[0]
    data = {k: [v] if k in ("pixel_values", "tgt_sizes", "image_bound", "temporal_ids") else v.unsqueeze(0)
            for k, v in batch.items() if k not in ("labels", "image_bounds")}
    with torch.no_grad():
        model(data=data)
        data["temporal_ids"] = [[[0, 1]]]  # a group of two frames for a sample of one view
        with pytest.raises(ValueError, match=r"temporal_ids \[\[0, 1\]\] cover 2 views; the sample has 1"):
            model(data=data)


def test_vocab_size_option(tmp_path):
    import make_tiny_model
    from transformers import AutoConfig

    out = make_tiny_model.build("llama3", tmp_path / "big", vocab_size=1500, seed=3)
    assert AutoConfig.from_pretrained(out, trust_remote_code=True).vocab_size == 1500
    assert json.loads((out / "tokenizer_config.json").read_text())["auto_map"]["AutoTokenizer"][1] == \
        "tokenization_minicpmv_fast.MiniCPMVTokenizerFast"
    with pytest.raises(SystemExit, match="smaller than the tokenizer"):
        make_tiny_model.build("2.5", tmp_path / "small", vocab_size=10)
    with pytest.raises(SystemExit, match="unknown version '3.0'; choose one of 2.0, 2.5, 2.6, 4.0, 4.5"):
        make_tiny_model.build("3.0", tmp_path / "none")


def test_a_version_asked_of_the_wrong_environment_is_one_line_and_makes_no_folder(tmp_path):
    """Issue 29: make_tiny_model.py --version 4.7 under transformers 4.57 was a raw ImportError that
    left an empty folder."""
    import subprocess
    import sys

    from conftest import ROOT
    from minicpmv_ft.versions.environments import in_native_environment

    other = "2.6" if in_native_environment() else "4.7"
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "make_tiny_model.py"), "--version", other, "--out",
                           str(tmp_path / "tiny")], capture_output=True, text=True)
    assert done.returncode == 2 and not (tmp_path / "tiny").exists()
    assert done.stderr.startswith(f"make_tiny_model.py: MiniCPM-V {other} runs in ") and "Traceback" not in done.stderr
