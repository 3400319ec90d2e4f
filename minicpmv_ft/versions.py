"""Every per-version fact of the MiniCPM-V family, in one table.

Other modules read fields of a `ModelVersion`; none of them compares version names.
Adding a version means adding one entry here (and one test case). The facts come from
the real checkpoints' published files, summarised in ../shared/minicpmv-interface.md.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChatFormat:
    """How a conversation is written out as text, and which tokens are trained.

    `{bos}` / `{eos}` in a field stand for the tokenizer's own bos/eos token strings, and
    `{role}` for the turn's role, so nothing here hard-codes a token id.
    """

    begin: str  # text before the first turn (untrained)
    turn_prefix: dict[str, str]  # role -> text opening a turn (untrained)
    end_of_turn: str  # token closing an assistant turn (trained)
    after_turn: str  # untrained text after end_of_turn
    end_of_turn_in_text: str  # "every" turn, or only the "final" one (2.0 has no separator)
    strip_content: bool  # the template trims message content
    system_allowed: bool
    default_system_from_template: bool  # template adds a system turn when there is none


@dataclass(frozen=True)
class ModelVersion:
    llm_type: str
    checkpoints: str
    chat: ChatFormat
    # Token whose presence in the vocabulary identifies the chat format.
    signature_token: str
    # LLM family the checkpoint's config class derives from (used to cross-check llm_type).
    llm_config_family: str
    # Placeholder scheme: "wrapped" (2.0/2.5: <slice> around rows of <image> cells) or
    # "per_slice" (2.6: each slice its own <slice>unk*q</slice>, optional image id).
    placeholder_scheme: str
    use_image_id_default: bool
    # Where the slicing settings live in config.json: top level (2.0) or a sub-config.
    slice_config_field: str | None
    # Pixel layout handed to the vision tower: "chw" [3, H, W] (2.0, timm ViT) or
    # "patch_major" [3, patch, H*W/patch] (2.5/2.6, NaViT).
    pixel_layout: str
    default_query_num: int
    # 2.0's chat() is chat(image, msgs, context, tokenizer) -> (answer, context, config);
    # later versions take chat(image, msgs, tokenizer) -> answer.
    chat_takes_context: bool = False
    # 2.6 takes images inside message content lists; 2.0/2.5 take one image beside the messages.
    chat_images_in_messages: bool = False
    # 2.0's get_vllm_embedding calls the vision tower once per image (and, in training, once per
    # text-only sample); 2.5/2.6 (batch_vision_input) call it once per batch. Under ZeRO-3 each
    # call is a collective weight gather, so ranks holding different image counts deadlock.
    vision_call_per_image: bool = False
    # Regex of LLM module names that LoRA adapts by default (q, k, v, o projections).
    lora_target_regex: str = r"llm\..*layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|o_proj)"


MINICPM_CHAT = ChatFormat(
    begin="",
    turn_prefix={"user": "<用户>", "assistant": "<AI>"},
    end_of_turn="{eos}",
    after_turn="",
    end_of_turn_in_text="final",
    strip_content=False,
    system_allowed=False,
    default_system_from_template=False,
)

LLAMA3_CHAT = ChatFormat(
    begin="{bos}",
    turn_prefix={
        role: "<|start_header_id|>" + role + "<|end_header_id|>\n\n"
        for role in ("system", "user", "assistant")
    },
    end_of_turn="<|eot_id|>",
    after_turn="",
    end_of_turn_in_text="every",
    strip_content=True,
    system_allowed=True,
    default_system_from_template=False,
)

CHATML_CHAT = ChatFormat(
    begin="",
    turn_prefix={role: "<|im_start|>" + role + "\n" for role in ("system", "user", "assistant")},
    end_of_turn="<|im_end|>",
    after_turn="\n",
    end_of_turn_in_text="every",
    strip_content=False,
    system_allowed=True,
    default_system_from_template=True,
)

VERSIONS: dict[str, ModelVersion] = {
    "minicpm": ModelVersion(
        llm_type="minicpm",
        checkpoints="MiniCPM-V 2.0 (openbmb/MiniCPM-V-2)",
        chat=MINICPM_CHAT,
        signature_token="<AI>",
        llm_config_family="minicpm",
        placeholder_scheme="wrapped",
        use_image_id_default=False,
        slice_config_field=None,
        pixel_layout="chw",
        default_query_num=64,
        chat_takes_context=True,
        vision_call_per_image=True,
    ),
    "llama3": ModelVersion(
        llm_type="llama3",
        checkpoints="MiniCPM-Llama3-V 2.5 (openbmb/MiniCPM-Llama3-V-2_5)",
        chat=LLAMA3_CHAT,
        signature_token="<|eot_id|>",
        llm_config_family="llama",
        placeholder_scheme="wrapped",
        use_image_id_default=False,
        slice_config_field="slice_config",
        pixel_layout="patch_major",
        default_query_num=96,
    ),
    "qwen": ModelVersion(
        llm_type="qwen",
        checkpoints="MiniCPM-V 2.6 / o-2.6 (openbmb/MiniCPM-V-2_6)",
        chat=CHATML_CHAT,
        signature_token="<|im_end|>",
        llm_config_family="qwen2",
        placeholder_scheme="per_slice",
        use_image_id_default=False,
        slice_config_field="slice_config",
        pixel_layout="patch_major",
        default_query_num=64,
        chat_images_in_messages=True,
    ),
}

# Names older scripts use for the same formats.
ALIASES = {"qwen2": "qwen", "llama-3": "llama3", "minicpmv2": "minicpm"}

# Order matters: a vocabulary may hold several signature tokens (MiniCPM 4 tokenizers have
# both <AI> and <|im_end|>); the first match is the format the checkpoint chats in.
DETECTION_ORDER = ("llama3", "qwen", "minicpm")


class VersionError(ValueError):
    """The llm_type asked for is unknown or contradicts the checkpoint."""


def normalise_llm_type(llm_type: str) -> str:
    name = ALIASES.get(llm_type.lower(), llm_type.lower())
    if name not in VERSIONS:
        raise VersionError(
            f"unknown llm_type {llm_type!r}; supported: {', '.join(VERSIONS)} "
            f"(aliases: {', '.join(ALIASES)})"
        )
    return name


def llm_config_family(config) -> str | None:
    """LLM family of a loaded MiniCPM-V config, read from its class hierarchy.

    The remote MiniCPMVConfig classes subclass the LLM's config (LlamaConfig, Qwen2Config,
    MiniCPMConfig); all of them report model_type "minicpmv", so the bases are what differ.
    """
    for cls in type(config).__mro__:
        model_type = getattr(cls, "model_type", "")
        if model_type in ("llama", "qwen2", "minicpm"):
            return model_type
    if hasattr(config, "scale_emb") and hasattr(config, "vision_encoder"):
        return "minicpm"
    return None


def detect_version(config, tokenizer, llm_type: str | None = None) -> ModelVersion:
    """The table entry for a loaded checkpoint; an explicit llm_type must agree with it."""
    vocab = tokenizer.get_vocab()
    detected = next((n for n in DETECTION_ORDER if VERSIONS[n].signature_token in vocab), None)
    family = llm_config_family(config)
    if detected is not None and family is not None and VERSIONS[detected].llm_config_family != family:
        raise VersionError(
            f"the tokenizer looks like llm_type {detected!r} but the config's LLM family is "
            f"{family!r}; is the tokenizer from another checkpoint?"
        )
    if llm_type is None:
        if detected is None:
            raise VersionError(
                "cannot tell the chat format of this checkpoint: its tokenizer has none of "
                + ", ".join(repr(VERSIONS[n].signature_token) for n in DETECTION_ORDER)
                + f"; pass --llm_type (one of {', '.join(VERSIONS)})"
            )
        return VERSIONS[detected]
    asked = normalise_llm_type(llm_type)
    if detected is not None and asked != detected:
        raise VersionError(
            f"--llm_type {llm_type!r} contradicts the checkpoint, which is {detected!r} "
            f"({VERSIONS[detected].checkpoints}); training with the wrong chat template "
            f"teaches the model garbage. Drop --llm_type or set it to {detected!r}."
        )
    return VERSIONS[asked]


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
