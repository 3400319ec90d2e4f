"""MiniCPM-Llama3-V 2.5 tokenizer: the fast Llama-3 tokenizer with MiniCPM-V's attributes."""
from transformers import PreTrainedTokenizerFast

from .tokenizer_attributes import MiniCPMVTokenizerAttributes


class MiniCPMVTokenizerFast(MiniCPMVTokenizerAttributes, PreTrainedTokenizerFast):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._set_minicpmv_attributes()
        self.eot_token = "<|eot_id|>"

    @property
    def eot_id(self):
        return self.convert_tokens_to_ids(self.eot_token)
