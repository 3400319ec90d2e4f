"""Attributes and id properties the MiniCPM-V fast tokenizers (2.5+) add to their base class."""


class MiniCPMVTokenizerAttributes:
    """2.5 and later: markup token strings and the ids every version's processor reads."""

    def _set_minicpmv_attributes(self):
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
    def im_start_id(self):
        return self.convert_tokens_to_ids(self.im_start)

    @property
    def im_end_id(self):
        return self.convert_tokens_to_ids(self.im_end)


class ImageIdTokenizerAttributes(MiniCPMVTokenizerAttributes):
    """2.6 and later add image ids and the ids of the slice markers."""

    def _set_minicpmv_attributes(self):
        super()._set_minicpmv_attributes()
        self.im_id_start, self.im_id_end = "<image_id>", "</image_id>"

    @property
    def slice_start_id(self):
        return self.convert_tokens_to_ids(self.slice_start)

    @property
    def slice_end_id(self):
        return self.convert_tokens_to_ids(self.slice_end)

    @property
    def im_id_start_id(self):
        return self.convert_tokens_to_ids(self.im_id_start)

    @property
    def im_id_end_id(self):
        return self.convert_tokens_to_ids(self.im_id_end)

    @property
    def newline_id(self):
        return self.convert_tokens_to_ids("\n")
