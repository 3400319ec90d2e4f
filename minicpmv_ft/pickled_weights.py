"""Weights in pickle files (pytorch_model.bin, adapter_model.bin) that hold more than tensors.

transformers and PEFT read such files with torch.load(weights_only=True), which refuses a
pickle that names other code (good: nothing runs), but the UnpicklingError they pass up is a
traceback suggesting weights_only=False, the one thing not to do. The files a folder's loading
will read are tried here first the same way (mmap: the tensors are mapped, not read), and a
refused one is named in one line with what to do instead.
"""
from __future__ import annotations

import os
import pickle

import torch

from .deepspeed_resume import unpickling_problem

PICKLED_WEIGHTS = (".bin", ".pt", ".pth")


def check_pickled_weights(folder: str | None) -> None:
    """ValueError naming the first pickled weights file of `folder` that holds more than tensors;
    nothing to check where the folder has safetensors (which loading prefers) or no such file."""
    if not folder or not os.path.isdir(folder):
        return
    names = sorted(os.listdir(folder))
    if any(name.endswith(".safetensors") for name in names):
        return
    for name in names:
        if not name.endswith(PICKLED_WEIGHTS) or name == "training_args.bin":
            continue
        path = os.path.join(folder, name)
        try:
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError as error:
            raise ValueError(f"{path} holds more than tensors ({unpickling_problem(error)}): loading it in full "
                             "would run any code it contains, so it is not loaded. Use a checkpoint whose weights "
                             "are safetensors, or re-save these where they came from with "
                             "save_pretrained(..., safe_serialization=True)") from None
        except RuntimeError:  # a file torch.save wrote before its zip format cannot be mapped; loading reads it
            continue
