"""Checkpoints that are complete or ignored, interruption that ends in a checkpoint, and the
files a saved model folder needs to load on its own."""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import signal
import time
import zipfile

import torch
from transformers import TrainerCallback

from .run_record import identity_hash, write_run

logger = logging.getLogger(__name__)

# Written into checkpoint-N after every rank finished writing it. A checkpoint without it was
# interrupted mid-write and is never resumed from.
COMPLETE_MARKER = "checkpoint_complete.json"

# Files of a checkpoint that inference needs and save_pretrained may not write:
# processor/preprocessor configs, generation config, and remote code the model class does
# not import itself (e.g. processing_minicpmv.py of 2.6).
EXTRA_CHECKPOINT_FILES = (".py", "preprocessor_config.json", "processor_config.json", "generation_config.json",
                          "chat_template.jinja")


def complete_saved_model(source_dir: str | None, output_dir: str, max_slice_nums: int | None) -> list[str]:
    """Makes a saved model (a checkpoint, a result, a merged model) load and chat as its source
    checkpoint does: the source's remote code and processor files that output_dir lacks, the
    config's transformers version, and the slicing it was trained with (record_max_slice_nums).
    Returns the names of the files copied."""
    copied = []
    if source_dir:
        copied = copy_missing_checkpoint_files(source_dir, output_dir)
        keep_transformers_version(source_dir, output_dir)
    if max_slice_nums is not None:
        record_max_slice_nums(output_dir, max_slice_nums)
    return copied


def copy_missing_checkpoint_files(source_dir: str, output_dir: str) -> list[str]:
    """Copies the source checkpoint's remote code and processor files that output_dir lacks."""
    copied = []
    for name in sorted(os.listdir(source_dir)):
        if name.endswith(EXTRA_CHECKPOINT_FILES) and not os.path.exists(os.path.join(output_dir, name)):
            shutil.copy(os.path.join(source_dir, name), os.path.join(output_dir, name))
            copied.append(name)
    return copied


def keep_transformers_version(source_dir: str, output_dir: str):
    """config.json keeps the transformers version its source records, not the one that saved it.
    The saved config is the source's own with new weights, and a local tokenizer folder whose
    config says 4.57.3-4.57.x (what this environment writes) is taken by those transformers for a
    Mistral tokenizer with a broken split regex: every plain AutoTokenizer load of a 2.5, 2.6 or
    4.5 result (over 100k tokens) warns of "incorrect tokenization" and advises a flag that would
    change its ids. The published checkpoints record 4.51 or older; the native ones 5.x."""
    source, saved = os.path.join(source_dir, "config.json"), os.path.join(output_dir, "config.json")
    if not os.path.isfile(source) or not os.path.isfile(saved):
        return
    with open(source) as handle:
        recorded = json.load(handle).get("transformers_version")
    with open(saved) as handle:
        config = json.load(handle)
    if recorded and config.get("transformers_version") != recorded:
        config["transformers_version"] = recorded
        with open(saved, "w") as handle:
            json.dump(config, handle, indent=2, sort_keys=True)
            handle.write("\n")


# What a LoRA adapter folder records of the slicing it was trained with (a full model's
# config.json carries it); load_for_inference applies it to the base model's config.
ADAPTER_SETTINGS_FILE = "minicpmv_settings.json"


def record_max_slice_nums(output_dir: str, max_slice_nums: int):
    """--max_slice_nums into the saved processor config (what 2.5+ chat() slices with; the native versions'
    processor_config.json holds it in its image_processor part) and, for an adapter, into
    ADAPTER_SETTINGS_FILE."""
    for name, part in (("preprocessor_config.json", None), ("processor_config.json", "image_processor")):
        processor = os.path.join(output_dir, name)
        if not os.path.isfile(processor):
            continue
        with open(processor) as f:
            settings = json.load(f)
        target = settings.get(part) if part else settings
        if isinstance(target, dict):
            target["max_slice_nums"] = int(max_slice_nums)
            with open(processor, "w") as f:
                json.dump(settings, f, indent=2)
    if os.path.isfile(os.path.join(output_dir, "adapter_config.json")):
        with open(os.path.join(output_dir, ADAPTER_SETTINGS_FILE), "w") as f:
            json.dump({"max_slice_nums": int(max_slice_nums)}, f)


def _barrier():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


class MarkCompleteCheckpoints(TrainerCallback):
    """Records the run (run.json) once every process is training, and writes each checkpoint's
    completion marker with the hash of the run's identity (run_record.py)."""

    def __init__(self, identity: dict | None = None):
        self.identity = identity
        self.run_hash = identity_hash(identity) if identity is not None else None

    def on_train_begin(self, args, state, control, **kwargs):
        # Every rank has checked the output folder by now (the model is wrapped collectively).
        if args.should_save and self.identity is not None:
            write_run(args.output_dir, self.identity, finished=False)

    def on_save(self, args, state, control, **kwargs):
        _barrier()  # every rank has written its shards and RNG state
        if args.should_save:
            path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            with open(os.path.join(path, COMPLETE_MARKER), "w") as handle:
                json.dump({"global_step": state.global_step, "time": time.time(), "run": self.run_hash,
                           "files": file_sizes(path)}, handle)


def file_sizes(checkpoint: str) -> dict[str, int]:
    """Every file of a checkpoint (DeepSpeed's shards in their folder too) -> its size, as the
    completion marker records them: a file cut later (a full disk, a copy that stopped) differs."""
    sizes = {}
    for folder, _, names in os.walk(checkpoint):
        for name in names:
            path = os.path.join(folder, name)
            if name != COMPLETE_MARKER and os.path.isfile(path):
                sizes[os.path.relpath(path, checkpoint)] = os.path.getsize(path)
    return sizes


def marker_run(checkpoint: str) -> str | None:
    """The run hash a checkpoint's marker records (None for markers written before runs had one)."""
    with open(os.path.join(checkpoint, COMPLETE_MARKER)) as handle:
        return json.load(handle).get("run")


def is_complete(checkpoint: str) -> bool:
    return os.path.isfile(os.path.join(checkpoint, COMPLETE_MARKER))


def damage(checkpoint: str) -> str | None:
    """What is wrong with a checkpoint's files (None when nothing): incomplete, or a file that
    cannot be read back although the completion marker is there (e.g. a disk that filled up)."""
    if not is_complete(checkpoint):
        return f"incomplete (no {COMPLETE_MARKER}; the run stopped while writing it)"
    from safetensors import safe_open

    try:
        with open(os.path.join(checkpoint, COMPLETE_MARKER)) as handle:
            recorded = json.load(handle).get("files") or {}
    except (OSError, ValueError, AttributeError) as exc:
        return f"{COMPLETE_MARKER} cannot be read ({type(exc).__name__}: {exc})"
    sizes = file_sizes(checkpoint)
    for name, size in sorted(recorded.items()):
        if name not in sizes:
            return f"{name} is missing"
        if sizes[name] != size:
            return f"{name} has {sizes[name]} bytes, {size} when it was written (cut?)"
    for name in sorted(sizes):
        path = os.path.join(checkpoint, name)
        try:
            if name.endswith(".safetensors"):
                with safe_open(path, "pt") as handle:
                    handle.keys()
            elif name.endswith(".json"):
                with open(path) as handle:
                    json.load(handle)
            elif name.endswith((".pt", ".pth", ".bin")):  # torch.save's zip archive: its directory is at the end
                zipfile.ZipFile(path).close()
        except Exception as exc:  # any read failure makes the checkpoint unusable; say which file
            return f"{name} cannot be read ({type(exc).__name__}: {exc})"
    return None


def of_run(checkpoint: str, run_hash) -> bool:
    """Whether the checkpoint's marker names the run: `run_hash` one hash or a tuple of the
    run's hashes (any run when None; a marker without a hash predates run hashes)."""
    hashes = run_hash if isinstance(run_hash, tuple) else (run_hash,)
    return run_hash is None or marker_run(checkpoint) in (*hashes, None)


def newest_complete_checkpoint(output_dir: str, run_hash=None) -> str | None:
    """The newest readable checkpoint of the run `run_hash` (any run when None)."""
    if not os.path.isdir(output_dir):
        return None
    found = sorted(((int(m.group(1)), name) for name in os.listdir(output_dir)
                    if (m := re.fullmatch(r"checkpoint-(\d+)", name))), reverse=True)
    for _, name in found:
        path = os.path.join(output_dir, name)
        problem = damage(path)
        if problem is None and not of_run(path, run_hash):
            problem = "written by another run in this folder"
        if problem is None:
            return path
        logger.warning("skipping %s: %s", path, problem)
    return None


def checkpoint_step(checkpoint: str) -> int:
    with open(os.path.join(checkpoint, "trainer_state.json")) as f:
        return int(json.load(f)["global_step"])


def wants_resume(value: str | None) -> bool:
    return value is not None and value.lower() not in ("false", "no", "")


def resolve_resume(value: str | None, output_dir: str, run_hash=None) -> str | None:
    """--resume_from_checkpoint: 'last'/'true' -> the newest complete checkpoint of this run."""
    if not wants_resume(value):
        return None
    if value.lower() in ("true", "last"):
        path = newest_complete_checkpoint(output_dir, run_hash)
        if path is None:
            raise ValueError(f"--resume_from_checkpoint {value}: no complete checkpoint-* in {output_dir}")
        return path
    problem = "no such folder" if not os.path.isdir(value) else damage(value)
    if problem is None and not of_run(value, run_hash):
        problem = "written by a run with other arguments or data"
    if problem:
        newest = newest_complete_checkpoint(output_dir, run_hash)
        instead = f"use {newest} or 'last'" if newest else f"there is no complete checkpoint in {output_dir}"
        raise ValueError(f"--resume_from_checkpoint {value}: {problem}; {instead}")
    return value


# How a write that ran out of space surfaces: OSError/SafetensorError texts, and torch.save's
# zip writer, which only says its write failed or its position is off.
WRITE_FAILURES = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122",
                  "file write failed", "unexpected pos")


def is_write_failure(error: BaseException) -> bool:
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(error) for text in WRITE_FAILURES):
            return True
        error = error.__cause__ or error.__context__
    return False


class CheckpointWriteError(RuntimeError):
    pass


@contextlib.contextmanager
def explain_write_failures(output_dir: str, run_hash: str | None):
    """A save that fails for lack of space says so and names the checkpoint that is still good
    (checkpoints are rotated only after a save succeeds, so the previous one is intact)."""
    try:
        yield
    except Exception as error:
        if not is_write_failure(error):
            raise
        free_gib = shutil.disk_usage(output_dir).free / 2**30
        newest = newest_complete_checkpoint(output_dir, run_hash)
        keep = (f"{newest} is the newest complete checkpoint and is intact: free space, then continue with "
                f"--resume_from_checkpoint last" if newest else "no checkpoint of this run was complete yet")
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointWriteError(
            f"saving in {output_dir} failed: no space left on device? ({reason}; {free_gib:.1f} GiB free there "
            f"now). {keep}. The checkpoint being written has no {COMPLETE_MARKER} and is never resumed; delete "
            f"it to get its space back.") from error


class StopOnSignal(TrainerCallback):
    """SIGTERM/SIGINT (a scheduler's preemption, Ctrl-C) ends training after the current step
    with a complete checkpoint. All ranks agree on the step, so ZeRO saves cannot hang.
    The same request often arrives twice: a scheduler signals every process of the job and
    the launcher forwards its own copy. A repeat within DUPLICATE_WINDOW_S is that copy and is
    ignored; a later one falls back to the previous behaviour (immediate exit). The handlers
    stay until restore(), after the final save."""

    DUPLICATE_WINDOW_S = 10.0

    def __init__(self):
        self.received = None
        self.stopped_at = None
        self._first_at = None
        self._previous = {}

    def _handle(self, signum, frame):
        now = time.monotonic()
        if self._first_at is None:
            self.received, self._first_at = signum, now
        elif now - self._first_at > self.DUPLICATE_WINDOW_S:
            self.restore()
            signal.raise_signal(signum)

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
            if args.should_log:  # every process stops; the first one says so
                logger.warning("signal %d: saving checkpoint-%d and stopping", self.received, state.global_step)

    def restore(self):
        """Back to the previous handlers; called after the final save, so a signal during it
        cannot cut the finished model off mid-write."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
