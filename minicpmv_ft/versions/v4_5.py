"""MiniCPM-V 4.5: Qwen3-8B, SigLIP2 NaViT + 3-D resampler, ChatML with Qwen3 thinking blocks."""
from ..chat_formats import Qwen3ThinkingChat
from . import load_fixes
from ..video import VideoScheme
from .spec import ModelVersion

VERSION = ModelVersion(
    name="4.5",
    checkpoints="MiniCPM-V 4.5 (openbmb/MiniCPM-V-4_5)",
    aliases=("qwen3", "minicpmv4_5"),
    chat=Qwen3ThinkingChat(),
    llm_config_family="qwen3",
    encode_adds_special_tokens=True,  # the Qwen3 tokenizer adds nothing
    placeholder_scheme="per_slice",
    use_image_id_default=True,
    slice_config_field="slice_config",
    pixel_layout="patch_major",
    default_query_num=64,
    temporal_ids=True,
    chat_images_in_messages=True,
    chat_takes_max_slice_nums=True,
    chat_takes_system_prompt=True,
    before_load=(load_fixes.list_builtin,),
    published_llm={"vocab_size": 151748, "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
                   "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128},  # Qwen3-8B
    # the published video example: 3 frames a second, 180 at most before packing up to 3 frames
    # into one group (its MAX_NUM_PACKING; the model takes up to 6), unsliced frames
    video=VideoScheme("grouped", fps=3, max_frames=180, max_slice_nums=1, max_group=3),
    vision_split_by_frames=True,
)
