"""The data formats people already have, turned into ours sample by sample.

    native    {"image": path | {"<image_00>": path, ...}, "conversations": [{"role", "content"}, ...]}
    sharegpt  ShareGPT / LLaVA: {"image" or "images": path | [paths],
              "conversations": [{"from": "human" | "gpt" | "system", "value"}, ...]}
    messages  OpenAI style, as LLaMA-Factory and ms-swift write it:
              {"messages": [{"role", "content"}, ...], "images" or "image": [paths] | path}
    (videos likewise: "video" or "videos", with `<video>` markers; a turn may carry
    "reasoning_content", and a foreign sample a "system" prompt, as LLaMA-Factory's column)

A key that no step reads is never dropped silently: in a turn (any format) or a sample of ours
it is a data error naming it; the foreign formats allow extra columns (LLaMA-Factory does), so
there each one is counted and logged (`ignored_keys`).

In the foreign formats every image has one `<image>` in the text, in the order of the list;
with several images they become `<image_00>`, `<image_01>`, ... (videos: `<video_00>`, ...).
A single image without a marker goes in front of the first question, as in ours. `auto` (the default) tells the
formats apart per sample by their keys; naming a format makes any other an error.
"""
from __future__ import annotations

from dataclasses import dataclass

FORMATS = ("auto", "native", "sharegpt", "messages")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
MESSAGE_ROLES = ("system", "user", "assistant")
MARKER = "<image>"
TURN_KEYS = {"native": ("role", "content", "reasoning_content"), "sharegpt": ("from", "value", "reasoning_content"),
             "messages": ("role", "content", "reasoning_content")}
NATIVE_SAMPLE_KEYS = ("id", "image", "video", "conversations")
FOREIGN_SAMPLE_KEYS = ("id", "image", "images", "video", "videos", "conversations", "messages", "system")


def unknown_turn_key(turn: dict, data_format: str) -> str | None:
    """Why a turn has a key that would be lost (None: it has none)."""
    allowed = TURN_KEYS[data_format]
    unknown = [key for key in turn if key not in allowed]
    return f"unknown key {unknown[0]!r} (a turn has {', '.join(allowed)})" if unknown else None


def ignored_keys(record) -> list[str]:
    """Keys of a ShareGPT / messages record that no step reads (counted and logged, not an error)."""
    if detect(record) in ("sharegpt", "messages"):
        return [key for key in record if key not in FOREIGN_SAMPLE_KEYS]
    return []


@dataclass
class Unconvertible:
    """A record that could not be turned into ours; parse_sample reports it as a data error."""

    reason: str
    id: object = None


def detect(record) -> str | None:
    if not isinstance(record, dict):
        return None
    turns = record.get("conversations")
    if isinstance(turns, list) and turns and isinstance(turns[0], dict):
        return "sharegpt" if "from" in turns[0] or "value" in turns[0] else "native"
    if "messages" in record:
        return "messages"
    return None


def to_native(record, data_format: str = "auto"):
    """The record in our format, unchanged if it is ours (or unrecognisable: the sample check
    says what is wrong), or Unconvertible with the reason."""
    found = detect(record)
    if found is None or found == "native" and data_format in ("auto", "native"):
        return record
    sample_id = record.get("id")
    if data_format not in ("auto", found):
        return Unconvertible(f"looks like {found} data, but --data_format is {data_format}; use --data_format "
                             f"{found} (or auto)", sample_id)
    try:
        turns = from_sharegpt(record) if found == "sharegpt" else from_messages(record)
        turns = with_system_prompt(turns, record.get("system"))
        native = with_media({"conversations": turns}, media_of(record, "image"), "image")
        native = with_media(native, media_of(record, "video"), "video")
    except ValueError as e:
        return Unconvertible(f"{found} sample: {e}", sample_id)
    if "id" in record:
        native["id"] = sample_id
    return native


def from_sharegpt(record) -> list[dict]:
    turns = []
    for t, turn in enumerate(record["conversations"]):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise ValueError(f'turn {t} must be an object with "from" and "value"')
        role = SHAREGPT_ROLES.get(turn["from"])
        if role is None:
            raise ValueError(f"turn {t} is from {turn['from']!r}; allowed: {', '.join(SHAREGPT_ROLES)}")
        unknown = unknown_turn_key(turn, "sharegpt")
        if unknown:
            raise ValueError(f"turn {t}: {unknown}")
        turns.append(with_reasoning({"role": role, "content": turn["value"]}, turn))
    return turns


def with_reasoning(native_turn: dict, turn: dict) -> dict:
    if "reasoning_content" in turn:
        native_turn["reasoning_content"] = turn["reasoning_content"]
    return native_turn


def with_system_prompt(turns: list[dict], system) -> list[dict]:
    """A sample-level "system" prompt (LLaMA-Factory's column) as the leading system turn."""
    if system is None:
        return turns
    if not isinstance(system, str):
        raise ValueError('"system" must be text')
    if turns and turns[0]["role"] == "system":
        raise ValueError('a "system" prompt and a system turn; give it once')
    return [{"role": "system", "content": system}] + turns


def from_messages(record) -> list[dict]:
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        raise ValueError('"messages" must be a non-empty list of {"role", "content"}')
    turns = []
    for t, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f'message {t} must be an object with "role" and "content"')
        if message["role"] not in MESSAGE_ROLES:
            raise ValueError(f"message {t} has role {message['role']!r}; allowed: {', '.join(MESSAGE_ROLES)}")
        if not isinstance(message["content"], str):
            raise ValueError(f"message {t}: content must be text with <image> markers (lists of content parts "
                             'are not read); put the image paths in "images"')
        unknown = unknown_turn_key(message, "messages")
        if unknown:
            raise ValueError(f"message {t}: {unknown}")
        turns.append(with_reasoning({"role": message["role"], "content": message["content"]}, message))
    return turns


def media_of(record, key: str) -> list:
    """The paths of a record's images (key "image": "image" or "images") or videos ("video" / "videos")."""
    if key in record and key + "s" in record:
        raise ValueError(f'both "{key}" and "{key}s"; give the paths once')
    paths = record.get(key + "s", record.get(key))
    if paths is None:
        return []
    paths = [paths] if isinstance(paths, str) else paths
    if not isinstance(paths, list) or not all(isinstance(path, str) and path for path in paths):
        raise ValueError(f'"{key}s" must be a path or a list of paths')
    return paths


def with_media(record: dict, paths: list, key: str) -> dict:
    """`record` ({"conversations": turns, ...} in our format) with its images (key "image") or
    videos ("video"): one keeps its `<image>` / `<video>`; several get numbered markers in order."""
    if not paths:
        return record
    if len(paths) == 1:
        return {**record, key: paths[0]}
    marker, turns = f"<{key}>", record["conversations"]
    markers = sum(turn["content"].count(marker) for turn in turns if isinstance(turn["content"], str))
    if markers != len(paths):
        raise ValueError(f"{len(paths)} {key}s but {markers} {marker} markers; each {key} needs one {marker} in "
                         "the text, in the order of the list")
    numbered, k = [], 0
    for turn in turns:
        if not isinstance(turn["content"], str):  # the sample check reports it
            numbered.append(turn)
            continue
        pieces = turn["content"].split(marker)
        content = pieces[0]
        for piece in pieces[1:]:
            content += f"<{key}_{k:02d}>" + piece
            k += 1
        numbered.append({**turn, "content": content})
    return {**record, key: {f"<{key}_{i:02d}>": path for i, path in enumerate(paths)}, "conversations": numbered}
