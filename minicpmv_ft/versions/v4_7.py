"""MiniCPM-V 4.7: 4.6's vision path (SigLIP2, window-attention merger), processor and chat format
(ChatML with Qwen3 thinking blocks, here switched by `enable_thinking` in one checkpoint), with a
Qwen3.5 dense (openbmb/MiniCPM-V-4.7-1B) or Qwen3.5-MoE (openbmb/MiniCPM-V-4.7-35B-A3B) text
model; native transformers classes (>= 5.18, the transformers 5 environment: environments.py).
What differs from 4.6's entry is written here: its names, and that the model lays out its canvas
M-RoPE position ids itself from the modality ids its processor writes."""
from dataclasses import replace

from .v4_6 import VERSION as V4_6

VERSION = replace(
    V4_6,
    name="4.7",
    checkpoints="MiniCPM-V 4.7 (openbmb/MiniCPM-V-4.7-1B, -35B-A3B)",
    aliases=("minicpmv4_7",),
    model_type="minicpmv4_7",
    # the MoE's experts are trained by LoRA only when --lora_target_modules names them
    # (minicpmv_ft/lora_targets.py); the default is 4.6's: attention and linear-attention projections
    positions_from_model=True,
)
