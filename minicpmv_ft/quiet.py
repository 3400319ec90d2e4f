"""Messages from libraries that a user would otherwise learn to ignore, switched off at the
start of each command (finetune.py, chat.py, predict.py, merge_lora.py)."""
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
