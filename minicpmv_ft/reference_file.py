"""The reference pass's file (reference_logps.py): each preference pair's answer log-probs under
the starting model, computed once before training and written next to the data.

    pairs.json -> pairs.reference_logps.jsonl
    {"reference_logps": 2, "model": ..., "data": ..., "media": ..., "settings": {...}, "pairs": 6}   the header
    {"pair": 0, "logps": [chosen, rejected]}                                                          a line per pair
    {"pair": 3, "failed": "cannot read image ..."}              a pair whose media failed (--skip_bad_samples)

The header says what the numbers belong to: the model's files, the data file's content, the
images' and videos' contents and the options that change how a pair is encoded. A training run
(--method dpo) uses the file when its header matches its own and every pair it trains on has a
line; a file made for another model, data or encoding is refused, never used. A pass that
stopped keeps its lines (written as each batch finishes): run again, it computes the rest.
"""
from __future__ import annotations

import hashlib
import json
import os

from .arguments import ENCODING_OPTIONS  # the options that change a pair's ids or pixels
from .errors import DataError
from .preference_data import log_prob
from .run_record import file_fingerprint

FORMAT = 2  # 2: the header holds the media's fingerprint
MEDIA_BYTES = 1 << 16  # read from each end of a media file; most images are read whole
SUFFIX = ".reference_logps.jsonl"


def reference_path(data_path: str) -> str:
    """The reference file of a data file: beside it, named after it."""
    return os.path.splitext(data_path)[0] + SUFFIX


def model_fingerprint(folder: str) -> str:
    """Of a checkpoint folder's files: every file's name, size and modification time (in the hub
    cache a file is a link to a blob named by its content)."""
    digest = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        path = os.path.realpath(os.path.join(folder, name))
        if os.path.isfile(path):
            status = os.stat(path)
            digest.update(f"{name} {os.path.basename(path)} {status.st_size} {status.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def media_fingerprint(paths) -> str:
    """Of the image and video files the pairs show, in order: each one's path, size and the bytes
    of its start and end (a replaced image differs there; reading whole videos would take longer
    than the check is worth)."""
    digest = hashlib.sha256()
    for path in paths:
        size = os.path.getsize(path)
        digest.update(f"{path} {size}\n".encode())
        with open(path, "rb") as handle:
            digest.update(handle.read(MEDIA_BYTES))
            if size > 2 * MEDIA_BYTES:
                handle.seek(size - MEDIA_BYTES)
            digest.update(handle.read(MEDIA_BYTES))
    return digest.hexdigest()


def header(model_folder: str, data_path: str, data_args, dataset, data_fingerprint: str | None = None) -> dict:
    """What the reference file of `dataset` (a PreferenceDataset of `data_path`) belongs to;
    `data_fingerprint`: the data file's, where the caller has it (a training run's identity
    holds it), so a large file is not hashed twice."""
    return {"reference_logps": FORMAT, "model": model_fingerprint(model_folder),
            "data": data_fingerprint or file_fingerprint(data_path),
            "media": media_fingerprint(dataset.media_paths()),
            "settings": {name: getattr(data_args, name) for name in ENCODING_OPTIONS}, "pairs": len(dataset.references)}


def read(path: str, expected: dict) -> tuple[dict[int, tuple[float, float]], dict[int, str]]:
    """(pair index -> (chosen, rejected), pair index -> why it failed) of the file at `path`
    (empty when there is none); ValueError when it was made for another model, data or encoding
    than `expected`."""
    if not os.path.exists(path):
        return {}, {}
    if os.path.isdir(path):
        raise ValueError(f"{path} is a folder, where the reference pass writes its file; move it away")
    try:
        with open(path, encoding="utf-8") as handle:
            lines = [line for line in handle if line.strip()]
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a reference file (not UTF-8 text); delete it and run reference_logps.py "
                         "again") from None
    try:
        found = json.loads(lines[0]) if lines else {}
    except json.JSONDecodeError:
        found = {}
    changed = [key for key in ("reference_logps", "model", "data", "media", "settings")
               if found.get(key) != expected[key]]
    if changed:
        what = {"reference_logps": "another file format", "model": "another model (its files differ)",
                "data": "another version of the data file",
                "media": "other images or videos (one was changed, added or removed since)",
                "settings": "other encoding options"}
        raise ValueError(f"{path} holds reference log-probs computed for {what[changed[0]]}"
                         + (f": {_settings_change(found.get('settings') or {}, expected['settings'])}"
                            if changed[0] == "settings" else "")
                         + "; delete it and run reference_logps.py again for this run's model and data")
    logps, failed, fix = {}, {}, "; delete the file and run reference_logps.py again"
    for number, line in enumerate(lines[1:], start=2):
        try:
            entry = json.loads(line)
            index = int(entry["pair"])
            if isinstance(entry.get("failed"), str) and index not in logps:
                failed[index] = entry["failed"]
                continue
            values = list(entry["logps"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            break  # a line cut by a stopped pass: it and what follows are computed again
        if len(values) != 2:
            break
        if index in logps or index in failed:
            raise ValueError(f"{path}, line {number}: pair {index} a second time{fix}")
        try:
            logps[index] = tuple(log_prob(value, f"{path}, line {number}: pair {index}'s {side} log-prob")
                                 for value, side in zip(values, ("chosen", "rejected")))
        except ValueError as error:
            raise ValueError(f"{error}{fix}") from None
    return logps, failed


def _settings_change(found: dict, expected: dict) -> str:
    return ", ".join(f"{name} {found.get(name)!r} then, {expected[name]!r} now" for name in expected
                     if found.get(name) != expected[name])


def start(path: str, expected: dict, done: dict):
    """Opens the file for appending the pairs still to compute: a new one with its header, or
    the lines `done` so far rewritten (dropping a cut last line)."""
    handle = open(path + ".partial", "w")
    handle.write(json.dumps(expected) + "\n")
    for index, (chosen, rejected) in sorted(done.items()):
        handle.write(json.dumps({"pair": index, "logps": [chosen, rejected]}) + "\n")
    handle.flush()
    os.replace(path + ".partial", path)
    return handle


def append(handle, logps: dict, failed: dict | None = None):
    for index, (chosen, rejected) in logps.items():
        handle.write(json.dumps({"pair": index, "logps": [chosen, rejected]}) + "\n")
    for index, reason in (failed or {}).items():
        handle.write(json.dumps({"pair": index, "failed": reason}) + "\n")
    handle.flush()
    os.fsync(handle.fileno())


def attach(dataset, data_path: str, expected: dict) -> int:
    """Puts the reference file's log-probs of `data_path` into `dataset.references` (a
    PreferenceDataset) from its file, which exists; the pairs taken. ValueError for a file made
    for something else, or one that lacks a pair the dataset trains on."""
    path = reference_path(data_path)
    found, failed = read(path, expected)
    failing = [index for index in dataset.kept if index in failed]
    if failing and not dataset.skip_bad_samples:
        raise DataError(dataset.source, failing[0], dataset.pair_id(failing[0]),
                        f"{failed[failing[0]]} (found by the reference pass, {path}): fix the file and run "
                        "reference_logps.py again, or add --skip_bad_samples")
    dataset.leave_out(failing, failed, "failed in the reference pass")
    missing = [index for index in dataset.kept if index not in found]
    if missing:
        raise ValueError(f"{path}: the reference pass stopped after {len(found)} of {len(dataset.kept)} pairs (pair "
                         f"{missing[0]} has none); run reference_logps.py again to finish it")
    for index in dataset.kept:
        dataset.references[index] = found[index]
    return len(dataset.kept)
