"""MiniCPM-V 2.6 and o-2.6: Qwen2 7B, ChatML with the template's default system turn, image ids."""
from ..chat_formats import ChatMLChat
from . import load_fixes
from ..video import VideoScheme
from .spec import ModelVersion

VERSION = ModelVersion(
    name="2.6",
    checkpoints="MiniCPM-V 2.6 / o-2.6 (openbmb/MiniCPM-V-2_6)",
    aliases=("qwen", "qwen2"),
    chat=ChatMLChat(template_system=True),
    llm_config_family="qwen2",
    encode_adds_special_tokens=True,  # the Qwen2 tokenizer adds nothing
    placeholder_scheme="per_slice",
    use_image_id_default=True,
    slice_config_field="slice_config",
    pixel_layout="patch_major",
    default_query_num=64,
    chat_images_in_messages=True,
    chat_takes_max_slice_nums=True,
    chat_takes_system_prompt=True,
    before_load=(load_fixes.list_builtin,),
    published_llm={"vocab_size": 151666, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                   "num_attention_heads": 28, "num_key_value_heads": 4},  # Qwen2-7B
    # the published video example: 1 frame a second, at most 64, image ids off, 2 slices a frame
    video=VideoScheme("stride", fps=1, max_frames=64, max_slice_nums=2),
)
