"""Write a tiny, random-weight MiniCPM-V model directory that loads like a real checkpoint.

    python tools/make_tiny_model.py --version 4.5 --out /tmp/tiny-4.5 [--vocab-size 151748] [--seed 0]

--version is any version of the registry (minicpmv_ft/versions/; --help lists them; --llm-type
minicpm / llama3 / qwen still name 2.x). A native version has no remote code: it is built from
transformers' own classes, in its own environment (.venv-transformers5;
tools/tiny_model/native_4_6.py).

The directory holds config.json (with auto_map), our own remote-code .py files, a small
tokenizer with the real special tokens, attributes and chat template of that version, and
random weights (a few MB). It loads offline through the same path as the real checkpoints:
AutoModel/AutoTokenizer.from_pretrained(DIR, trust_remote_code=True).
--vocab-size sets the embedding/LM-head rows (e.g. the real 122753 / 128256 / 151666) for
benchmarks; the tokenizer itself only uses the first few hundred ids.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the project's package: the registry's load fixes

from minicpmv_ft.versions.environments import WrongEnvironment, check_version_environment  # noqa: E402
from tiny_model.qwen3_template import qwen3_thinking_template  # noqa: E402
REMOTE_CODE = HERE / "tiny_model" / "remote_code"
SHARED_FILES = ["modeling_minicpmv.py", "modeling_minicpm.py", "modeling_navit_siglip.py",
                "resampler.py", "image_processing_minicpmv.py", "processing_minicpmv.py", "tokenizer_attributes.py",
                "configuration_fields.py", "typing_names.py"]
LLM_TYPE_ALIASES = {"minicpm": "2.0", "llama3": "2.5", "qwen": "2.6"}

MARKUP_TOKENS = ["<image>", "</image>", "<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>",
                 "<point>", "</point>", "<slice>", "</slice>"]

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
)
CHATML_PLAIN_TEMPLATE = (  # 4.0: ChatML without a default system turn
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
QWEN3_TEMPLATE = qwen3_thinking_template()  # 4.5
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Training text for the tiny tokenizers: enough to learn a few hundred merges.
CORPUS = [
    "What is in the image? A cat is sitting on a red chair next to the window.",
    "Describe the picture in detail. There are two dogs playing in the park with a ball.",
    "How many people are in the photo? I can see three people standing near a car.",
    "The weather is sunny and the sky is blue. Trees and flowers are everywhere.",
    "Please read the text in the image: OPEN 24 HOURS, 123 Main Street, phone 555-0199.",
    "The chart shows sales from 2019 to 2024; revenue grew by 35 percent each year.",
    "def train(model, data):\n    for step, batch in enumerate(data):\n        loss = model(batch)\n",
    "You are a helpful assistant. Answer the question about the image briefly.",
    "这是一张猫的图片。图片中有一只白色的猫坐在椅子上。",
    "请描述这张图片。天空是蓝色的，草地是绿色的。",
    "Yes. No. Maybe! Why? Because the answer is 42, and 7 + 8 = 15.",
    "<用户>What is it?<AI>There is a cat. Let me think step by step: first, the shape.",
    "A tall building, a small house, a long river, and a bright moon at night.",
    "The model reads images and text, then writes an answer token by token.",
]


def _corpus():
    lines = []
    for repeat in range(20):
        for sentence in CORPUS:
            lines.append(sentence if repeat % 2 == 0 else sentence.lower())
    return lines


def _byte_level_tokenizer(pattern: str, special_tokens: list[str], vocab_size: int = 700, base_tokens=(),
                          plain_tokens=()):
    """Byte-level BPE (Llama-3 / Qwen style). `base_tokens` become ids of the base vocabulary
    (4.5's `<unk>` is such a remapped id), `plain_tokens` added tokens that are not special."""
    import json

    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(_corpus(), trainer)
    if base_tokens:
        state = json.loads(tokenizer.to_str())
        vocab = state["model"]["vocab"]
        for token in base_tokens:
            vocab[token] = len(vocab)
        tokenizer = Tokenizer.from_str(json.dumps(state))
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in plain_tokens])
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens])
    return tokenizer


def _sentencepiece_style_tokenizer(special_tokens: list[str], vocab_size: int = 700):
    """4.0's tokenizer: BPE over `▁`-joined words with byte fallback; the normaliser prepends `▁`
    to every run of text between added tokens, and `<unk> <s> </s>` ... take the first ids."""
    import json

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens, show_progress=False,
                                  initial_alphabet=["\n", "▁"])
    tokenizer.train_from_iterator(_corpus(), trainer)
    state = json.loads(tokenizer.to_str())
    vocab = state["model"]["vocab"]
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    return Tokenizer.from_str(json.dumps(state))


def _save_fast_tokenizer(out: Path, tokenizer_object, chat_template: str, cls=None, **special):
    from transformers import PreTrainedTokenizerFast

    tokenizer = (cls or PreTrainedTokenizerFast)(tokenizer_object=tokenizer_object, **special)
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(out)
    return len(tokenizer)


FAST_TOKENIZER = {"class": "MiniCPMVTokenizerFast", "auto_map": [None, "tokenization_minicpmv_fast.MiniCPMVTokenizerFast"]}
# Ids 3..100 of the 2.0 and 4.0 vocabularies hold other tokens; the image markup starts at 101.
RESERVED = [f"<reserved_{i}>" for i in range(3, 101)]


def build_llama3_tokenizer(out: Path) -> dict:
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                "<|eot_id|>", "<unk>"] + MARKUP_TOKENS
    size = _save_fast_tokenizer(out, _byte_level_tokenizer(LLAMA3_PATTERN, specials), LLAMA3_TEMPLATE,
                                bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>",
                                unk_token="<unk>", pad_token="!")
    return {"size": size, **FAST_TOKENIZER}


def build_qwen_tokenizer(out: Path) -> dict:
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"] + MARKUP_TOKENS + ["<image_id>", "</image_id>"]
    size = _save_fast_tokenizer(out, _byte_level_tokenizer(QWEN2_PATTERN, specials), CHATML_TEMPLATE,
                                eos_token="<|im_end|>", unk_token="<unk>", pad_token="<|endoftext|>")
    return {"size": size, **FAST_TOKENIZER}


def build_qwen3_tokenizer(out: Path) -> dict:
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"] + MARKUP_TOKENS + ["<image_id>", "</image_id>"]
    tokenizer = _byte_level_tokenizer(QWEN2_PATTERN, specials, base_tokens=["<unk>"], plain_tokens=["<think>", "</think>"])
    size = _save_fast_tokenizer(out, tokenizer, QWEN3_TEMPLATE, eos_token="<|im_end|>", unk_token="<unk>",
                                pad_token="<|endoftext|>")
    return {"size": size, **FAST_TOKENIZER}


def build_minicpm4_tokenizer(out: Path) -> dict:
    from tokenizers import AddedToken
    from transformers import LlamaTokenizerFast

    markup = MARKUP_TOKENS + ["<image_id>", "</image_id>", "<unit>", "</unit>"]  # ids 101..116
    tokenizer = _sentencepiece_style_tokenizer(["<unk>", "<s>", "</s>"] + RESERVED + markup + ["<think>", "</think>"])
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in
                                  ["<unk>", "<s>", "</s>"] + markup + ["<|im_end|>", "<|im_start|>"]])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in ["<think>", "</think>"]])
    size = _save_fast_tokenizer(out, tokenizer, CHATML_PLAIN_TEMPLATE, cls=LlamaTokenizerFast, bos_token="<s>",
                                eos_token="</s>", unk_token="<unk>", add_bos_token=True, add_eos_token=False,
                                legacy=True)
    return {"size": size, **FAST_TOKENIZER}


def build_minicpm_tokenizer(out: Path) -> dict:
    """2.0: a slow sentencepiece tokenizer with the legacy dummy prefix; `<用户>`/`<AI>` are plain
    text, only `<unk> <s> </s>` and the image markup (ids 101-112) are special."""
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()), model_prefix=str(out / "tokenizer"), vocab_size=700,
        model_type="bpe", user_defined_symbols=RESERVED + MARKUP_TOKENS, byte_fallback=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, character_coverage=1.0,
        hard_vocab_limit=False, minloglevel=2,
    )
    os.remove(out / "tokenizer.vocab")
    processor = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    special = {"content": None, "lstrip": False, "rstrip": False, "normalized": False, "single_word": False,
               "special": True}
    added = {str(i): {**special, "content": processor.id_to_piece(i)} for i in [0, 1, 2] + list(range(101, 113))}
    config = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
              "add_eos_token": False, "legacy": True, "clean_up_tokenization_spaces": False,
              "model_max_length": 4096, "sp_model_kwargs": {}, "added_tokens_decoder": added}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    return {"size": processor.get_piece_size(), "class": "MiniCPMVTokenizer",
            "auto_map": ["tokenization_minicpmv.MiniCPMVTokenizer", None]}


TINY_LLM = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4}
TINY_NAVIT = {"hidden_size": 64, "image_size": 980, "intermediate_size": 128, "model_type": "idefics2",
              "num_attention_heads": 2, "num_hidden_layers": 2, "patch_size": 14}
NAVIT_FIELDS = {"batch_vision_input": True, "drop_vision_last_layer": False, "slice_mode": True,
                "vision_config": TINY_NAVIT, "patch_size": 14}
IMAGE_ID_FIELDS = {"query_num": 64, "use_image_id": True, "vision_batch_size": 16,
                   "slice_config": {"max_slice_nums": 9, "patch_size": 14, "model_type": "minicpmv"}}


def _token_ids(out: Path, *tokens):
    from transformers import AutoTokenizer  # only to read back the ids of the special tokens

    loaded = AutoTokenizer.from_pretrained(out)
    return [loaded.convert_tokens_to_ids(t) for t in tokens]


def recipe_2_0(out: Path):
    tok = build_minicpm_tokenizer(out)
    config = {**TINY_LLM, "num_key_value_heads": 4, "scale_emb": 12, "dim_model_base": 64,
              "scale_depth": 1.4, "rms_norm_eps": 1e-5, "bos_token_id": 1, "eos_token_id": 2,
              "max_position_embeddings": 4096,
              "vision_encoder": "vit_so400m_patch14_siglip_384.webli",
              "vision_encoder_kwargs": {"img_size": 448, "patch_size": 14, "embed_dim": 64, "depth": 3,
                                        "num_heads": 2, "mlp_ratio": 2.0, "class_token": False,
                                        "global_pool": "map"},
              "query_num": 64, "image_size": 448, "drop_vision_last_layer": True, "slice_mode": True,
              "patch_size": 14, "max_slice_nums": 9, "scale_resolution": 448, "transformers_version": "4.36.0"}
    return tok, config, "v2", {}


def recipe_2_5(out: Path):
    tok = build_llama3_tokenizer(out)
    bos, eos, eot = _token_ids(out, "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>")
    config = {**TINY_LLM, **NAVIT_FIELDS, "num_key_value_heads": 2, "rope_theta": 500000.0,
              "max_position_embeddings": 8192, "bos_token_id": bos, "eos_token_id": eos, "query_num": 96,
              "slice_config": {"max_slice_nums": 9, "model_type": "minicpmv"}, "transformers_version": "4.40.0"}
    return tok, config, "v2_5", {"eos_token_id": [eos, eot]}


def recipe_2_6(out: Path):
    tok = build_qwen_tokenizer(out)
    start, end = _token_ids(out, "<|im_start|>", "<|im_end|>")
    config = {**TINY_LLM, **NAVIT_FIELDS, **IMAGE_ID_FIELDS, "num_key_value_heads": 2, "rope_theta": 1000000.0,
              "max_position_embeddings": 32768, "bos_token_id": start, "eos_token_id": end,
              "tie_word_embeddings": False, "transformers_version": "4.40.0"}
    return tok, config, "v2_6", {}


def recipe_4_0(out: Path):
    tok = build_minicpm4_tokenizer(out)
    end = _token_ids(out, "<|im_end|>")[0]
    config = {**TINY_LLM, **NAVIT_FIELDS, **IMAGE_ID_FIELDS, "version": 4.0, "num_key_value_heads": 2,
              "max_position_embeddings": 4096, "bos_token_id": 1, "eos_token_id": [2, end], "tie_word_embeddings": False,
              "transformers_version": "4.51.0"}
    return tok, config, "v4_0", {}


def recipe_4_5(out: Path):
    tok = build_qwen3_tokenizer(out)
    end, pad = _token_ids(out, "<|im_end|>", "<|endoftext|>")
    config = {**TINY_LLM, **NAVIT_FIELDS, **IMAGE_ID_FIELDS, "version": 4.5, "batch_3d_resampler": True,
              "num_key_value_heads": 2, "head_dim": 32, "rope_theta": 1000000.0, "max_position_embeddings": 40960,
              "bos_token_id": pad, "eos_token_id": end, "tie_word_embeddings": False, "transformers_version": "4.51.0"}
    # As the real 4.5: chat() and serving default to thinking off.
    return tok, config, "v4_5", {"chat_template_kwargs": {"enable_thinking": False}}


def write_preprocessor_config(out: Path, config: dict, version: str):
    """preprocessor_config.json as 2.5+ checkpoints ship it: a second copy of config.json's
    slicing settings, read by their processor (2.6+ chat() asserts that the two agree)."""
    processor = {
        "image_processor_type": "MiniCPMVImageProcessor", "processor_class": "MiniCPMVProcessor",
        "auto_map": {"AutoProcessor": "processing_minicpmv.MiniCPMVProcessor",
                     "AutoImageProcessor": "image_processing_minicpmv.MiniCPMVImageProcessor"},
        "max_slice_nums": config["slice_config"]["max_slice_nums"], "scale_resolution": 448,
        "patch_size": config["patch_size"], "image_feature_size": config["query_num"], "slice_mode": True,
        "norm_mean": [0.5, 0.5, 0.5], "norm_std": [0.5, 0.5, 0.5], "version": float(version),
    }
    if "use_image_id" in config:
        processor["use_image_id"] = config["use_image_id"]
    (out / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))


RECIPES = {"2.0": recipe_2_0, "2.5": recipe_2_5, "2.6": recipe_2_6, "4.0": recipe_4_0, "4.5": recipe_4_5}


def qwen3_5_tokenizer():
    """The byte-level tokenizer of 4.6 and 4.7 with their processors' named special tokens."""
    from tiny_model import native_4_6

    specials = (["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + list(native_4_6.NAMED_TOKENS.values())
                + MARKUP_TOKENS[2:10] + ["<unk>"])  # the markup's image and slice tokens are named ones
    return _byte_level_tokenizer(QWEN2_PATTERN, list(dict.fromkeys(specials)), plain_tokens=["<think>", "</think>"])


def build_4_6(out: Path, vocab_size: int | None, seed: int, layer_types=None) -> Path:
    from tiny_model import native_4_6

    return native_4_6.build(out, qwen3_5_tokenizer(), vocab_size, seed, layer_types)


def build_4_7(out: Path, vocab_size: int | None, seed: int, layer_types=None, moe: bool = False) -> Path:
    from tiny_model import native_4_7

    return native_4_7.build(out, qwen3_5_tokenizer(), vocab_size, seed, moe, layer_types)


# Versions built from transformers' own classes (no remote code)
NATIVE_RECIPES = {"4.6": build_4_6, "4.7": build_4_7}
# A second published checkpoint of a version, by name: (version, its builder's options). The
# tests run every version's tests on these too.
VARIANTS = {"4.7-moe": ("4.7", {"moe": True})}


def build(version: str, out: str | Path, vocab_size: int | None = None, seed: int = 0, **native_options) -> Path:
    """Writes the tiny model of `version` (or a 2.x llm_type alias) to `out` (replaced)."""
    import torch
    from transformers import AutoConfig

    from minicpmv_ft.loading import model_class
    from minicpmv_ft.versions import VERSIONS

    version = LLM_TYPE_ALIASES.get(version, version)
    if version in VARIANTS:
        version, options = VARIANTS[version]
        native_options = {**options, **native_options}
    if version not in RECIPES and version not in NATIVE_RECIPES:
        raise SystemExit(f"unknown version {version!r}; choose one of {', '.join([*RECIPES, *NATIVE_RECIPES])}")
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if version in NATIVE_RECIPES:
        return NATIVE_RECIPES[version](out, vocab_size, seed, **native_options)
    tok, config, folder, generation = RECIPES[version](out)
    if vocab_size is not None and vocab_size < tok["size"]:
        raise SystemExit(f"--vocab-size {vocab_size} is smaller than the tokenizer ({tok['size']} tokens)")
    for name in SHARED_FILES:
        shutil.copy(REMOTE_CODE / name, out / name)
    for source in (REMOTE_CODE / folder).glob("*.py"):
        shutil.copy(source, out / source.name)

    tokenizer_config_path = out / "tokenizer_config.json"
    tokenizer_config = json.loads(tokenizer_config_path.read_text())
    tokenizer_config.update({"tokenizer_class": tok["class"], "auto_map": {"AutoTokenizer": tok["auto_map"]}})
    template_file = out / "chat_template.jinja"
    if template_file.exists():  # the real checkpoints keep it in tokenizer_config.json
        tokenizer_config["chat_template"] = template_file.read_text()
        template_file.unlink()
    tokenizer_config_path.write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False))

    config.update({
        "architectures": ["MiniCPMV"], "model_type": "minicpmv", "vocab_size": vocab_size or tok["size"],
        "torch_dtype": "float32", "initializer_range": config.get("initializer_range", 0.1),
        "auto_map": {"AutoConfig": "configuration_minicpm.MiniCPMVConfig",
                     "AutoModel": "modeling_minicpmv.MiniCPMV",
                     "AutoModelForCausalLM": "modeling_minicpmv.MiniCPMV"},
    })
    (out / "config.json").write_text(json.dumps(config, indent=2))
    if "slice_config" in config:
        write_preprocessor_config(out, config, version)
    generation = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"], **generation}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2))

    torch.manual_seed(seed)
    model_config = AutoConfig.from_pretrained(out, trust_remote_code=True)
    # as every load of the code: the version's fixes first (2.5 / 2.6 import only with them)
    model = model_class(VERSIONS[version]).from_config(model_config, trust_remote_code=True)
    model.save_pretrained(out, safe_serialization=True)
    # config.json says the transformers its published checkpoint records, not this one's
    saved = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**saved, "transformers_version": config["transformers_version"]},
                                                indent=2, sort_keys=True) + "\n")
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--version", choices=[*RECIPES, *NATIVE_RECIPES], help="checkpoint generation to imitate")
    which.add_argument("--llm-type", choices=list(LLM_TYPE_ALIASES),
                       help="alias for the 2.x versions: minicpm = 2.0, llama3 = 2.5, qwen = 2.6")
    parser.add_argument("--out", required=True, help="output directory (replaced if it exists)")
    parser.add_argument("--vocab-size", type=int, default=None,
                        help="embedding rows (default: the tokenizer's size); e.g. 122753, 128256, 151666")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--moe", action="store_true",
                        help="4.7: the mixture-of-experts checkpoint (MiniCPM-V-4.7-35B-A3B) instead of the dense one")
    args = parser.parse_args(argv)
    # Saving imports DeepSpeed through accelerate, which then warns it found no GPU; this
    # builder never uses DeepSpeed.
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    version = args.version or LLM_TYPE_ALIASES[args.llm_type]
    if args.moe and not any(base == version for base, _ in VARIANTS.values()):
        parser.error(f"--moe: MiniCPM-V {version} has no mixture-of-experts checkpoint")
    try:
        check_version_environment(version)
    except WrongEnvironment as error:  # before the output folder is made
        parser.exit(2, f"make_tiny_model.py: {error}\n")
    out = build(version + "-moe" if args.moe else version, args.out, args.vocab_size, args.seed)
    size = sum(f.stat().st_size for f in out.iterdir()) / 2**20
    print(f"wrote tiny MiniCPM-V {version} model to {out} ({size:.1f} MiB)")


if __name__ == "__main__":
    sys.exit(main())
