"""What a run is, recorded in its output folder, so that a resume never continues another run.

OUTPUT_DIR/run.json holds the run's identity (the arguments that change the trained weights
and fingerprints of the data files: minicpmv_ft/arguments.py says which) and whether it
finished; every checkpoint's completion marker carries the identity's hash.
`--resume_from_checkpoint last` takes only checkpoints of the current run, and a new run into a
folder that holds another one is refused unless --overwrite_output_dir. A resume may lengthen
(or shorten) the run: --num_train_epochs and --max_steps are recorded but not part of what must
match. While a run runs, its first process holds a lock on the folder.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
from contextlib import contextmanager

RUN_FILE = "run.json"

# How long the run trains: a resume may change them (training longer), the rest must match.
SCHEDULE_LENGTH = ("num_train_epochs", "max_steps")


def file_fingerprint(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def identity_hash(identity: dict) -> str:
    """The hash every checkpoint of the run carries: of the identity less its length."""
    fixed = {key: value for key, value in identity.items() if key not in SCHEDULE_LENGTH}
    return hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()[:16]


def run_hashes(output_dir: str, identity: dict) -> tuple[str, ...]:
    """The hashes this run's checkpoints may carry: its own, and the one run.json records when
    that run differs at most in length (written before the hash left the length out)."""
    recorded = read_run(output_dir)
    own = identity_hash(identity)
    if recorded and recorded.get("hash") not in (None, own) and not differences(recorded["identity"], identity):
        return own, recorded["hash"]
    return (own,)


def read_run(output_dir: str) -> dict | None:
    path = os.path.join(output_dir, RUN_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        return json.load(handle)


def write_run(output_dir: str, identity: dict, finished: bool):
    os.makedirs(output_dir, exist_ok=True)
    record = {"identity": identity, "hash": identity_hash(identity), "finished": finished}
    with open(os.path.join(output_dir, RUN_FILE), "w") as handle:
        json.dump(record, handle, indent=1)


def differences(recorded: dict, identity: dict, keys=None) -> list[str]:
    """'name recorded (now new)' for each argument that differs (of `keys`; default: all but the
    run's length). An argument the record lacks joined the identity after that run started, which
    could not record it: it is not compared."""
    if keys is None:
        keys = sorted((set(recorded) & set(identity)) - set(SCHEDULE_LENGTH))
    return [f"{key} {recorded.get(key)!r} (now {identity.get(key)!r})" for key in keys
            if recorded.get(key) != identity.get(key)]


def length_changes(output_dir: str, identity: dict) -> list[str]:
    """How the recorded run's length (epochs, steps) differs from this one's."""
    recorded = read_run(output_dir)
    return differences(recorded["identity"], identity, SCHEDULE_LENGTH) if recorded else []


def check_new_run(output_dir: str, identity: dict, resuming: bool, overwrite: bool):
    """ValueError when a new run would mix with another one in output_dir, or a resume would
    continue a run with other arguments or data."""
    recorded = read_run(output_dir)
    has_checkpoints = os.path.isdir(output_dir) and any(n.startswith("checkpoint-") for n in os.listdir(output_dir))
    if resuming:
        changed = differences(recorded["identity"], identity) if recorded else []
        if changed and not overwrite:
            raise ValueError(f"--resume_from_checkpoint: {output_dir} holds a run with other settings: "
                             f"{'; '.join(changed)}. Resume with the same arguments and data, or start a new run "
                             "in another --output_dir")
        return
    if (recorded or has_checkpoints) and not overwrite:
        what = "a finished run" if recorded and recorded["finished"] else "an unfinished run" if recorded else "checkpoints"
        raise ValueError(f"--output_dir {output_dir} already holds {what}; continue it with --resume_from_checkpoint "
                         "last, choose another --output_dir, or pass --overwrite_output_dir to start over there")


LOCK_FILE = ".run.lock"


def raise_unwritable(output_dir: str, error: OSError):
    """ValueError in one line for an output folder that cannot be written at the start of a run."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        free = shutil.disk_usage(output_dir if os.path.isdir(output_dir) else os.path.dirname(
            os.path.abspath(output_dir))).free / 2**30
        raise ValueError(f"--output_dir {output_dir}: no space left on device ({free:.1f} GiB free there); free "
                         "space or choose another --output_dir") from None
    raise ValueError(f"--output_dir {output_dir}: cannot write there ({error.strerror or error})") from None


@contextmanager
def output_dir_lock(output_dir: str):
    """Held by the run's first process while it runs: a second run started into the same folder
    stops at once, naming the first, instead of both writing and the last one winning."""
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    created = not os.path.isdir(output_dir)
    path = os.path.join(output_dir, LOCK_FILE)
    try:
        os.makedirs(output_dir, exist_ok=True)
        handle = open(path, "a+")
    except OSError as error:
        raise_unwritable(output_dir, error)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        if created:
            os.rmdir(output_dir)
        raise ValueError(f"--output_dir {output_dir} is in use by a running run ({holder}); wait for it or choose "
                         "another --output_dir") from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}")
        handle.flush()
    except OSError as error:
        handle.close()
        raise_unwritable(output_dir, error)
    try:
        yield
    finally:
        if created and os.listdir(output_dir) == [LOCK_FILE]:  # failed before writing anything: leave no folder
            os.remove(path)
            os.rmdir(output_dir)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
