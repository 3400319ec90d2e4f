"""MiniCPM-V 4.0: MiniCPM4-3B run as LlamaForCausalLM, SigLIP2 NaViT, plain ChatML, <s> first."""
from ..chat_formats import ChatMLChat
from . import load_fixes
from ..video import VideoScheme
from .spec import ModelVersion

VERSION = ModelVersion(
    name="4.0",
    checkpoints="MiniCPM-V 4.0 (openbmb/MiniCPM-V-4)",
    aliases=("llama", "minicpm4", "minicpmv4"),
    chat=ChatMLChat(template_system=False),
    llm_config_family="llama",
    encode_adds_special_tokens=True,  # its processor's encode() puts <s> first
    placeholder_scheme="per_slice",
    use_image_id_default=True,
    slice_config_field="slice_config",
    pixel_layout="patch_major",
    default_query_num=64,
    chat_images_in_messages=True,
    chat_takes_max_slice_nums=True,
    chat_takes_system_prompt=True,
    before_load=(load_fixes.list_builtin,),
    published_llm={"vocab_size": 73448, "hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 2},  # MiniCPM4-3B
    video=VideoScheme("stride", fps=1, max_frames=64, max_slice_nums=2),  # as 2.6's video example
)
