"""What one checkpoint generation is, as the rest of the code sees it: a `ModelVersion`.

Each generation fills one of these in its own module next to this one (docs/adding-a-version.md);
nothing outside this package compares version names.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..chat_formats import ChatFormat
from ..video import VideoScheme
from .family import REMOTE_CODE, Family

# The values of the enum-like fields (a typo fails when the entry is made, not later in another
# branch); placeholder_scheme's and model_type's are the entry's family's to check.
PIXEL_LAYOUTS = ("chw", "patch_major")
PACKED_ATTENTIONS = ("position_ids", "mask_4d")
AUTO_CLASSES = ("AutoModel", "AutoModelForImageTextToText")


@dataclass(frozen=True)
class ModelVersion:
    name: str  # "2.6"
    checkpoints: str  # human-readable: which published checkpoints this entry covers
    # Older names for the same format (`--llm_type`); each must agree with the detected version.
    aliases: tuple[str, ...]
    chat: ChatFormat
    # The LLM family the checkpoint's config class derives from ("minicpm", "llama", "qwen2",
    # "qwen3"); with the config's `version` field (when present) it identifies the checkpoint.
    llm_config_family: str
    # The checkpoint's processor encodes the rendered prompt with the tokenizer's special tokens
    # (2.0 and 4.0 tokenizers add <s>); otherwise the template text carries them itself.
    encode_adds_special_tokens: bool
    # Placeholder scheme: "wrapped" (2.0/2.5: <slice> around rows of <image> cells),
    # "per_slice" (2.6-4.5: each slice its own <slice>unk*q</slice>, optional image id) or
    # "processor" (native: the checkpoint's own processor writes placeholders and pixels;
    # minicpmv_ft/processor_encoding.py).
    placeholder_scheme: str
    use_image_id_default: bool
    # Where the slicing settings live in config.json: top level (None, 2.0) or a sub-config
    # (4.6: none; its processor holds them).
    slice_config_field: str | None
    # Pixel layout handed to the vision tower: "chw" [3, H, W] (2.0, timm ViT) or
    # "patch_major" [3, patch, H*W/patch] (NaViT).
    pixel_layout: str
    default_query_num: int
    # 4.5's 3-D resampler reads data["temporal_ids"] (one group per view; [-1] for a still image).
    temporal_ids: bool = False
    # How --packing keeps samples apart in the LLM (minicpmv_ft/packing.py): "position_ids"
    # (transformers' packed-sequence support in its Llama/Qwen classes: no attention_mask,
    # position ids restarting per sample) or "mask_4d" (a remote LLM that takes a prepared
    # block-causal 4-D attention_mask instead).
    packed_attention: str = "position_ids"
    # chat() signatures: 2.0 is chat(image, msgs, context, tokenizer) -> (answer, context, config);
    # later ones chat(image, msgs, tokenizer) -> answer; 2.6+ take images inside message content.
    chat_takes_context: bool = False
    chat_images_in_messages: bool = False
    # 2.6+ slice with their processor's settings (preprocessor_config.json, which their chat()
    # asserts equal to config.json's) or a max_slice_nums argument of the call; 2.0 and 2.5
    # read config.json and take no such argument.
    chat_takes_max_slice_nums: bool = False
    # A system turn reaches 2.6+ chat() as its system_prompt argument (a native model's template
    # takes it as a message); 2.0 and 2.5 chat() assert that every role is user or assistant.
    chat_takes_system_prompt: bool = False
    # A native model (4.6) runs its vision tower only for a batch with images: a process whose
    # batch is text-only would then give the tower no gradient (ZeRO/DDP reduce gradients that one
    # process lacks). The Trainer runs the tower on one tiny blank view for such a batch, adding
    # 0 x its features to the LLM's input embeddings (MiniCPMVTrainer._blank_view_in_forward).
    vision_skipped_without_images: bool = False
    # 2.0 calls its vision tower once per image; under ZeRO-3 each call is a collective weight
    # gather, so processes holding different image counts deadlock.
    vision_call_per_image: bool = False
    # Modules (dotted paths) called once per step that call their own children a data-dependent
    # number of times (4.6's merger runs its MLPs once per view). Under ZeRO-3 they become
    # DeepSpeed leaf modules (minicpmv_ft/zero3_leaves.py): weights gathered once on entry, so
    # processes holding different view counts make the same collectives.
    zero3_leaf_modules: tuple = ()
    # config.json's model_type: the remote-code checkpoints all say "minicpmv" (their LLM family
    # and `version` field tell them apart); a native one has its own.
    model_type: str = "minicpmv"
    # The transformers Auto class that loads the checkpoint.
    auto_class: str = "AutoModel"
    # Module paths (dotted attributes of the loaded model); the LM head is
    # get_output_embeddings() of `head_owner` ("": the model itself).
    llm_module: str = "llm"
    vision_module: str = "vpm"
    resampler_module: str = "resampler"
    head_owner: str = "llm"
    # Regex of LLM module names that LoRA adapts by default (q, k, v, o projections).
    lora_target_regex: str = r"llm\..*layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj|o_proj)"
    # The model lays out its position ids itself from the batch's modality ids (4.7's canvas
    # M-RoPE: time, height and width per token): the batch carries `mm_token_type_ids` and no
    # position ids of ours.
    positions_from_model: bool = False
    # How the checkpoint's inference samples a video (minicpmv_ft/video.py); None: no video.
    video: VideoScheme | None = None
    # get_vllm_embedding splits the resampler's output between the samples of a batch by their
    # frame counts while the 3-D resampler returns one output per group of frames: with grouped
    # videos a later sample gets another's features, or none. Such batches go as one row.
    vision_split_by_frames: bool = False
    # The LLM sizes of the published checkpoint (its config.json), which tools/bench_gpu.py
    # builds with random weights; empty: not benchmarked.
    published_llm: dict = field(default_factory=dict)
    # Load fixes: called with no argument before from_pretrained, and with (model, dtype) after it.
    before_load: tuple[Callable[[], None], ...] = ()
    after_load: tuple[Callable, ...] = ()
    # Remote code or native (family.py): how samples are encoded and batched, the model fed,
    # loaded for inference and asked.
    family: Family = REMOTE_CODE

    def __post_init__(self):
        allowed = {"pixel_layout": PIXEL_LAYOUTS, "packed_attention": PACKED_ATTENTIONS, "auto_class": AUTO_CLASSES}
        for name, values in allowed.items():
            if getattr(self, name) not in values:
                raise ValueError(f"MiniCPM-V {self.name}: {name} {getattr(self, name)!r} is none of {values}")
        self.family.check_entry(self)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name,) + self.aliases



def submodule(model, path: str):
    """model.a.b for path "a.b" ("" : the model); through a PEFT wrapper too (from its base
    model: the wrapper's own `model` attribute would shadow a native model's `model`)."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    for name in filter(None, path.split(".")):
        model = getattr(model, name)
    return model
