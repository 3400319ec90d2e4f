"""MiniCPM-V 2.5 config: the LLM's config class plus vision_config and slice_config."""
from transformers import LlamaConfig

from .configuration_fields import set_vision_fields


class MiniCPMVConfig(LlamaConfig):
    model_type = "minicpmv"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(self, use_cache=True, query_num=96, image_size=448, drop_vision_last_layer=True,
                 batch_vision_input=True, slice_config=None, vision_config=None, **kwargs):
        set_vision_fields(self, query_num, image_size, drop_vision_last_layer, batch_vision_input, slice_config,
                          vision_config)
        super().__init__(use_cache=use_cache, **kwargs)
