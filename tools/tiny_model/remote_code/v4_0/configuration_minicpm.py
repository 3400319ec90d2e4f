"""MiniCPM-V 4.0 config: LlamaConfig (MiniCPM4 run as Llama) plus vision_config and slice_config."""
from transformers import LlamaConfig, PretrainedConfig
from transformers.models.idefics2.configuration_idefics2 import Idefics2VisionConfig


class MiniCPMVSliceConfig(PretrainedConfig):
    model_type = "minicpmv"

    def __init__(self, patch_size=14, max_slice_nums=9, scale_resolution=448, **kwargs):
        super().__init__(**kwargs)
        self.patch_size, self.max_slice_nums, self.scale_resolution = patch_size, max_slice_nums, scale_resolution


class MiniCPMVConfig(LlamaConfig):
    model_type = "minicpmv"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(self, use_cache=True, query_num=64, image_size=448, drop_vision_last_layer=True,
                 batch_vision_input=True, slice_config=None, vision_config=None, use_image_id=True,
                 vision_batch_size=16, version=4.0, **kwargs):
        self.query_num, self.image_size, self.version = query_num, image_size, version
        self.drop_vision_last_layer, self.batch_vision_input = drop_vision_last_layer, batch_vision_input
        self.use_image_id, self.vision_batch_size = use_image_id, vision_batch_size
        if isinstance(slice_config, PretrainedConfig):
            self.slice_config = slice_config
        else:
            self.slice_config = MiniCPMVSliceConfig(**(slice_config or {"max_slice_nums": 1}))
        self.slice_mode = True
        if isinstance(vision_config, PretrainedConfig):
            self.vision_config = vision_config
        else:
            self.vision_config = Idefics2VisionConfig(**(vision_config or {}))
        self.patch_size = 14
        super().__init__(use_cache=use_cache, **kwargs)
