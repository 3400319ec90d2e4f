"""The tiny models expose the real checkpoints' interface (../shared/minicpmv-interface.md)."""
import json

import pytest
import timm
import torch

from conftest import VERSIONS
from dataset import SupervisedDataset


def test_config_fields(tiny):
    v2, v25, v26 = (tiny(t)[1].config for t in VERSIONS)
    assert (v2.query_num, v25.query_num, v26.query_num) == (64, 96, 64)
    assert v2.max_slice_nums == 9 and v2.scale_resolution == 448 and v2.scale_emb == 12
    assert not hasattr(v2, "batch_vision_input") and not hasattr(v2, "slice_config")
    assert v25.slice_config.max_slice_nums == 9 and v25.vision_config.patch_size == 14
    assert v25.batch_vision_input and v26.batch_vision_input and v26.use_image_id
    assert not hasattr(v25, "use_image_id")
    for config in (v2, v25, v26):
        assert config.patch_size == 14 and config.auto_map["AutoModel"] == "modeling_minicpmv.MiniCPMV"


def test_tokenizer_attributes(tiny):
    v2, v25, v26 = (tiny(t)[0] for t in VERSIONS)
    assert not v2.is_fast and v25.is_fast and v26.is_fast
    assert (v2.unk_id, v2.bos_id, v2.eos_id) == (0, 1, 2)
    for tok in (v2, v25, v26):
        assert (tok.im_start, tok.im_end, tok.slice_start, tok.slice_end, tok.unk_token) == (
            "<image>", "</image>", "<slice>", "</slice>", "<unk>")
        assert tok.convert_ids_to_tokens([tok.im_start_id, tok.im_end_id]) == ["<image>", "</image>"]
    assert v25.convert_ids_to_tokens(v25.eot_id) == "<|eot_id|>" and not hasattr(v26, "eot_id")
    assert v25.pad_token == "!" and v25.bos_token == "<|begin_of_text|>"
    assert v26.convert_ids_to_tokens([v26.slice_start_id, v26.slice_end_id, v26.im_id_start_id, v26.im_id_end_id]) == [
        "<slice>", "</slice>", "<image_id>", "</image_id>"]
    assert v2.chat_template is None and "You are a helpful assistant." in v26.chat_template


def test_model_modules(tiny):
    v2, v25, v26 = (tiny(t)[1] for t in VERSIONS)
    assert isinstance(v2.vpm, timm.models.VisionTransformer)
    assert [type(m.llm).__name__ for m in (v2, v25, v26)] == ["MiniCPMForCausalLM", "LlamaForCausalLM", "Qwen2ForCausalLM"]
    with pytest.raises(NotImplementedError):
        v2.get_input_embeddings()
    assert v25.get_input_embeddings() is v25.llm.model.embed_tokens
    assert v26.resampler.query.shape == (64, v26.llm.config.hidden_size)


@pytest.mark.parametrize("version", VERSIONS)
def test_chat_prompt_and_pixels_match_training(tiny, image_file, monkeypatch, version):
    """chat() builds its prompt with its own processor code; for the same conversation our
    training ids start with exactly that prompt (2.0's inference adds a BOS that training,
    per the official format, does not) and the pixel tensors are identical."""
    from PIL import Image

    tok, model = tiny(version)
    path = image_file(size=(1000, 700))
    captured = {}
    monkeypatch.setattr(model, "_greedy", lambda data, tokenizer, n: captured.update(data) or "ok")
    msgs = [{"role": "user", "content": "What is it?"}]
    image = Image.open(path)
    answer = model.chat(image, msgs, None, tok) if version == "2.0" else model.chat(image, msgs, tok)
    assert answer == (("ok", msgs + [{"role": "assistant", "content": "ok"}], {}) if version == "2.0" else "ok")
    item = SupervisedDataset([{"image": path, "conversations": msgs + [{"role": "assistant", "content": "A."}]}],
                             tok, model.config)[0]
    prompt = captured["input_ids"][0].tolist()
    train = item["input_ids"].tolist()
    if version == "2.0":
        assert prompt == [tok.bos_id] + train[: len(prompt) - 1]
        offset = 1
    else:
        assert prompt == train[: len(prompt)]
        offset = 0
    assert (captured["image_bound"][0] - offset).tolist() == item["image_bound"].tolist()
    assert all(torch.equal(a, b) for a, b in zip(captured["pixel_values"][0], item["pixel_values"]))
    assert torch.equal(captured["tgt_sizes"][0], item["tgt_sizes"])


@pytest.mark.parametrize("version", VERSIONS)
def test_chat_generates_text(tiny, image_file, version):
    from PIL import Image

    tok, model = tiny(version)
    model.eval()
    image = Image.open(image_file(size=(300, 200)))
    msgs = [{"role": "user", "content": "Hi?"}]
    out = model.chat(image, msgs, None, tok, max_new_tokens=4) if version == "2.0" else \
        model.chat(image, msgs, tok, max_new_tokens=4)
    answer = out[0] if version == "2.0" else out
    assert isinstance(answer, str)


def test_vocab_size_option(tmp_path):
    import make_tiny_model
    from transformers import AutoConfig

    out = make_tiny_model.build("2.5", tmp_path / "big", vocab_size=1500, seed=3)
    assert AutoConfig.from_pretrained(out, trust_remote_code=True).vocab_size == 1500
    assert json.loads((out / "tokenizer_config.json").read_text())["auto_map"]["AutoTokenizer"][1] == \
        "tokenization_minicpmv_fast.MiniCPMVTokenizerFast"
    with pytest.raises(SystemExit, match="smaller than the tokenizer"):
        make_tiny_model.build("2.5", tmp_path / "small", vocab_size=10)
