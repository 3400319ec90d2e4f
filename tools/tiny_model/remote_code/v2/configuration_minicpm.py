"""MiniCPM-V 2.0 config: the MiniCPM LLM's fields plus top-level vision/slicing fields."""
from .modeling_minicpm import MiniCPMConfig


class MiniCPMVConfig(MiniCPMConfig):
    model_type = "minicpmv"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(self, vision_encoder="vit_so400m_patch14_siglip_384.webli", vision_encoder_kwargs=None,
                 query_num=64, image_size=448, drop_vision_last_layer=True, slice_mode=True,
                 patch_size=14, max_slice_nums=9, scale_resolution=448, **kwargs):
        self.vision_encoder = vision_encoder
        # Tiny models only: timm VisionTransformer arguments used instead of the named encoder.
        self.vision_encoder_kwargs = vision_encoder_kwargs
        self.query_num, self.image_size = query_num, image_size
        self.drop_vision_last_layer, self.slice_mode = drop_vision_last_layer, slice_mode
        self.patch_size, self.max_slice_nums, self.scale_resolution = patch_size, max_slice_nums, scale_resolution
        super().__init__(**kwargs)
