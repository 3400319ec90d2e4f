"""MiniCPM-V 2.6 tokenizer: the fast Qwen2 tokenizer with MiniCPM-V's attributes."""
from transformers import Qwen2TokenizerFast

from .tokenizer_attributes import ImageIdTokenizerAttributes


class MiniCPMVTokenizerFast(ImageIdTokenizerAttributes, Qwen2TokenizerFast):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._set_minicpmv_attributes()
