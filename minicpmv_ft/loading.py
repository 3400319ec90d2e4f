"""Loading checkpoints and LoRA adapters the way the real MiniCPM-V checkpoints need."""
from __future__ import annotations

import json
import logging
import os

import torch
import transformers
from transformers import AutoConfig, AutoTokenizer

from .checkpoints import ADAPTER_SETTINGS_FILE
from .pickled_weights import check_pickled_weights
from .versions import ModelVersion, detect_version, set_max_slice_nums
from .versions.environments import check_environment

logger = logging.getLogger(__name__)


class AdapterBaseError(ValueError):
    """The base model an adapter was trained on cannot be found."""


def is_adapter(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "adapter_config.json"))


def looks_like_hub_id(name: str) -> bool:
    """"org/name" is a hub id; an absolute, ./ or ~ path or any other shape is a local folder."""
    return not os.path.isabs(name) and not name.startswith((".", "~")) and name.count("/") == 1


def check_model_path(path: str, option: str, adapter_ok: bool) -> None:
    """ValueError naming `option` when `path` is no checkpoint: not a folder and not a hub id, a
    mistyped folder ("output/modle"), a file, a folder without config.json (an adapter's, where
    `adapter_ok` is False)."""
    if os.path.isfile(path):
        raise ValueError(f"{option} {path} is a file; give the model's folder (or a hub id like openbmb/MiniCPM-V-4_5)")
    if not os.path.isdir(path):
        if not looks_like_hub_id(path):
            raise ValueError(f"{option} {path}: no such folder (and not a hub id like openbmb/MiniCPM-V-4_5)")
        if os.path.isdir(path.split("/")[0]):  # "output/modle": a mistyped folder
            raise ValueError(f"{option} {path}: no such folder ({path.split('/')[0]}/ is a folder here)")
        return
    if os.path.isfile(os.path.join(path, "config.json")):
        return
    if is_adapter(path):
        if adapter_ok:
            return
        raise ValueError(f"{option} {path} is a LoRA adapter; train on its base model, or merge it first "
                         "(merge_lora.py) and train on the merged folder")
    raise ValueError(f"{option} {path} has no config.json: not a model checkpoint (give the folder of a downloaded "
                     "or trained one, or a hub id like openbmb/MiniCPM-V-4_5)")


def adapter_base(adapter_dir: str, base: str | None = None) -> str:
    """The base model folder or hub id of a LoRA adapter: `base` if given, else the recorded one."""
    with open(os.path.join(adapter_dir, "adapter_config.json")) as handle:
        recorded = json.load(handle).get("base_model_name_or_path")
    chosen = base or recorded
    if chosen and os.path.isdir(chosen):
        return chosen
    if chosen and looks_like_hub_id(chosen):
        try:
            AutoConfig.from_pretrained(chosen, trust_remote_code=True)
            return chosen
        except OSError:
            pass
    how = (f"the adapter in {adapter_dir} was trained on {recorded!r}, which is not there (moved or deleted?); "
           "pass the base model's folder or hub id with --base") if not base else \
        f"--base {base!r} is neither a model folder nor a reachable hub id"
    raise AdapterBaseError(how)


def model_class(version: ModelVersion):
    """The transformers Auto class of `version`'s checkpoints, once the version's before-load fixes
    have run: every load of a checkpoint's model code, with its weights or as a meta-device model
    from its config (lora_targets.py), goes through here, since importing the published code
    itself can fail without them (2.5 / 2.6: NameError on List)."""
    for fix in version.before_load:
        fix()
    return getattr(transformers, version.auto_class)


def load_model(path: str, version: ModelVersion, dtype=None, cast: bool = True, **kwargs):
    """The checkpoint with its version's load fixes applied, in `dtype` (None: the checkpoint's
    own, as its config says); cast=False leaves dtype casting to someone else (ZeRO-3, 4-bit
    quantisation)."""
    model = model_class(version).from_pretrained(path, trust_remote_code=True, dtype=dtype or "auto", **kwargs)
    dtype = dtype or model.dtype  # a fix that casts (2.0's) casts to what the weights loaded as
    for fix in version.after_load:
        model = fix(model, dtype if cast else None)
    return model


def load_tokenizer_and_version(path: str, llm_type: str | None = None):
    """(tokenizer, config, version) of a checkpoint: the one version detection of a run."""
    check_environment(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
        config = AutoConfig.from_pretrained(path, trust_remote_code=True)
    except OSError as error:  # transformers' "not a local folder and not a valid model identifier"
        if os.path.isdir(path):
            raise
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{path}: no such folder, and no model of that name could be loaded from the hub "
                         f"({reason}); check the path") from None
    return tokenizer, config, detect_version(config, tokenizer, llm_type)


def adapter_max_slice_nums(model_dir: str) -> int | None:
    """The --max_slice_nums a LoRA adapter was trained with (None: not an adapter, or trained
    with its base's setting). A full model's config.json and preprocessor_config.json carry it."""
    settings_file = os.path.join(model_dir, ADAPTER_SETTINGS_FILE)
    if not is_adapter(model_dir) or not os.path.isfile(settings_file):
        return None
    with open(settings_file) as f:
        return int(json.load(f)["max_slice_nums"])


def version_for_inference(model_dir: str, base: str | None = None) -> ModelVersion:
    """The version of a checkpoint or LoRA adapter, from its tokenizer and config alone (the
    first thing chat.py and predict.py ask of --model: a path that is no model is one line)."""
    check_model_path(model_dir, "--model", adapter_ok=True)
    base_path = adapter_base(model_dir, base) if is_adapter(model_dir) else None
    return load_tokenizer_and_version(base_path or model_dir)[2]


def load_for_inference(model_dir: str, base: str | None = None, dtype=None, merge: bool = False):
    """(tokenizer, model, version, base path or None) for a full checkpoint or a LoRA adapter;
    with merge=True an adapter is merged into its base (a plain MiniCPM-V model). For a native
    checkpoint the first is its processor (tokenizer, image processor, chat template), which its
    inference goes through.

    An adapter's --max_slice_nums goes into the base config where that config is what slices
    (2.0, 2.5's chat(), and a merged model's config.json); 2.6+ chat() instead asserts that the
    config equals the base folder's processor, so there it is chat()'s argument
    (adapter_max_slice_nums)."""
    base_path = adapter_base(model_dir, base) if is_adapter(model_dir) else None
    for folder in (model_dir, base_path):
        check_pickled_weights(local_dir(folder) if folder else None)
    tokenizer, _, version = load_tokenizer_and_version(base_path or model_dir)
    tokenizer = version.family.inference_inputs(tokenizer, base_path or model_dir)
    model = load_model(base_path or model_dir, version, dtype)
    if base_path:
        from peft import PeftModel

        trained = adapter_max_slice_nums(model_dir)
        if trained is not None and (merge or not version.chat_takes_max_slice_nums):
            set_max_slice_nums(model.config, version, trained)
        try:
            model = PeftModel.from_pretrained(model, model_dir)
        except RuntimeError as error:  # torch's "Error(s) in loading state_dict ... size mismatch for ..."
            if "size mismatch" not in str(error):
                raise
            mismatch = next(line.strip() for line in str(error).splitlines() if "size mismatch" in line)
            raise AdapterBaseError(f"the adapter in {model_dir} does not fit the base model {base_path} "
                                   f"(MiniCPM-V {version.name}): {mismatch}; pass the model it was trained on "
                                   "with --base") from None
        if merge:
            model = model.merge_and_unload()
    return tokenizer, model.eval(), version, base_path


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
