"""Checkpoints that are complete or ignored, interruption that ends in a checkpoint, and the
files a saved model folder needs to load on its own."""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import time

import torch
from transformers import TrainerCallback

logger = logging.getLogger(__name__)

# Written into checkpoint-N after every rank finished writing it. A checkpoint without it was
# interrupted mid-write and is never resumed from.
COMPLETE_MARKER = "checkpoint_complete.json"

# Files of a checkpoint that inference needs and save_pretrained may not write:
# processor/preprocessor configs, generation config, and remote code the model class does
# not import itself (e.g. processing_minicpmv.py of 2.6).
EXTRA_CHECKPOINT_FILES = (".py", "preprocessor_config.json", "processor_config.json", "generation_config.json")


def copy_missing_checkpoint_files(source_dir: str, output_dir: str) -> list[str]:
    """Copies the source checkpoint's remote code and processor files that output_dir lacks."""
    copied = []
    for name in sorted(os.listdir(source_dir)):
        if name.endswith(EXTRA_CHECKPOINT_FILES) and not os.path.exists(os.path.join(output_dir, name)):
            shutil.copy(os.path.join(source_dir, name), os.path.join(output_dir, name))
            copied.append(name)
    return copied


def _barrier():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


class MarkCompleteCheckpoints(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        _barrier()  # every rank has written its shards and RNG state
        if args.should_save:
            path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            with open(os.path.join(path, COMPLETE_MARKER), "w") as handle:
                json.dump({"global_step": state.global_step, "time": time.time()}, handle)


def is_complete(checkpoint: str) -> bool:
    return os.path.isfile(os.path.join(checkpoint, COMPLETE_MARKER))


def damage(checkpoint: str) -> str | None:
    """What is wrong with a checkpoint's files (None when nothing): incomplete, or a file that
    cannot be read back although the completion marker is there (e.g. a disk that filled up)."""
    if not is_complete(checkpoint):
        return f"incomplete (no {COMPLETE_MARKER}; the run stopped while writing it)"
    from safetensors import safe_open

    for name in sorted(os.listdir(checkpoint)):
        path = os.path.join(checkpoint, name)
        try:
            if name.endswith(".safetensors"):
                with safe_open(path, "pt") as handle:
                    handle.keys()
            elif name.endswith(".json"):
                with open(path) as handle:
                    json.load(handle)
        except Exception as exc:  # any read failure makes the checkpoint unusable; say which file
            return f"{name} cannot be read ({type(exc).__name__}: {exc})"
    return None


def newest_complete_checkpoint(output_dir: str) -> str | None:
    if not os.path.isdir(output_dir):
        return None
    found = sorted(((int(m.group(1)), name) for name in os.listdir(output_dir)
                    if (m := re.fullmatch(r"checkpoint-(\d+)", name))), reverse=True)
    for _, name in found:
        path = os.path.join(output_dir, name)
        problem = damage(path)
        if problem is None:
            return path
        logger.warning("skipping %s: %s", path, problem)
    return None


def resolve_resume(value: str | None, output_dir: str) -> str | None:
    """--resume_from_checkpoint: 'last'/'true' -> newest complete checkpoint in output_dir."""
    if value is None or value.lower() in ("false", "no", ""):
        return None
    if value.lower() in ("true", "last"):
        path = newest_complete_checkpoint(output_dir)
        if path is None:
            raise ValueError(f"--resume_from_checkpoint {value}: no complete checkpoint-* in {output_dir}")
        logger.info("resuming from %s", path)
        return path
    problem = "no such folder" if not os.path.isdir(value) else damage(value)
    if problem:
        newest = newest_complete_checkpoint(output_dir)
        instead = f"use {newest} or 'last'" if newest else f"there is no complete checkpoint in {output_dir}"
        raise ValueError(f"--resume_from_checkpoint {value}: {problem}; {instead}")
    return value


class StopOnSignal(TrainerCallback):
    """SIGTERM/SIGINT (a scheduler's preemption, Ctrl-C) ends training after the current step
    with a complete checkpoint. All ranks agree on the step, so ZeRO saves cannot hang.
    A second signal falls back to the default behaviour (immediate exit). The handlers stay
    until restore(), after the final save."""

    def __init__(self):
        self.received = None
        self.stopped_at = None
        self._previous = {}

    def _handle(self, signum, frame):
        self.received = signum
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def on_train_begin(self, args, state, control, **kwargs):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def on_step_end(self, args, state, control, **kwargs):
        flag = torch.tensor(self.received or 0)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = flag.to(args.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if int(flag):
            self.received = int(flag)
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
            logger.warning("signal %d: saving checkpoint-%d and stopping", self.received, state.global_step)

    def restore(self):
        """Back to the previous handlers; called after the final save, so a signal during it
        cannot cut the finished model off mid-write."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
