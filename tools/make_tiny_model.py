"""Write a tiny, random-weight MiniCPM-V model directory that loads like a real checkpoint.

    python tools/make_tiny_model.py --llm-type qwen --out /tmp/tiny-qwen [--vocab-size 151666] [--seed 0]

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
REMOTE_CODE = HERE / "tiny_model" / "remote_code"
SHARED_FILES = ["modeling_minicpmv.py", "modeling_minicpm.py", "modeling_navit_siglip.py",
                "resampler.py", "image_processing_minicpmv.py"]

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
    "A tall building, a small house, a long river, and a bright moon at night.",
    "The model reads images and text, then writes an answer token by token.",
]


def _corpus():
    lines = []
    for repeat in range(20):
        for sentence in CORPUS:
            lines.append(sentence if repeat % 2 == 0 else sentence.lower())
    return lines


def _byte_level_tokenizer(pattern: str, special_tokens: list[str], vocab_size: int = 700):
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
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens])
    return tokenizer


def _save_fast_tokenizer(out: Path, tokenizer_object, chat_template: str, **special):
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer_object, **special)
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(out)
    return len(tokenizer)


def build_llama3_tokenizer(out: Path) -> dict:
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                "<|eot_id|>", "<unk>"] + MARKUP_TOKENS
    size = _save_fast_tokenizer(out, _byte_level_tokenizer(LLAMA3_PATTERN, specials), LLAMA3_TEMPLATE,
                                bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>",
                                unk_token="<unk>", pad_token="!")
    return {"size": size, "class": "MiniCPMVTokenizerFast", "file": "tokenization_minicpmv_fast",
            "auto_map": [None, "tokenization_minicpmv_fast.MiniCPMVTokenizerFast"]}


def build_qwen_tokenizer(out: Path) -> dict:
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"] + MARKUP_TOKENS + ["<image_id>", "</image_id>"]
    size = _save_fast_tokenizer(out, _byte_level_tokenizer(QWEN2_PATTERN, specials), CHATML_TEMPLATE,
                                eos_token="<|im_end|>", unk_token="<unk>", pad_token="<|endoftext|>")
    return {"size": size, "class": "MiniCPMVTokenizerFast", "file": "tokenization_minicpmv_fast",
            "auto_map": [None, "tokenization_minicpmv_fast.MiniCPMVTokenizerFast"]}


def build_minicpm_tokenizer(out: Path) -> dict:
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()), model_prefix=str(out / "tokenizer"), vocab_size=700,
        model_type="bpe", user_defined_symbols=["<用户>", "<AI>"] + MARKUP_TOKENS, byte_fallback=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, character_coverage=1.0,
        hard_vocab_limit=False, minloglevel=2,
    )
    os.remove(out / "tokenizer.vocab")
    config = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
              "add_eos_token": False, "legacy": True, "clean_up_tokenization_spaces": False,
              "model_max_length": 4096, "sp_model_kwargs": {}}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    processor = spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))
    return {"size": processor.get_piece_size(), "class": "MiniCPMVTokenizer", "file": "tokenization_minicpmv",
            "auto_map": ["tokenization_minicpmv.MiniCPMVTokenizer", None]}


TINY_LLM = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4}
TINY_NAVIT = {"hidden_size": 64, "image_size": 980, "intermediate_size": 128, "model_type": "idefics2",
              "num_attention_heads": 2, "num_hidden_layers": 2, "patch_size": 14}


def version_spec(llm_type: str, out: Path) -> tuple[dict, dict, str]:
    """(tokenizer info, config.json fields, remote-code folder) of one version."""
    if llm_type == "minicpm":
        tok = build_minicpm_tokenizer(out)
        config = {**TINY_LLM, "num_key_value_heads": 4, "scale_emb": 12, "dim_model_base": 64,
                  "scale_depth": 1.4, "rms_norm_eps": 1e-5, "bos_token_id": 1, "eos_token_id": 2,
                  "max_position_embeddings": 4096,
                  "vision_encoder": "vit_so400m_patch14_siglip_384.webli",
                  "vision_encoder_kwargs": {"img_size": 448, "patch_size": 14, "embed_dim": 64, "depth": 3,
                                            "num_heads": 2, "mlp_ratio": 2.0, "class_token": False,
                                            "global_pool": "map"},
                  "query_num": 64, "image_size": 448, "drop_vision_last_layer": True, "slice_mode": True,
                  "patch_size": 14, "max_slice_nums": 9, "scale_resolution": 448}
        return tok, config, "v2"
    from transformers import AutoTokenizer  # only to read back the ids of the special tokens

    if llm_type == "llama3":
        tok = build_llama3_tokenizer(out)
        ids = AutoTokenizer.from_pretrained(out)
        config = {**TINY_LLM, "num_key_value_heads": 2, "rope_theta": 500000.0, "max_position_embeddings": 8192,
                  "bos_token_id": ids.convert_tokens_to_ids("<|begin_of_text|>"),
                  "eos_token_id": ids.convert_tokens_to_ids("<|end_of_text|>"),
                  "query_num": 96, "batch_vision_input": True, "drop_vision_last_layer": False,
                  "slice_config": {"max_slice_nums": 9, "model_type": "minicpmv"}, "slice_mode": True,
                  "vision_config": TINY_NAVIT, "patch_size": 14}
        return tok, config, "v2_5"
    if llm_type == "qwen":
        tok = build_qwen_tokenizer(out)
        ids = AutoTokenizer.from_pretrained(out)
        config = {**TINY_LLM, "num_key_value_heads": 2, "rope_theta": 1000000.0, "max_position_embeddings": 32768,
                  "bos_token_id": ids.convert_tokens_to_ids("<|im_start|>"),
                  "eos_token_id": ids.convert_tokens_to_ids("<|im_end|>"), "tie_word_embeddings": False,
                  "query_num": 64, "batch_vision_input": True, "drop_vision_last_layer": False,
                  "use_image_id": True, "vision_batch_size": 16,
                  "slice_config": {"max_slice_nums": 9, "patch_size": 14, "model_type": "minicpmv"},
                  "slice_mode": True, "vision_config": TINY_NAVIT, "patch_size": 14}
        return tok, config, "v2_6"
    raise SystemExit(f"unknown --llm-type {llm_type!r}; choose minicpm, llama3 or qwen")


def build(llm_type: str, out: str | Path, vocab_size: int | None = None, seed: int = 0) -> Path:
    import torch
    from transformers import AutoConfig, AutoModel

    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    tok, config, folder = version_spec(llm_type, out)
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
    eos = [config["eos_token_id"]] + ([tok_id for tok_id in [_token_id(out, "<|eot_id|>")] if tok_id is not None])
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": config["bos_token_id"], "eos_token_id": eos if len(eos) > 1 else eos[0]}, indent=2))

    torch.manual_seed(seed)
    model_config = AutoConfig.from_pretrained(out, trust_remote_code=True)
    model = AutoModel.from_config(model_config, trust_remote_code=True)
    model.save_pretrained(out, safe_serialization=True)
    return out


def _token_id(out: Path, token: str):
    path = out / "tokenizer.json"
    if not path.exists():
        return None
    for added in json.loads(path.read_text())["added_tokens"]:
        if added["content"] == token:
            return added["id"]
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llm-type", required=True, choices=["minicpm", "llama3", "qwen"],
                        help="minicpm = MiniCPM-V 2.0, llama3 = MiniCPM-Llama3-V 2.5, qwen = MiniCPM-V 2.6")
    parser.add_argument("--out", required=True, help="output directory (replaced if it exists)")
    parser.add_argument("--vocab-size", type=int, default=None,
                        help="embedding rows (default: the tokenizer's size); e.g. 122753, 128256, 151666")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args(argv)
    out = build(args.llm_type, args.out, args.vocab_size, args.seed)
    size = sum(f.stat().st_size for f in out.iterdir()) / 2**20
    print(f"wrote tiny {args.llm_type} model to {out} ({size:.1f} MiB)")


if __name__ == "__main__":
    sys.exit(main())
