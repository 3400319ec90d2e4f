"""MiniCPM-Llama3-V 2.5: Llama-3 8B, NaViT SigLIP, Llama-3 chat headers, 96 queries."""
from ..chat_formats import Llama3Chat
from . import load_fixes
from .spec import ModelVersion

VERSION = ModelVersion(
    name="2.5",
    checkpoints="MiniCPM-Llama3-V 2.5 (openbmb/MiniCPM-Llama3-V-2_5)",
    aliases=("llama3", "llama-3"),
    chat=Llama3Chat(),
    llm_config_family="llama",
    encode_adds_special_tokens=False,  # the template writes <|begin_of_text|> itself
    placeholder_scheme="wrapped",
    use_image_id_default=False,
    slice_config_field="slice_config",
    pixel_layout="patch_major",
    default_query_num=96,
    before_load=(load_fixes.list_builtin,),
    published_llm={"vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 8},  # Llama-3 8B
)
