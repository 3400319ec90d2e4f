"""Messages from libraries that a user would otherwise learn to ignore, switched off at the
start of each command (finetune.py, chat.py, predict.py, merge_lora.py)."""
import logging
import os

import torch


def quiet_third_party():
    # accelerate imports DeepSpeed when it is installed (unwrapping a model to save it), and
    # DeepSpeed then warns "Setting accelerator to CPU" on every machine without a GPU.
    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"
    # The data check's and the DataLoader's workers are forked; a tokenizer that used its own
    # threads before a fork prints a warning in every child and turns them off anyway.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not torch.cuda.is_available():
        # transformers 5 (4.6's Qwen3.5 layers) advises installing causal-conv1d and
        # flash-linear-attention for speed: CUDA kernels, so advice nobody can take on a CPU.
        logging.getLogger("transformers.integrations.hub_kernels").addFilter(_NoCudaKernelAdvice())


class _NoCudaKernelAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "falling back to its reference PyTorch implementation" not in record.getMessage()
