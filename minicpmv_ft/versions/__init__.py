"""The registry of MiniCPM-V checkpoint generations: one module per generation, detection from
the checkpoint's config, and the image settings read from wherever each version keeps them.

Adding a version means one module here (a `ModelVersion`), a tiny-model recipe and its test
parameters: docs/adding-a-version.md walks through them.
"""
from __future__ import annotations

import importlib
import pkgutil
import re
from dataclasses import dataclass

from .environments import in_native_environment  # noqa: F401 (for importers)
from .family import NATIVE
from .spec import ModelVersion, submodule  # noqa: F401 (submodule: for importers)


def _discover() -> dict[str, ModelVersion]:
    """Every module vX_Y.py of this package defines VERSION; a new module is a new version."""
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if re.fullmatch(r"v\d+_\d+", m.name))
    entries = [importlib.import_module(f"{__name__}.{name}").VERSION for name in names]
    return {entry.name: entry for entry in sorted(entries, key=lambda e: float(e.name))}


VERSIONS: dict[str, ModelVersion] = _discover()
# Native checkpoints (their classes inside a newer transformers) need their own environment;
# the others run their remote code in the default one.
NATIVE_VERSIONS = tuple(name for name, v in VERSIONS.items() if v.family is NATIVE)
REMOTE_CODE_VERSIONS = tuple(name for name in VERSIONS if name not in NATIVE_VERSIONS)

LLM_FAMILIES = ("minicpm", "llama", "qwen2", "qwen3")


class VersionError(ValueError):
    """The checkpoint is not a supported MiniCPM-V, or --llm_type contradicts it."""


def supported() -> str:
    return "; ".join(f"{v.name} = {v.checkpoints} (--llm_type {' / '.join(v.names)})" for v in VERSIONS.values())


def version_choices() -> str:
    """'2.0 (minicpm), 2.5 (llama3), ...': the names --llm_type takes, for help texts."""
    return ", ".join(f"{v.name} ({', '.join(v.aliases)})" if v.aliases else v.name for v in VERSIONS.values())


def names_where(predicate) -> str:
    """'2.6, 4.0': the versions an entry predicate holds for, for help texts and messages."""
    return ", ".join(v.name for v in VERSIONS.values() if predicate(v))


def video_defaults(setting: str, samplings: tuple[str, ...] | None = None) -> str:
    """'2.6, 4.0: 1; 4.5: 3; 4.6, 4.7: its video processor's': each video version's default of a
    VideoScheme setting (of these sampling kinds when given), for help texts."""
    by_value = {}
    for v in VERSIONS.values():
        if v.video is not None and (samplings is None or v.video.sampling in samplings):
            by_value.setdefault(getattr(v.video, setting), []).append(v.name)
    shown = {value: "its video processor's" if value is None else f"{value:g}" for value in by_value}
    return "; ".join(f"{', '.join(names)}: {shown[value]}" for value, names in by_value.items())


def by_name(name: str) -> ModelVersion:
    """The entry a version name or alias (`2.6`, `qwen`, `qwen2`, ...) refers to."""
    for version in VERSIONS.values():
        if name.lower() in version.names:
            return version
    raise VersionError(f"unknown llm_type {name!r}; supported: {supported()}")


def llm_config_family(config) -> str | None:
    """LLM family of a MiniCPM-V config, read from its class hierarchy: the remote MiniCPMVConfig
    classes subclass the LLM's config (MiniCPMConfig, LlamaConfig, Qwen2Config, Qwen3Config) and
    all report model_type "minicpmv", so their bases are what differ."""
    for cls in type(config).__mro__:
        if getattr(cls, "model_type", "") in LLM_FAMILIES:
            return cls.model_type
    # a native model's config holds its LLM's config (4.6: qwen3_5_text)
    return getattr(getattr(config, "text_config", None), "model_type", None)


def version_from_config(config) -> ModelVersion:
    """The entry for a loaded config. Among the entries of its LLM family the config's `version`
    field decides; a config without one is the family's oldest checkpoint (4.x always carry it)."""
    native = [v for v in VERSIONS.values() if v.model_type != "minicpmv" and v.model_type == config.model_type]
    if native:  # a native transformers model: its model_type says which
        return native[0]
    family = llm_config_family(config)
    number = getattr(config, "version", None)
    candidates = [v for v in VERSIONS.values() if v.llm_config_family == family]
    if number is not None:
        candidates = [v for v in candidates if float(v.name) == float(number)]
    if not candidates:
        found = f"LLM family {family!r}" + (f", version {number}" if number is not None else "")
        raise VersionError(f"unsupported checkpoint ({type(config).__name__}: {found}); supported: {supported()}")
    return min(candidates, key=lambda v: float(v.name))


def check_tokenizer(version: ModelVersion, tokenizer):
    """The tokenizer must carry the chat and image tokens of the detected version."""
    ctx = version.chat.context(tokenizer)
    needed = [version.chat.end_of_turn_token(ctx), "<image>", "</image>"] + version.family.placeholder_tokens(
        tokenizer, version)
    missing = [t for t in needed if not _in_vocabulary(tokenizer, t)]
    if missing:
        raise VersionError(f"the config says MiniCPM-V {version.name} but the tokenizer lacks {', '.join(map(repr, missing))}: "
                           "is the tokenizer from another checkpoint?")


def _in_vocabulary(tokenizer, token: str | None) -> bool:
    if not token:
        return False
    token_id = tokenizer.convert_tokens_to_ids(token)
    return token_id is not None and (token_id != tokenizer.unk_token_id or token == tokenizer.unk_token)


def detect_version(config, tokenizer, llm_type: str | None = None) -> ModelVersion:
    """The entry for a loaded checkpoint, its tokenizer checked against it; an explicit llm_type
    (a version name or alias) must agree."""
    version = version_from_config(config)
    check_tokenizer(version, tokenizer)
    if llm_type is not None and by_name(llm_type) is not version:
        raise VersionError(
            f"--llm_type {llm_type!r} contradicts the checkpoint, which is MiniCPM-V {version.name} "
            f"({version.checkpoints}); training with the wrong chat template teaches the model garbage. "
            f"Drop --llm_type or set it to one of {', '.join(version.names)}.")
    return version


@dataclass(frozen=True)
class ImageSettings:
    """The checkpoint's image settings, read from wherever its version keeps them."""

    query_num: int
    patch_size: int
    max_slice_nums: int
    scale_resolution: int
    slice_mode: bool
    use_image_id: bool
    placeholder_scheme: str
    pixel_layout: str


def _field(obj, name, default=None):
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def set_max_slice_nums(config, version: ModelVersion, max_slice_nums: int):
    """Writes the slice limit a model was trained with where its own chat() reads it."""
    slicing = config if version.slice_config_field is None else _field(config, version.slice_config_field)
    if isinstance(slicing, dict):
        slicing["max_slice_nums"] = int(max_slice_nums)
    else:
        slicing.max_slice_nums = int(max_slice_nums)


def image_settings(config, version: ModelVersion, max_slice_nums: int | None = None) -> ImageSettings:
    """Slicing/placeholder settings of a loaded config; `max_slice_nums` overrides the config's."""
    slicing = config if version.slice_config_field is None else _field(config, version.slice_config_field)
    vision = _field(config, "vision_config")
    patch_size = _field(config, "patch_size") or _field(vision, "patch_size") or _field(slicing, "patch_size", 14)
    configured = _field(slicing, "max_slice_nums", 9)
    chosen = configured if max_slice_nums is None else max_slice_nums
    if int(chosen) < 1:
        raise ValueError(f"max_slice_nums must be >= 1, got {chosen}")
    use_image_id = _field(config, "use_image_id")
    return ImageSettings(
        query_num=int(_field(config, "query_num", version.default_query_num)),
        patch_size=int(patch_size),
        max_slice_nums=int(chosen),
        scale_resolution=int(_field(slicing, "scale_resolution", 448)),
        slice_mode=bool(_field(config, "slice_mode", True)),
        use_image_id=version.use_image_id_default if use_image_id is None else bool(use_image_id),
        placeholder_scheme=version.placeholder_scheme,
        pixel_layout=version.pixel_layout,
    )
