"""Reading and validating training samples (JSON / JSON Lines), before any tokenization.

A sample is {"id": ..., "image": path | {"<image_00>": path, ...} (optional),
"conversations": [{"role": "system"|"user"|"assistant", "content": str,
"reasoning_content": str (optional, assistant turns of thinking models)}, ...]}.
Every problem raises DataError naming the data file, the sample index and id, and the reason.
"""
from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field

from .chat_formats import Turn
from .data_formats import FORMATS, NATIVE_SAMPLE_KEYS, Unconvertible, ignored_keys, to_native, unknown_turn_key
from .errors import DataError
from .preference_data import pair_format

SINGLE_IMAGE_MARKER = "<image>"
MULTI_IMAGE_MARKER = re.compile(r"<image_\d+>")
SINGLE_VIDEO_MARKER = "<video>"
MULTI_VIDEO_MARKER = re.compile(r"<video_\d+>")
MARKERS = re.compile(r"<image>|<image_\d+>|<video>|<video_\d+>")
# Keys other tools use for images and videos; silently ignored they would train the sample as text-only.
IMAGE_LIKE_KEY = re.compile(r"images|imgs?|image_(path|paths|file|files|url|urls)|pictures?|photos?|videos|clips?|"
                            r"video_(path|paths|file|files|url|urls)", re.IGNORECASE)


logger = logging.getLogger(__name__)


@dataclass
class Sample:
    """A validated sample. Images are ordered as their markers appear in the conversation."""

    index: int
    sample_id: object
    source: str
    turns: list[Turn]  # content as one text part, image markers still in it
    markers: list[str]  # image markers in order of appearance
    image_paths: list[str]  # resolved paths, same order as markers
    marker_missing: bool  # single image with no <image> in the text: goes before the first user turn
    video_markers: list[str] = field(default_factory=list)  # video markers in order of appearance
    video_paths: list[str] = field(default_factory=list)  # resolved paths, same order
    video_marker_missing: bool = False  # single video with no <video>: before the first user turn

    def error(self, reason: str) -> DataError:
        return DataError(self.source, self.index, self.sample_id, reason)

    def with_placeholders(self, placeholders: dict) -> list[Turn]:
        """The turns with each image marker replaced by its placeholder object (marker -> placeholder);
        a single image without a marker goes in front of the first user turn, followed by a newline."""
        turns = []
        for turn in self.turns:
            parts = []
            for piece in re.split(f"({MARKERS.pattern})", turn.parts[0]):
                if piece in placeholders:
                    parts.append(placeholders[piece])
                elif piece:
                    parts.append(piece)
            turns.append(Turn(turn.role, parts, turn.index, turn.reasoning))
        first_user = next(t for t in turns if t.role == "user")
        for missing, marker in ((self.video_marker_missing, SINGLE_VIDEO_MARKER),
                                (self.marker_missing, SINGLE_IMAGE_MARKER)):
            if missing:
                first_user.parts[:0] = [placeholders[marker], "\n"]
        return turns

    def media_order(self) -> list[str]:
        """Image and video markers in the order their placeholders appear in the rendered text."""
        first_user = next(t for t in self.turns if t.role == "user")
        order = []
        for turn in self.turns:
            if turn is first_user:  # where with_placeholders puts an image / video without a marker
                order += [SINGLE_IMAGE_MARKER] * self.marker_missing + [SINGLE_VIDEO_MARKER] * self.video_marker_missing
            order += MARKERS.findall(turn.parts[0])
        return order


def load_records(data, base_dir: str | None = None, data_format: str = "auto") -> tuple[list, str, str]:
    """(records in our format, source name for messages, folder that relative image paths start from).

    A JSON list or JSON Lines, told apart by the first non-blank character; UTF-8, with or
    without a byte-order mark. Records in another format (data_formats.py) are converted; one
    that cannot be becomes an Unconvertible, reported with its index when it is checked."""
    records, source, folder = read_records(data, base_dir)
    return sft_records(records, source, data_format), source, folder


def sft_records(records: list, source: str, data_format: str = "auto") -> list:
    """The records of `source` as read (read_records) in our format, each converted or Unconvertible."""
    if data_format not in FORMATS:
        raise ValueError(f"--data_format {data_format!r}: choose one of {', '.join(FORMATS)}")
    ignored = Counter(key for record in records for key in ignored_keys(record))
    if ignored:
        counts = ", ".join(f"{key!r} in {count} sample{'s' * (count > 1)}" for key, count in ignored.most_common())
        logger.warning("%s: keys no step reads were ignored: %s", source, counts)
    return [sft_record(record, data_format) for record in records]


def sft_record(record, data_format: str):
    """A record in our format, or Unconvertible; a preference pair says what trains on it."""
    if pair_format(record) is not None:
        return Unconvertible("a preference pair (a chosen and a rejected answer): train pairs with --method dpo "
                             "(finetune_dpo.sh)", record.get("id"))
    return to_native(record, data_format)


PARQUET_MAGIC = b"PAR1"  # a Parquet file's first (and last) four bytes


def _parquet_records(path: str) -> list:
    from .parquet_data import read_parquet

    records = read_parquet(path)
    if not records:
        raise DataError(path, None, None, "no samples: the Parquet file has no rows")
    return records


# Python's JSON reader recurses once per level of nesting and stops near 1000 levels
TOO_DEEP = "JSON nested deeper than the reader goes (about 1000 levels); a sample is a shallow object"
# a \ud800-\udfff escape not paired as UTF-16: json reads it into a string no tokenizer can encode
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def read_records(data, base_dir):
    """(records as the file holds them, source name, folder relative paths start from): JSON,
    JSON Lines or Parquet (parquet_data.py). The one place every command's data paths are
    resolved: media paths are taken from the data file's folder (or `base_dir`, --image_folder),
    whatever the working folder, and the images a Parquet file holds are written beside it and
    named by absolute paths."""
    if isinstance(data, (list, tuple)):
        return list(data), "<in-memory data>", os.path.abspath(base_dir or os.getcwd())
    path = os.fspath(data)
    if not os.path.isfile(path):
        raise DataError(path, None, None, "data file does not exist")
    folder = os.path.abspath(base_dir or os.path.dirname(path))
    with open(path, "rb") as handle:
        if handle.read(4) == PARQUET_MAGIC:
            return _parquet_records(path), path, folder
        handle.seek(0)
        raw = handle.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(path, None, None, f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                                          "save the file as UTF-8") from None
    stripped = text.lstrip()
    if not stripped:
        raise DataError(path, None, None, "no samples: the file is empty")
    if stripped[0] == "[":
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(path, None, None, f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
        except RecursionError:
            raise DataError(path, None, None, TOO_DEEP) from None
        if not records:
            raise DataError(path, None, None, "no samples: the JSON list is empty")
        return records, path, folder
    if stripped[0] != "{":
        raise DataError(path, None, None, "neither a JSON list of samples ([...]) nor JSON Lines (one {...} per line)")
    _refuse_single_object(text, path)
    records = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(path, None, None, f"invalid JSON Lines record at line {line_no}: {exc.msg}") from None
        except RecursionError:
            raise DataError(path, None, None, f"line {line_no}: {TOO_DEEP}") from None
    return records, path, folder


def _refuse_single_object(text: str, path: str):
    """A file that is one JSON object spread over several lines is not JSON Lines."""
    if len(text.strip().splitlines()) < 2:
        return
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        return  # several objects: JSON Lines
    named = [entry["file_name"] for entry in whole.values()
             if isinstance(entry, dict) and isinstance(entry.get("file_name"), str)]
    if named:  # LLaMA-Factory's data/dataset_info.json
        raise DataError(path, None, None, "a list of datasets (LLaMA-Factory's dataset_info.json), not samples: give "
                                          f"the data file of the dataset to train on, e.g. {named[0]} beside it")
    lists = [key for key, value in whole.items() if isinstance(value, list)]
    hint = f'; the samples look like they are under {lists[0]!r}: write that list alone' if lists else ""
    raise DataError(path, None, None, "one JSON object, not a list of samples or JSON Lines" + hint)


GROUNDING = re.compile(r"<(box|point)>(.*?)</\1>", re.DOTALL)
COORDINATES = {"box": 4, "point": 2}
ASCII_INTEGER = re.compile(r"[0-9]+")  # str.isdigit() also takes superscripts and full-width digits
GROUNDING_TAG = re.compile(r"</?(box|point)>")


def grounding_problem(text: str) -> str | None:
    """What is wrong with the first bad box or point of `text`: integers 0-1000 (ASCII digits)
    relative to the image, x1 <= x2 and y1 <= y2 for a box, every tag closed."""
    for match in GROUNDING.finditer(text):
        kind, body = match.group(1), match.group(2)
        values = body.split()
        if len(values) != COORDINATES[kind] or not all(ASCII_INTEGER.fullmatch(v) for v in values):
            return f"{match.group(0)}: a {kind} needs {COORDINATES[kind]} integers 0-1000 (digits 0-9) separated by spaces"
        numbers = [int(v) for v in values]
        if max(numbers) > 1000:
            return f"{match.group(0)}: coordinates are 0-1000 (relative to the image), got {max(numbers)}"
        if kind == "box" and (numbers[0] > numbers[2] or numbers[1] > numbers[3]):
            return f"{match.group(0)}: a box is x1 y1 x2 y2 with x1 <= x2 and y1 <= y2"
    stray = GROUNDING_TAG.search(GROUNDING.sub("", text))
    if stray:
        return f"{stray.group(0)} without its {'opening' if stray.group(0)[1] == '/' else 'closing'} tag"
    return None


def _turns(record: dict, index: int, source: str, sample_id, system_allowed: bool):
    def fail(reason):
        return DataError(source, index, sample_id, reason)

    conversations = record.get("conversations")
    if not isinstance(conversations, list) or not conversations:
        raise fail('no "conversations" list of {"role", "content"} turns; ShareGPT/LLaVA ("from"/"value") and '
                   '"messages" samples are read too (docs/data.md); convert others with tools/convert_data.py')
    turns = []
    for t, turn in enumerate(conversations):
        if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
            raise fail(f'turn {t} must be an object with "role" and "content"')
        unknown = unknown_turn_key(turn, "native")
        if unknown:
            raise fail(f"turn {t}: {unknown}")
        role, content, reasoning = turn["role"], turn["content"], turn.get("reasoning_content")
        if role not in ("system", "user", "assistant"):
            raise fail(f"turn {t} has role {role!r}; allowed: system, user, assistant")
        if not isinstance(content, str) or not content.strip():
            raise fail(f"turn {t} ({role}) has empty or non-text content")
        if reasoning is not None and (role != "assistant" or not isinstance(reasoning, str)):
            raise fail(f"turn {t} ({role}): reasoning_content must be text on an assistant turn")
        for text in (content, reasoning or ""):
            lone = LONE_SURROGATE.search(text)
            if lone:
                raise fail(f"turn {t} ({role}) holds a lone surrogate (\\u{ord(lone.group()):04x} at character "
                           f"{lone.start()}), which is not Unicode text: fix that escape in the file")
        if role == "assistant" and MARKERS.search(content):
            raise fail(f"turn {t} (assistant) has an image marker: images belong to user or system turns")
        problem = grounding_problem(content)
        if problem:
            raise fail(f"turn {t} ({role}): {problem}")
        turns.append(Turn(role, [content], t, reasoning))
    body = turns
    if turns[0].role == "system":
        if not system_allowed:
            raise fail("this model's chat format has no system turn (MiniCPM-V 2.0); remove it")
        body = turns[1:]
    for t, role in enumerate(turn.role for turn in body):
        expected = "user" if t % 2 == 0 else "assistant"
        if role != expected:
            offset = len(turns) - len(body)
            raise fail(
                f"turn {t + offset} is {role!r} but {expected!r} was expected: turns must be "
                "an optional system turn, then user and assistant alternating, starting with user"
            )
    if not any(turn.role == "assistant" for turn in body):
        raise fail("no assistant turn: nothing to train on")
    if body[-1].role != "assistant":
        raise fail("the conversation ends with a user turn, which nothing is trained on; remove it")
    return turns


def parse_sample(record, index: int, source: str, folder: str, system_allowed: bool) -> Sample:
    if isinstance(record, Unconvertible):
        raise DataError(source, index, index if record.id is None else record.id, record.reason)
    if not isinstance(record, dict):
        raise DataError(source, index, None, f"sample must be a JSON object, got {type(record).__name__}")
    sample_id = record.get("id", index)
    turns = _turns(record, index, source, sample_id, system_allowed)
    text = "".join(turn.parts[0] for turn in turns)

    def fail(reason):
        return DataError(source, index, sample_id, reason)

    for key in record:
        if IMAGE_LIKE_KEY.fullmatch(key):
            raise fail(f'unknown key {key!r}: images go in "image" (a path, or {{"<image_00>": path, ...}} for '
                       'several)')
        if key not in NATIVE_SAMPLE_KEYS:
            raise fail(f"unknown key {key!r} (a sample has {', '.join(NATIVE_SAMPLE_KEYS)})")
    images = _media(record, "image", SINGLE_IMAGE_MARKER, MULTI_IMAGE_MARKER, text, folder, fail)
    videos = _media(record, "video", SINGLE_VIDEO_MARKER, MULTI_VIDEO_MARKER, text, folder, fail)
    if images[2] and videos[2]:
        raise fail("an image and a video without <image> / <video> markers: put the markers where they go")
    return Sample(index, sample_id, source, turns, *images, *videos)


def _media(record, key, single, multi, text, folder, fail):
    """(markers in order of appearance, resolved paths, marker missing) of the sample's "image" or
    "video": a path with one `single` marker (or none: before the first user turn), or
    {"<key_00>": path, ...} with each key once in the text."""
    value = record.get(key)
    found_multi = multi.findall(text)
    if value is None:
        if single in text or found_multi:
            article = "an" if key[0] in "aeiou" else "a"
            raise fail(f'the text has {article} {key} marker but the sample has no "{key}"')
        return [], [], False
    if isinstance(value, str):
        count = text.count(single)
        if count > 1:
            raise fail(f'{count} {single} markers for one {key}; use "{key}": {{"<{key}_00>": ..., ...}} for several')
        if found_multi:
            raise fail(f"marker {found_multi[0]} in a single-{key} sample; use {single}")
        return [single], [_resolve(value, folder)], count == 0
    if isinstance(value, dict) and value:
        for name, path in value.items():
            if not multi.fullmatch(name) or not isinstance(path, str):
                raise fail(f'{key} key {name!r} must look like "<{key}_00>" and map to a path')
        if single in text:
            raise fail(f'{single} in a multi-{key} sample; use the keys of "{key}" as markers')
        unknown = sorted(set(found_multi) - set(value))
        if unknown:
            raise fail(f"unknown {key} placeholder(s) {', '.join(unknown)}: not keys of \"{key}\"")
        for name in value:
            if found_multi.count(name) != 1:
                raise fail(f"{key} count mismatch: {name} appears {found_multi.count(name)} times in the text (must be once)")
        return list(found_multi), [_resolve(value[m], folder) for m in found_multi], False
    raise fail(f'"{key}" must be a path or a non-empty {{"<{key}_00>": path, ...}} object')


def _resolve(path: str, folder: str) -> str:
    return path if os.path.isabs(path) else os.path.join(folder, path)
