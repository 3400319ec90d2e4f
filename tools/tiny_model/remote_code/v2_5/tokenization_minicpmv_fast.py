"""MiniCPM-Llama3-V 2.5 tokenizer: the fast Llama-3 tokenizer with MiniCPM-V's attributes."""
from transformers import PreTrainedTokenizerFast


class MiniCPMVTokenizerFast(PreTrainedTokenizerFast):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.eot_token = "<|eot_id|>"
        self.im_start, self.im_end = "<image>", "</image>"
        self.ref_start, self.ref_end = "<ref>", "</ref>"
        self.box_start, self.box_end = "<box>", "</box>"
        self.quad_start, self.quad_end = "<quad>", "</quad>"
        self.slice_start, self.slice_end = "<slice>", "</slice>"

    @property
    def eos_id(self):
        return self.eos_token_id

    @property
    def bos_id(self):
        return self.bos_token_id

    @property
    def unk_id(self):
        return self.unk_token_id

    @property
    def eot_id(self):
        return self.convert_tokens_to_ids(self.eot_token)

    @property
    def im_start_id(self):
        return self.convert_tokens_to_ids(self.im_start)

    @property
    def im_end_id(self):
        return self.convert_tokens_to_ids(self.im_end)
