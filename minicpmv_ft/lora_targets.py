"""Which modules --lora_target_modules adapts, known before the weights load: the model is built
on the meta device from its config (no memory, no weights) and its module names matched as PEFT
matches a string target (re.fullmatch on the full name).

A mixture-of-experts LLM keeps its routed experts fused, one [experts, out, in] tensor per
projection in one module (Qwen3.5-MoE's `mlp.experts`), which PEFT cannot adapt as a layer; a
pattern naming such a module adapts those tensors instead (PEFT's target_parameters: LoRA per
expert)."""
from __future__ import annotations

import difflib
import re

from torch import nn

from .loading import model_class

# Layer types PEFT's LoRA can adapt
ADAPTABLE = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d)


def meta_model(config, version):
    from accelerate import init_empty_weights

    with init_empty_weights():
        return model_class(version).from_config(config, trust_remote_code=True)


def matching_modules(model, pattern: str) -> list[str]:
    """Names of the adaptable modules of `model` that `pattern` fully matches."""
    return [name for name, module in model.named_modules()
            if isinstance(module, ADAPTABLE) and re.fullmatch(pattern, name)]


def matching_expert_weights(model, pattern: str) -> list[str]:
    """Full names of the fused expert tensors (3-D, one slice per expert) held by the experts
    modules (transformers' own hold `num_experts`) that `pattern` fully matches."""
    def fused(module, param):
        shape = getattr(param, "ds_shape", param.shape)  # ZeRO-3 keeps the shape in ds_shape
        return len(shape) == 3 and shape[0] == getattr(module, "num_experts", None)

    return [f"{name}.{key}" for name, module in model.named_modules() if name and re.fullmatch(pattern, name)
            for key, param in module.named_parameters(recurse=False) if fused(module, param)]


def peft_targets(model, pattern: str) -> dict:
    """LoraConfig's target arguments for `pattern`: the pattern itself, or where it names fused
    experts, the layers it matches and the experts' tensors."""
    experts = matching_expert_weights(model, pattern)
    if not experts:
        return {"target_modules": pattern}
    return {"target_modules": matching_modules(model, pattern), "target_parameters": experts}


def check_lora_targets(config, version, pattern: str | None, dropout: float, modules_to_save=()):
    """Raises ValueError naming the pattern when it adapts nothing, or fused experts with a
    dropout (PEFT's LoRA on parameters takes none, and LoraConfig has one dropout for every
    adapted layer), PEFT would stop after the weights loaded, with a traceback; or naming a
    `modules_to_save` entry that is no module's (PEFT would train without it, silently)."""
    if pattern is None and not modules_to_save:
        return
    model = meta_model(config, version)
    check_modules_to_save(model, modules_to_save)
    if pattern is None:
        return
    experts = matching_expert_weights(model, pattern)
    if experts and dropout:
        raise ValueError(f"--lora_target_modules {pattern!r} adapts the fused experts ({len(experts)} tensors, e.g. "
                         f"{experts[0]}), whose LoRA takes no dropout, and --lora_dropout {dropout} would apply to "
                         "them too: add --lora_dropout 0 (finetune_lora.sh passes 0.05)")
    if matching_modules(model, pattern) or experts:
        return
    example = matching_modules(model, version.lora_target_regex)[:1]
    raise ValueError(f"--lora_target_modules {pattern!r} matches no linear layer of this model (matched against "
                     f"full module names, e.g. {example[0] if example else 'llm.model.layers.0.self_attn.q_proj'}); "
                     f"the default is {version.lora_target_regex!r}")


def check_modules_to_save(model, names):
    """Each name must end some module's full name, as PEFT matches modules_to_save (a plain
    suffix); ValueError naming the first that ends none, with the nearest module name."""
    modules = [name for name, _ in model.named_modules() if name]
    for name in names:
        if not any(module.endswith(name) for module in modules):
            near = difflib.get_close_matches(name, sorted({module.rsplit(".", 1)[-1] for module in modules}), n=1)
            raise ValueError(f"--lora_modules_to_save {name!r} names no module of this model (a name matches the "
                             "modules whose full name ends with it)" + (f"; did you mean {near[0]!r}?" if near else ""))
