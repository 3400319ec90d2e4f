"""The tiny MiniCPM-V 4.6: transformers' own classes (MiniCPMV4_6Config, ...ForConditionalGeneration,
...Processor; transformers >= 5.7, the 4.6 environment) with small sizes and random weights,
saved as the real checkpoint is: config.json without auto_map, processor files, tokenizer with
the processor's named special tokens, and a chat template."""
from __future__ import annotations

from pathlib import Path

from .qwen3_template import qwen3_thinking_template

# The processor reads these attributes of the tokenizer (its extra special tokens).
NAMED_TOKENS = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>", "image_start_token": "<image>",
                "image_end_token": "</image>", "slice_start_token": "<slice>", "slice_end_token": "</slice>",
                "image_id_start_token": "<image_id>", "image_id_end_token": "</image_id>"}

# 4.5's template (tiny_model/qwen3_template.py) for messages whose content is a string or a list
# of image / video / text items joined by "\n"; each image item is the processor's image token,
# which the processor replaces by the image's placeholder.
RENDER_MACRO = (
    "{%- macro render(content) -%}{%- if content is string -%}{{- content -}}{%- else -%}"
    "{%- for item in content -%}{%- if not loop.first -%}{{- '\n' -}}{%- endif -%}"
    "{%- if item['type'] == 'image' -%}{{- '<|image_pad|>' -}}{%- elif item['type'] == 'video' -%}"
    "{{- '<|video_pad|>' -}}{%- else -%}{{- item['text'] -}}{%- endif -%}{%- endfor -%}{%- endif -%}{%- endmacro -%}"
)
TEMPLATE = qwen3_thinking_template("render(m['content'])", prelude=RENDER_MACRO)

# Qwen3.5's hybrid layout in two layers: one gated-delta-net (linear attention), one full attention.
TINY_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "head_dim": 16, "layer_types": ["linear_attention", "full_attention"],
             "linear_key_head_dim": 16, "linear_value_head_dim": 16, "linear_num_key_heads": 2,
             "linear_num_value_heads": 4, "max_position_embeddings": 32768, "model_type": "qwen3_5_text"}
# SigLIP2-style tower at the real patch size (14) and base resolution (448); the window-attention
# merger after layer 0.
TINY_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
               "patch_size": 14, "image_size": 448}


def save_tokenizer_and_processor(out: Path, processor_class, tokenizer_object, vocab_size: int | None):
    """Saves the tokenizer (NAMED_TOKENS, ChatML's end and padding) and a processor of
    `processor_class` with 4.6's image and video processors to `out`; returns (tokenizer,
    end id, padding id)."""
    from transformers import PreTrainedTokenizerFast
    from transformers.models.minicpmv4_6.image_processing_minicpmv4_6 import MiniCPMV4_6ImageProcessor
    from transformers.models.minicpmv4_6.video_processing_minicpmv4_6 import MiniCPMV4_6VideoProcessor

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer_object, eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>", extra_special_tokens=NAMED_TOKENS)
    processor = processor_class(image_processor=MiniCPMV4_6ImageProcessor(patch_size=14),
                                video_processor=MiniCPMV4_6VideoProcessor(patch_size=14),
                                tokenizer=tokenizer, chat_template=TEMPLATE)
    processor.save_pretrained(out)
    if vocab_size is not None and vocab_size < len(tokenizer):
        raise SystemExit(f"--vocab-size {vocab_size} is smaller than the tokenizer ({len(tokenizer)} tokens)")
    end, pad = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    return tokenizer, end, pad


def save_model(out: Path, model_class, config, seed: int, end: int, pad: int):
    """Random weights (initializer range 0.1, so a tiny model learns fast) of `model_class`,
    saved to `out` with the generation config's end and padding ids."""
    import torch

    config.initializer_range = config.text_config.initializer_range = 0.1
    torch.manual_seed(seed)
    model = model_class(config)
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = end, pad
    model.save_pretrained(out)
    return out


def build(out: Path, tokenizer_object, vocab_size: int | None = None, seed: int = 0,
          layer_types: list[str] | None = None) -> Path:
    """Writes the tiny 4.6 model to `out` (an empty folder); `tokenizer_object`: a `tokenizers`
    Tokenizer holding NAMED_TOKENS and ChatML's special tokens. `layer_types` overrides the
    LLM's layer kinds (all "full_attention": a 4.6 whose layers packing can keep apart)."""
    from transformers import MiniCPMV4_6Config, MiniCPMV4_6ForConditionalGeneration, MiniCPMV4_6Processor

    tokenizer, end, pad = save_tokenizer_and_processor(out, MiniCPMV4_6Processor, tokenizer_object, vocab_size)
    text = {**TINY_TEXT, "vocab_size": vocab_size or len(tokenizer), "eos_token_id": end, "pad_token_id": pad}
    if layer_types is not None:
        text.update(layer_types=list(layer_types), num_hidden_layers=len(layer_types))
    config = MiniCPMV4_6Config(text_config=text, vision_config=TINY_VISION, insert_layer_id=0, image_size=448,
                               image_token_id=tokenizer.image_token_id, video_token_id=tokenizer.video_token_id,
                               downsample_mode="16x")
    return save_model(out, MiniCPMV4_6ForConditionalGeneration, config, seed, end, pad)
