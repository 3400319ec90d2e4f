"""MiniCPM-V 2.0 tokenizer: a slow sentencepiece Llama tokenizer with MiniCPM-V's attributes."""
from transformers import LlamaTokenizer


class MiniCPMVTokenizer(LlamaTokenizer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.im_start, self.im_end = "<image>", "</image>"
        self.ref_start, self.ref_end = "<ref>", "</ref>"
        self.box_start, self.box_end = "<box>", "</box>"
        self.quad_start, self.quad_end = "<quad>", "</quad>"
        self.point_start, self.point_end = "<point>", "</point>"
        self.slice_start, self.slice_end = "<slice>", "</slice>"

    @property
    def eos_id(self):
        return self.sp_model.eos_id()

    @property
    def bos_id(self):
        return self.sp_model.bos_id()

    @property
    def unk_id(self):
        return self.sp_model.unk_id()

    @property
    def im_start_id(self):
        return self._convert_token_to_id(self.im_start)

    @property
    def im_end_id(self):
        return self._convert_token_to_id(self.im_end)
