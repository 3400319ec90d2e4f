"""The processor 2.5+ checkpoints ship (preprocessor_config.json's auto_map names it): the
tokenizer plus MiniCPMVImageProcessor. The real 2.6+ chat() loads it with
AutoProcessor.from_pretrained(config._name_or_path) when none is passed, so a LoRA adapter's
chat() meets its BASE folder's preprocessor_config.json."""
from transformers import ProcessorMixin


class MiniCPMVProcessor(ProcessorMixin):
    attributes = ["image_processor", "tokenizer"]
    image_processor_class = "AutoImageProcessor"
    tokenizer_class = "AutoTokenizer"

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer, **kwargs)
