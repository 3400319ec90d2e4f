"""The data formats people already have, turned into ours sample by sample.

    native    {"image": path | {"<image_00>": path, ...}, "conversations": [{"role", "content"}, ...]}
    sharegpt  ShareGPT / LLaVA: {"image" or "images": path | [paths],
              "conversations": [{"from": "human" | "gpt" | "system", "value"}, ...]}
    messages  OpenAI style, as LLaMA-Factory and ms-swift write it:
              {"messages": [{"role", "content"}, ...], "images" or "image": [paths] | path}

In the foreign formats every image has one `<image>` in the text, in the order of the list;
with several images they become `<image_00>`, `<image_01>`, ... A single image without a
marker goes in front of the first question, as in ours. `auto` (the default) tells the
formats apart per sample by their keys; naming a format makes any other an error.
"""
from __future__ import annotations

from dataclasses import dataclass

FORMATS = ("auto", "native", "sharegpt", "messages")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
MESSAGE_ROLES = ("system", "user", "assistant")
MARKER = "<image>"


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
        native = with_images(turns, images_of(record))
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
        turns.append({"role": role, "content": turn["value"]})
    return turns


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
        turn = {"role": message["role"], "content": message["content"]}
        if "reasoning_content" in message:
            turn["reasoning_content"] = message["reasoning_content"]
        turns.append(turn)
    return turns


def images_of(record) -> list:
    if "image" in record and "images" in record:
        raise ValueError('both "image" and "images"; give the paths once')
    images = record.get("images", record.get("image"))
    if images is None:
        return []
    images = [images] if isinstance(images, str) else images
    if not isinstance(images, list) or not all(isinstance(path, str) and path for path in images):
        raise ValueError('"images" must be a path or a list of paths')
    return images


def with_images(turns: list[dict], images: list) -> dict:
    """Our record: one image keeps its `<image>`; several get numbered markers in order."""
    if not images:
        return {"conversations": turns}
    if len(images) == 1:
        return {"image": images[0], "conversations": turns}
    markers = sum(turn["content"].count(MARKER) for turn in turns if isinstance(turn["content"], str))
    if markers != len(images):
        raise ValueError(f"{len(images)} images but {markers} {MARKER} markers; each image needs one {MARKER} in "
                         "the text, in the order of the list")
    numbered, k = [], 0
    for turn in turns:
        if not isinstance(turn["content"], str):  # the sample check reports it
            numbered.append(turn)
            continue
        pieces = turn["content"].split(MARKER)
        content = pieces[0]
        for piece in pieces[1:]:
            content += f"<image_{k:02d}>" + piece
            k += 1
        numbered.append({**turn, "content": content})
    return {"image": {f"<image_{i:02d}>": path for i, path in enumerate(images)}, "conversations": numbered}
