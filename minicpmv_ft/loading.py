"""Loading checkpoints and LoRA adapters the way the real MiniCPM-V checkpoints need."""
from __future__ import annotations

import builtins
import json
import logging
import os
import typing

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer

from .versions import detect_version

logger = logging.getLogger(__name__)


class AdapterBaseError(ValueError):
    """The base model an adapter was trained on cannot be found."""


def allow_remote_code_list():
    """The real 2.5/2.6 resampler.py uses `List` without importing it; torch >= 2.7 no longer
    leaks it into builtins, so importing the remote code fails with NameError."""
    builtins.List = typing.List


def is_adapter(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "adapter_config.json"))


def adapter_base(adapter_dir: str, base: str | None = None) -> str:
    """The base model folder or hub id of a LoRA adapter: `base` if given, else the recorded one."""
    with open(os.path.join(adapter_dir, "adapter_config.json")) as handle:
        recorded = json.load(handle).get("base_model_name_or_path")
    chosen = base or recorded
    if chosen and os.path.isdir(chosen):
        return chosen
    looks_local = not chosen or os.path.isabs(chosen) or chosen.startswith((".", "~")) or chosen.count("/") != 1
    if not looks_local:
        try:
            AutoConfig.from_pretrained(chosen, trust_remote_code=True)
            return chosen
        except OSError:
            pass
    how = (f"the adapter in {adapter_dir} was trained on {recorded!r}, which is not there (moved or deleted?); "
           "pass the base model's folder or hub id with --base") if not base else \
        f"--base {base!r} is neither a model folder nor a reachable hub id"
    raise AdapterBaseError(how)


def load_model(path: str, dtype=None, **kwargs):
    allow_remote_code_list()
    return AutoModel.from_pretrained(path, trust_remote_code=True, dtype=dtype or "auto", **kwargs)


def load_for_inference(model_dir: str, base: str | None = None, dtype=None, merge: bool = False):
    """(tokenizer, model, version, base path or None) for a full checkpoint or a LoRA adapter;
    with merge=True an adapter is merged into its base (a plain MiniCPM-V model)."""
    base_path = None
    if is_adapter(model_dir):
        from peft import PeftModel

        base_path = adapter_base(model_dir, base)
        model = PeftModel.from_pretrained(load_model(base_path, dtype), model_dir)
        if merge:
            model = model.merge_and_unload()
        tokenizer = AutoTokenizer.from_pretrained(base_path, trust_remote_code=True)
    else:
        model = load_model(model_dir, dtype)
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=True)
    return tokenizer, model.eval(), detect_version(model.config, tokenizer), base_path


def local_dir(name_or_path: str) -> str | None:
    """Folder holding a checkpoint's files (its remote code and processor files)."""
    if os.path.isdir(name_or_path):
        return name_or_path
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name_or_path, allow_patterns=["*.py", "*.json"])
    except Exception as exc:  # offline or gated: training and merging still work
        logger.warning("could not fetch %s's processor files to copy into outputs: %s", name_or_path, exc)
        return None


def default_dtype():
    return torch.bfloat16 if torch.cuda.is_available() else torch.float32
