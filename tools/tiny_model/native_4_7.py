"""The tiny MiniCPM-V 4.7: transformers' own classes (MiniCPMV4_7Config, ...ForConditionalGeneration,
...Processor with 4.6's image and video processors; transformers >= 5.18, the transformers 5
environment) with small sizes and random weights, saved as the real conversion saves them:
config.json with the canvas M-RoPE marker ids read from the tokenizer, processor files, the
tokenizer with the processor's named special tokens, and one chat template whose
`enable_thinking` switches thinking (4.7 has no separate thinking checkpoint).

Two text models, as published: Qwen3.5 dense (openbmb/MiniCPM-V-4.7-1B) and Qwen3.5-MoE
(openbmb/MiniCPM-V-4.7-35B-A3B: 256 experts, 8 per token; here 4 experts, 2 per token).
"""
from __future__ import annotations

from pathlib import Path

from .native_4_6 import TINY_VISION, save_model, save_tokenizer_and_processor

# One linear-attention (gated delta net) and one full-attention layer, as 4.6's tiny. The
# rotary part of a head (a quarter, as in Qwen3.5) has 4 frequencies here, interleaved over the
# time / height / width axes by mrope_section as the real 11 / 11 / 10 are, so every axis of
# the canvas positions reaches attention.
TINY_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
             "num_key_value_heads": 1, "head_dim": 32, "layer_types": ["linear_attention", "full_attention"],
             "linear_key_head_dim": 16, "linear_value_head_dim": 16, "linear_num_key_heads": 2,
             "linear_num_value_heads": 4, "max_position_embeddings": 32768,
             "rope_parameters": {"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25,
                                 "mrope_section": [2, 1, 1], "mrope_interleaved": True}}
TINY_MOE = {"model_type": "qwen3_5_moe_text", "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32,
            "num_experts": 4, "num_experts_per_tok": 2, "router_aux_loss_coef": 0.001}
# The tokens canvas M-RoPE pins around each crop (config fields, written from the tokenizer).
MARKERS = {"image_start_id": "<image>", "image_end_id": "</image>", "slice_start_id": "<slice>",
           "slice_end_id": "</slice>"}


def build(out: Path, tokenizer_object, vocab_size: int | None = None, seed: int = 0, moe: bool = False,
          layer_types: list[str] | None = None) -> Path:
    """Writes the tiny 4.7 (dense, or MoE with `moe`) to `out` (an empty folder);
    `tokenizer_object`: a `tokenizers` Tokenizer holding NAMED_TOKENS and ChatML's special tokens.
    `layer_types` overrides the LLM's layer kinds."""
    from transformers import MiniCPMV4_7Config, MiniCPMV4_7ForConditionalGeneration, MiniCPMV4_7Processor

    tokenizer, end, pad = save_tokenizer_and_processor(out, MiniCPMV4_7Processor, tokenizer_object, vocab_size)
    text = {**TINY_TEXT, **(TINY_MOE if moe else {"model_type": "qwen3_5_text"}),
            "vocab_size": vocab_size or len(tokenizer), "eos_token_id": end, "pad_token_id": pad}
    if layer_types is not None:
        text.update(layer_types=list(layer_types), num_hidden_layers=len(layer_types))
    newline = tokenizer.encode("\n", add_special_tokens=False)
    if len(newline) != 1:
        raise SystemExit(f"the tokenizer splits a newline into {newline}; canvas M-RoPE needs it as one token")
    markers = {field: tokenizer.convert_tokens_to_ids(token) for field, token in MARKERS.items()}
    config = MiniCPMV4_7Config(text_config=text, vision_config=TINY_VISION, insert_layer_id=0, image_size=448,
                               image_token_id=tokenizer.image_token_id, video_token_id=tokenizer.video_token_id,
                               downsample_mode="16x", newline_id=newline[0], **markers)
    return save_model(out, MiniCPMV4_7ForConditionalGeneration, config, seed, end, pad)
