"""MiniCPM-V 2.6 config: the LLM's config class plus vision_config and slice_config."""
from transformers import Qwen2Config

from .configuration_fields import set_vision_fields


class MiniCPMVConfig(Qwen2Config):
    model_type = "minicpmv"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(self, use_cache=True, query_num=64, image_size=448, drop_vision_last_layer=True,
                 batch_vision_input=True, slice_config=None, vision_config=None, use_image_id=True,
                 vision_batch_size=16, **kwargs):
        set_vision_fields(self, query_num, image_size, drop_vision_last_layer, batch_vision_input, slice_config,
                          vision_config)
        self.use_image_id, self.vision_batch_size = use_image_id, vision_batch_size
        super().__init__(use_cache=use_cache, **kwargs)
