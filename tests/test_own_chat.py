"""What we save chats through the checkpoint's own chat(), loaded the way its users load it
(AutoModel / AutoTokenizer with trust_remote_code), and the tiny remote code fails where the
published remote code fails at inference (docs/tiny-models.md)."""
import json

import pytest
import torch
from PIL import Image
from transformers import AutoModel, AutoTokenizer

from conftest import REGISTRY, REMOTE_VERSIONS, chat_call, make_image
from conftest import cpu_flags

import chat
import finetune
import merge_lora
from minicpmv_ft.loading import adapter_max_slice_nums, load_for_inference, load_model

PROCESSOR_VERSIONS = [v for v in REMOTE_VERSIONS if REGISTRY[v].chat_takes_max_slice_nums]  # 2.6, 4.0, 4.5
QUESTION = [{"role": "user", "content": "What is in the picture?"}]


def test_processor_versions_are_the_published_ones():
    assert PROCESSOR_VERSIONS == ["2.6", "4.0", "4.5"]


@pytest.mark.parametrize("version", PROCESSOR_VERSIONS)
def test_chat_asserts_that_config_and_processor_agree_as_the_published_code(tiny_model_dir, tmp_path, version):
    path = tiny_model_dir(version)
    model = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    image = Image.open(make_image(tmp_path / "q.png", (600, 400))).convert("RGB")
    first = chat_call(model, version, image, QUESTION, tokenizer, sampling=False, max_new_tokens=4)
    # the call-time argument slices differently and leaves the check alone
    chat_call(model, version, image, QUESTION, tokenizer, sampling=False, max_new_tokens=4, max_slice_nums=2)
    model.config.slice_config.max_slice_nums = 2  # config.json changed without preprocessor_config.json
    with pytest.raises(AssertionError, match="Check `config.json` and `preprocessor_config.json`"):
        chat_call(model, version, image, QUESTION, tokenizer, sampling=False, max_new_tokens=4)
    model.config.slice_config.max_slice_nums = 9
    assert chat_call(model, version, image, QUESTION, tokenizer, sampling=False, max_new_tokens=4) == first


def test_2_0_llm_has_no_generate_and_our_loading_gives_it_one(tiny_model_dir, tmp_path):
    """The published 2.0 chat() calls self.llm.generate, which its MiniCPM LLM class lost with
    transformers 4.50; our loader gives it GenerationMixin, decoding without a cache. With one
    beam and no repetition penalty that is greedy decoding over the whole sequence; beam search
    (sampling=False) and sampling answer too."""
    path = tiny_model_dir("2.0")
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    image = Image.open(make_image(tmp_path / "q.png", (300, 200))).convert("RGB")
    plain = AutoModel.from_pretrained(path, trust_remote_code=True).eval()
    with pytest.raises(AttributeError, match="has no attribute 'generate'"):
        plain.chat(image, QUESTION, None, tokenizer, sampling=False)
    model = load_model(path, REGISTRY["2.0"]).eval()
    answer, context, _ = model.chat(image, QUESTION, None, tokenizer, sampling=False, num_beams=1,
                                    repetition_penalty=1.0, max_new_tokens=6)
    assert context[-1] == {"role": "assistant", "content": answer}

    data = model._inputs(image, QUESTION, tokenizer, model._config_slicer())
    with torch.no_grad():
        embeds, _ = model.get_vllm_embedding(data)
        greedy = []
        for _ in range(6):
            token = int(model.llm(inputs_embeds=embeds).logits[0, -1].argmax())
            if token == tokenizer.eos_token_id:
                break
            greedy.append(token)
            step = model.llm.get_input_embeddings()(torch.tensor([[token]])) * model.llm.config.scale_emb
            embeds = torch.cat([embeds, step], dim=1)
    assert greedy and answer == tokenizer.decode([t for t in greedy if t != 0], skip_special_tokens=True).strip()
    # chat.py's decoding, 3 beams: beam search hands the LLM's _reorder_cache the (empty) cache after
    # each step, which the published code indexes as tuples of tensors (AttributeError on None)
    beams = model.chat(image, QUESTION, None, tokenizer, sampling=False, max_new_tokens=6)[0]
    assert isinstance(beams, str) and beams
    torch.manual_seed(0)
    sampled = model.chat(image, QUESTION, None, tokenizer, sampling=True, max_new_tokens=6)[0]
    torch.manual_seed(0)
    assert sampled and model.chat(image, QUESTION, None, tokenizer, sampling=True, max_new_tokens=6)[0] == sampled


def test_a_half_precision_2_0_checkpoint_loads_whole_in_its_own_precision(tiny_model_dir, tmp_path):
    """load_for_inference without a dtype (docs/results.md's way) loads a bf16 result (the
    launchers' --bf16) as bf16; 2.0's resampler keeps a float32 position embedding unless cast, and
    the cast was skipped ("mat1 and mat2 must have the same dtype" in the published resampler)."""
    source = AutoModel.from_pretrained(tiny_model_dir("2.0"), trust_remote_code=True)
    source.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        if (tiny_model_dir("2.0") / name).exists():
            (tmp_path / "bf16" / name).write_bytes((tiny_model_dir("2.0") / name).read_bytes())
    for path in tiny_model_dir("2.0").glob("*.py"):
        (tmp_path / "bf16" / path.name).write_bytes(path.read_bytes())
    tokenizer, model, _, _ = load_for_inference(str(tmp_path / "bf16"))
    dtypes = {t.dtype for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()}
    assert dtypes == {torch.bfloat16}
    image = Image.open(make_image(tmp_path / "q.png", (300, 200))).convert("RGB")
    assert model.chat(image, QUESTION, None, tokenizer, sampling=False, max_new_tokens=3)[0]


@pytest.fixture(scope="module")
def trained(tiny_model_dir, sample_data, tmp_path_factory):  # noqa: F811
    """version -> (full model folder, adapter folder), both trained with --max_slice_nums 2."""
    made = {}

    def get(version):
        if version not in made:
            root = tmp_path_factory.mktemp(f"slices-{version}")
            common = ["--model_name_or_path", str(tiny_model_dir(version)), "--data_path",
                      str(sample_data / "train.json"), "--max_steps", "1"]
            finetune.train(common + cpu_flags(root / "full", 1, 1e-3) + ["--max_slice_nums", "2"])
            finetune.train(common + cpu_flags(root / "lora", 1, 1e-3)
                           + ["--max_slice_nums", "2", "--use_lora", "true", "--lora_r", "4"])
            made[version] = root / "full", root / "lora"
        return made[version]

    return get


@pytest.mark.long(demo_version_quick=True)
@pytest.mark.parametrize("version", REMOTE_VERSIONS)
def test_results_trained_with_fewer_slices_chat_through_their_own_chat(trained, tmp_path, version):
    """Issue 18.1: a merged LoRA result had max_slice_nums 2 in config.json and 9 in
    preprocessor_config.json, so the published 2.6+ chat() stopped on its assertion; an adapter's
    chat() met its base's processor. Full, merged and adapter results all answer now, each
    slicing as training did (2), the adapter alike with its merged model."""
    full, lora = trained(version)
    merged = tmp_path / "merged"
    merge_lora.merge(str(lora), str(merged))
    for folder in (full, merged):
        config = json.loads((folder / "config.json").read_text())
        assert config.get("slice_config", config)["max_slice_nums"] == 2  # 2.0 keeps it at the top level
        if REGISTRY[version].chat_takes_max_slice_nums:
            assert json.loads((folder / "preprocessor_config.json").read_text())["max_slice_nums"] == 2
    image = Image.open(make_image(tmp_path / "q.png", (900, 700))).convert("RGB")
    answers = {}
    for name, folder in (("full", full), ("merged", merged)):
        if version == "2.0":  # the published 2.0 chat() cannot generate without our loader's fix
            tokenizer, model, _, _ = load_for_inference(str(folder))
        else:
            model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
            tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
        answers[name] = chat_call(model, version, image, QUESTION, tokenizer, sampling=False, max_new_tokens=5)
    tokenizer, model, entry, _ = load_for_inference(str(lora))
    assert adapter_max_slice_nums(str(lora)) == 2
    answers["adapter"] = chat.answer(model, tokenizer, entry, [image], QUESTION[0]["content"], max_new_tokens=5,
                                     max_slice_nums=adapter_max_slice_nums(str(lora)))
    assert answers["adapter"] == answers["merged"]
