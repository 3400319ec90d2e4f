"""MiniCPM-V 4.0 tokenizer: a sentencepiece-style fast Llama tokenizer (`add_bos_token`: encode()
puts <s> first; a normaliser puts `▁` before every run of text) with MiniCPM-V's attributes."""
from transformers import LlamaTokenizerFast

from .tokenizer_attributes import ImageIdTokenizerAttributes


class MiniCPMVTokenizerFast(ImageIdTokenizerAttributes, LlamaTokenizerFast):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._set_minicpmv_attributes()
