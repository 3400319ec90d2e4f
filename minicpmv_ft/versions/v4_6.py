"""MiniCPM-V 4.6: Qwen3.5 (hybrid linear attention) + SigLIP2 with window-attention mergers,
native transformers classes (>= 5.7, the transformers 5 environment: environments.py), ChatML with
Qwen3 thinking blocks. Its processor writes the image placeholders and pixels."""
from ..chat_formats import Qwen3ThinkingChat
from .family import NATIVE
from ..video import VideoScheme
from .spec import ModelVersion

VERSION = ModelVersion(
    name="4.6",
    checkpoints="MiniCPM-V 4.6 (openbmb/MiniCPM-V-4.6, -Thinking)",
    aliases=("qwen3_5", "minicpmv4_6"),
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
    zero3_leaf_modules=("model.merger",),  # its MLPs run once per view
    model_type="minicpmv4_6",
    auto_class="AutoModelForImageTextToText",
    llm_module="model.language_model",
    vision_module="model.vision_tower",
    resampler_module="model.merger",
    head_owner="",
    # attention projections of the full-attention layers, and the gated-delta-net projections
    # of the linear-attention ones (3 of 4 layers in Qwen3.5)
    lora_target_regex=(r"model\.language_model\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|o_proj)|"
                       r"linear_attn\.(in_proj_qkv|in_proj_z|out_proj))"),
    published_llm={},
    # its video processor samples (one frame a second, at most its max_num_frames) and slices
    # the frames (its max_slice_nums): minicpmv_ft/processor_video.py
    video=VideoScheme("processor", fps=None, max_frames=None, max_slice_nums=None),
    family=NATIVE,
)
