"""MiniCPM-V 2.0: MiniCPM 2.4B LLM, timm SigLIP ViT, `<用户>`/`<AI>` turns."""
from ..chat_formats import MiniCPMChat
from . import load_fixes
from .spec import ModelVersion

VERSION = ModelVersion(
    name="2.0",
    checkpoints="MiniCPM-V 2.0 (openbmb/MiniCPM-V-2)",
    aliases=("minicpm", "minicpmv2"),
    chat=MiniCPMChat(),
    llm_config_family="minicpm",
    encode_adds_special_tokens=True,  # chat() encodes <s> + the whole prompt in one call
    placeholder_scheme="wrapped",
    use_image_id_default=False,
    slice_config_field=None,
    pixel_layout="chw",
    default_query_num=64,
    chat_takes_context=True,
    vision_call_per_image=True,
    packed_attention="mask_4d",  # its remote MiniCPM LLM ignores packed position ids
    after_load=(load_fixes.cast_to_dtype, load_fixes.input_embeddings_from_llm, load_fixes.generate_without_cache),
)
