"""MiniCPM-V 4.5 tokenizer: the fast Qwen3 (Qwen2-class) tokenizer with MiniCPM-V's attributes;
its `<unk>` is a remapped id of the base vocabulary, not a token of its own."""
from transformers import Qwen2TokenizerFast

from .tokenizer_attributes import ImageIdTokenizerAttributes


class MiniCPMVTokenizerFast(ImageIdTokenizerAttributes, Qwen2TokenizerFast):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._set_minicpmv_attributes()
        self.think_start, self.think_end = "<think>", "</think>"
