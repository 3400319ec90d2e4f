"""Messages from libraries that a user would otherwise learn to ignore, switched off at the
start of each command (finetune.py, chat.py, predict.py, merge_lora.py, check_data.py)."""
import logging
import os
import warnings

import torch

# (logger, a fragment of the message); why each is noise for our users is said above it
FALSE_ALARMS = (
    # The MiniCPM-V checkpoints ship only a slow image processor (remote code): there is no fast
    # one to switch to.
    ("transformers.models.auto.image_processing_auto", "Using a slow image processor"),
    ("transformers.processing_utils", "Using a slow image processor"),
    # transformers 4.57.3+ suspects every local tokenizer folder with over 100k tokens saved by a
    # 4.57.3+ that is not of a Mistral model type (2.5, 2.6, 4.5 checkpoints saved by other tools;
    # ours keep their source's version: checkpoints.keep_transformers_version): their ids are unchanged.
    ("transformers.tokenization_utils_base", "with an incorrect regex pattern"),
    # 2.0's MiniCPM LLM defines prepare_inputs_for_generation without GenerationMixin; the 2.0
    # load fix gives it generate() (minicpmv_ft/versions/load_fixes.py).
    ("transformers.modeling_utils", "has generative capabilities, as `prepare_inputs_for_generation`"),
    # A checkpoint whose folder has no tokenizer.json (4.5 as some tools save it) gets its fast
    # tokenizer (MiniCPMVTokenizerFast, its tokenizer_config's) built from the slow class that
    # class declares (Qwen2Tokenizer); transformers compares the two names and warns, up to 3
    # times a command. The tokenizer is the checkpoint's own.
    ("transformers.tokenization_utils_base", "is 'MiniCPMVTokenizerFast'. \nThe class this function is called from is "
                                             "'Qwen2Tokenizer'"),
)


def quiet_third_party():
    # accelerate imports DeepSpeed when it is installed (unwrapping a model to save it), and
    # DeepSpeed then warns "Setting accelerator to CPU" on every machine without a GPU.
    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"
    # The data check's and the DataLoader's workers are forked; a tokenizer that used its own
    # threads before a fork prints a warning in every child and turns them off anyway.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name, fragment in FALSE_ALARMS:
        _drop(name, fragment)
    # transformers 5 draws a progress bar over the weights of every model it loads (the native versions), also
    # into log files; our commands log what they load instead.
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    # The checkpoints' remote code logs at INFO what it does on every config it builds (2.5+:
    # "vision_config is None, using default vision config", each time transformers builds a
    # default config to compare with, 5-27 times a run); our commands log at INFO.
    logging.getLogger("transformers_modules").setLevel(logging.WARNING)
    # The published image_processing_minicpmv.py registers its class by the argument transformers
    # 4.57 deprecates: a FutureWarning each time the module loads, about code in the checkpoint.
    warnings.filterwarnings("ignore", message="The image_processor_class argument is deprecated",
                            category=FutureWarning)
    # DeepSpeed's ZeRO gathers call this torch function, deprecated in torch 2.14; nothing a user can change.
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.all_gather_into_tensor` is deprecated",
                            category=FutureWarning)
    if not torch.cuda.is_available():
        # transformers 5 (the native versions' Qwen3.5 layers) advises installing causal-conv1d and
        # flash-linear-attention for speed: CUDA kernels, so advice nobody can take on a CPU.
        _drop("transformers.integrations.hub_kernels", "falling back to its reference PyTorch implementation")


def _drop(logger_name: str, fragment: str):
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, _Without) and f.fragment == fragment for f in logger.filters):
        logger.addFilter(_Without(fragment))


class _Without(logging.Filter):
    """Drops the records whose message holds `fragment`."""

    def __init__(self, fragment: str):
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()
