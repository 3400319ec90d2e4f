"""Which modules --lora_target_modules adapts, known before the weights load: the model is built
on the meta device from its config (no memory, no weights) and its module names matched as PEFT
matches a string target (re.fullmatch on the full name)."""
from __future__ import annotations

import re

import transformers
from torch import nn

# Layer types PEFT's LoRA can adapt
ADAPTABLE = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d)


def matching_modules(config, version, pattern: str) -> list[str]:
    """Names of the adaptable modules of the checkpoint's model that `pattern` fully matches."""
    from accelerate import init_empty_weights

    auto_class = getattr(transformers, version.auto_class)
    with init_empty_weights():
        model = auto_class.from_config(config, trust_remote_code=True)
    return [name for name, module in model.named_modules()
            if isinstance(module, ADAPTABLE) and re.fullmatch(pattern, name)]


def check_lora_targets(config, version, pattern: str | None):
    """Raises ValueError naming the pattern when it adapts nothing (PEFT would stop after the
    weights loaded, with a traceback)."""
    if pattern is None or matching_modules(config, version, pattern):
        return
    example = matching_modules(config, version, version.lora_target_regex)[:1]
    raise ValueError(f"--lora_target_modules {pattern!r} matches no linear layer of this model (matched against "
                     f"full module names, e.g. {example[0] if example else 'llm.model.layers.0.self_attn.q_proj'}); "
                     f"the default is {version.lora_target_regex!r}")
