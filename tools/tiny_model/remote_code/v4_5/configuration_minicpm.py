"""MiniCPM-V 4.5 config: Qwen3Config plus vision_config, slice_config and the 3-D resampler switch."""
from transformers import Qwen3Config

from .configuration_fields import set_vision_fields


class MiniCPMVConfig(Qwen3Config):
    model_type = "minicpmv"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(self, use_cache=True, query_num=64, image_size=448, drop_vision_last_layer=True,
                 batch_vision_input=True, slice_config=None, vision_config=None, use_image_id=True,
                 vision_batch_size=16, version=4.5, batch_3d_resampler=True, **kwargs):
        set_vision_fields(self, query_num, image_size, drop_vision_last_layer, batch_vision_input, slice_config,
                          vision_config)
        self.use_image_id, self.vision_batch_size, self.version = use_image_id, vision_batch_size, version
        self.batch_3d_resampler = batch_3d_resampler
        super().__init__(use_cache=use_cache, **kwargs)
