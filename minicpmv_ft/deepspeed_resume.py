"""Resuming a DeepSpeed checkpoint without running code from it.

DeepSpeed (0.19) reads its checkpoint files with torch.load(weights_only=False): a crafted
`mp_rank_00_model_states.pt` or `*_optim_states.pt` runs whatever its pickle says. Before the
Trainer hands a checkpoint to DeepSpeed, every file DeepSpeed will read is loaded here with
weights_only=True, allowing only the types DeepSpeed's own state holds. A file that needs
anything else is refused, so the full unpickler later only meets pickles that the restricted
one accepted. mmap keeps this cheap: tensors are mapped, not read.
"""
from __future__ import annotations

import os
import pickle

import torch

TAG_FILE = "latest"  # DeepSpeed's pointer to the global_step* folder it loads


def deepspeed_state_types():
    """The classes (besides tensors and containers) in ZeRO-2/3 model and optimizer states."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address
    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def state_folder(checkpoint: str) -> str:
    """The folder DeepSpeed loads: the tag in `latest`, which must name a folder inside."""
    tag_file = os.path.join(checkpoint, TAG_FILE)
    if not os.path.isfile(tag_file):
        raise ValueError(f"{checkpoint}: no '{TAG_FILE}' file, so this is not a DeepSpeed checkpoint "
                         f"(resume it without --deepspeed, or give the checkpoint a DeepSpeed run wrote)")
    with open(tag_file) as f:
        tag = f.read().strip()
    folder = os.path.join(checkpoint, tag)
    if not tag or os.path.dirname(os.path.normpath(tag)) or tag in (".", "..") or not os.path.isdir(folder):
        raise ValueError(f"{tag_file}: names {tag!r}, not a folder of this checkpoint; refusing to resume from it")
    return folder


def unpickling_problem(error: Exception) -> str:
    """The line of torch's long weights_only message that names the refused global."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or "global" in line.split()]
    return (named or lines or [type(error).__name__])[0]


def check_deepspeed_checkpoint(checkpoint: str) -> None:
    """Raises ValueError naming the first file that holds more than DeepSpeed's state types."""
    folder = state_folder(checkpoint)
    files = sorted(name for name in os.listdir(folder) if name.endswith(".pt"))
    if not files:
        raise ValueError(f"{folder}: no .pt state files; the checkpoint is incomplete")
    with torch.serialization.safe_globals(deepspeed_state_types()):
        for name in files:
            path = os.path.join(folder, name)
            try:
                torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError) as e:
                raise ValueError(
                    f"{path}: refusing to resume: the file holds more than DeepSpeed's checkpoint state "
                    f"({unpickling_problem(e)}). DeepSpeed would unpickle it with "
                    f"weights_only=False, which runs any code a crafted file contains. Resume only from "
                    f"checkpoints this toolkit wrote.") from None
