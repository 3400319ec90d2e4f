"""MiniCPM-V 4.7: 4.6's vision path (SigLIP2, window-attention merger) with a Qwen3.5 dense
(openbmb/MiniCPM-V-4.7-1B) or Qwen3.5-MoE (openbmb/MiniCPM-V-4.7-35B-A3B) text model, native
transformers classes (>= 5.18, the transformers 5 environment: environments.py), ChatML with
Qwen3 thinking blocks switched by `enable_thinking` (one checkpoint). Its processor writes the
placeholders, pixels and modality ids; the model lays out canvas M-RoPE position ids itself."""
from ..chat_formats import Qwen3ThinkingChat
from .family import NATIVE
from .spec import ModelVersion

VERSION = ModelVersion(
    name="4.7",
    checkpoints="MiniCPM-V 4.7 (openbmb/MiniCPM-V-4.7-1B, -35B-A3B)",
    aliases=("minicpmv4_7",),
    chat=Qwen3ThinkingChat(),
    llm_config_family="qwen3_5_text",
    encode_adds_special_tokens=True,  # its processor calls the tokenizer plainly; Qwen adds nothing
    placeholder_scheme="processor",
    use_image_id_default=True,
    slice_config_field=None,
    pixel_layout="patch_major",
    default_query_num=0,  # tokens per view follow the view's size (its processor counts them)
    chat_images_in_messages=True,
    chat_takes_max_slice_nums=True,
    chat_takes_system_prompt=True,
    vision_skipped_without_images=True,
    zero3_leaf_modules=("model.merger",),  # its MLPs run once per view, as 4.6's
    model_type="minicpmv4_7",
    auto_class="AutoModelForImageTextToText",
    llm_module="model.language_model",
    vision_module="model.vision_tower",
    resampler_module="model.merger",
    head_owner="",
    # attention projections of the full-attention layers and the gated-delta-net projections of
    # the linear-attention ones; the MoE's experts only when --lora_target_modules names them
    lora_target_regex=(r"model\.language_model\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|o_proj)|"
                       r"linear_attn\.(in_proj_qkv|in_proj_z|out_proj))"),
    positions_from_model=True,
    published_llm={},
    family=NATIVE,
)
