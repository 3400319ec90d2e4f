"""Config fields the NaViT-based MiniCPM-V versions (2.5+) share: slice_config and vision_config."""
from transformers import PretrainedConfig
from transformers.models.idefics2.configuration_idefics2 import Idefics2VisionConfig
from transformers.utils import logging

logger = logging.get_logger(__name__)


class MiniCPMVSliceConfig(PretrainedConfig):
    model_type = "minicpmv"

    def __init__(self, patch_size=14, max_slice_nums=9, scale_resolution=448, **kwargs):
        super().__init__(**kwargs)
        self.patch_size, self.max_slice_nums, self.scale_resolution = patch_size, max_slice_nums, scale_resolution


def set_vision_fields(config, query_num, image_size, drop_vision_last_layer, batch_vision_input, slice_config,
                      vision_config):
    config.query_num, config.image_size = query_num, image_size
    config.drop_vision_last_layer, config.batch_vision_input = drop_vision_last_layer, batch_vision_input
    if isinstance(slice_config, PretrainedConfig):
        config.slice_config = slice_config
    else:
        config.slice_config = MiniCPMVSliceConfig(**(slice_config or {"max_slice_nums": 1}))
    config.slice_mode = True
    if isinstance(vision_config, PretrainedConfig):
        config.vision_config = vision_config
    else:
        if vision_config is None:  # as the published configs log it, at every default config built
            logger.info("vision_config is None, using default vision config")
        config.vision_config = Idefics2VisionConfig(**(vision_config or {}))
    config.patch_size = 14
