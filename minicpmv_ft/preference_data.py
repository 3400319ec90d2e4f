"""Preference pairs (`--method dpo`): a prompt conversation and two answers, in
the formats people have, each pair turned into two training samples of ours that differ only in
their last assistant turn, so the chosen and the rejected answer are encoded exactly as SFT
encodes an answer (same template, same trained tokens).

    native    {"id", "image" / "video", "conversations": [..., a user turn],
               "chosen": answer, "rejected": answer, "reference_logps": [chosen, rejected]
               (optional)}; an answer is a string or {"content", "reasoning_content"}
               (thinking versions)
    rlaif-v   RLAIF-V's columns: {"question", "chosen", "rejected", "image": path | {"path", "bytes"},
               "logps" (optional reference log-probs, as RLAIF-V writes them: RLAIF_V_LOGPS)};
               its other columns (ds_name, origin_dataset, origin_split, idx, image_path) are
               not read
    sharegpt  LLaMA-Factory: {"conversations": [{"from", "value"}, ..., a human turn],
               "chosen": {"from": "gpt", "value"}, "rejected": {...}, "images": [paths]}
    messages  ms-swift: {"messages": [..., {"role": "assistant", "content": chosen}],
               "rejected_response": text, "images": [paths]}, or (ms-swift >= 3.8)
               "rejected_messages": the same prompt ending with the rejected answer, with
               "rejected_images" / "rejected_videos" equal to "images" / "videos" where given

    pair = to_pair(record)      # PairRecords (two records in an SFT format) or Unconvertible
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

from .data_formats import Unconvertible

PAIR_FORMATS = ("native", "rlaif-v", "sharegpt", "messages")
# RLAIF-V's logps column, as its reference pass (muffin/eval/muffin_inference_logp.py) writes it
# and its dataset (muffin/data/datasets.py) reads it: a JSON string of {"logps": [six values]}
# (or of the bare list, which its reader also takes), the reference model's log-probs of the
# chosen answer then the rejected one, each as the sum over the answer's tokens, their mean and
# the per-token list. Training takes the two sums.
RLAIF_V_LOGPS = ("chosen sum", "chosen mean", "chosen per-token list", "rejected sum", "rejected mean",
                 "rejected per-token list")
# ms-swift's keys of the rejected side (besides "messages" and its media)
MESSAGES_REJECTED_KEYS = ("rejected_response", "rejected_messages", "rejected_images", "rejected_videos")
RLAIF_V_KEYS = ("id", "question", "chosen", "rejected", "image", "logps")
RLAIF_V_UNREAD = ("ds_name", "origin_dataset", "origin_split", "idx", "image_path")


@dataclass
class PairRecords:
    """The two sides of a pair as SFT records (each goes through data_formats.to_native and
    samples.parse_sample like any sample); `reference`: the data's own reference log-probs of
    (chosen, rejected), summed over each answer's tokens, or None."""

    chosen: dict
    rejected: dict
    reference: tuple[float, float] | None = None


def pair_format(record) -> str | None:
    """Which pair format a record is in, by its keys (None: not a preference pair)."""
    if not isinstance(record, dict):
        return None
    if "rejected_response" in record or "rejected_messages" in record:
        return "messages"
    if "chosen" not in record or "rejected" not in record:
        return None
    if "question" in record:
        return "rlaif-v"
    turns = record.get("conversations")
    if isinstance(turns, list) and turns and isinstance(turns[0], dict) and ("from" in turns[0] or "value" in turns[0]):
        return "sharegpt"
    return "native"


def to_pair(record, data_format: str = "auto"):
    """PairRecords of a pair record, or Unconvertible with the reason."""
    found = pair_format(record)
    sample_id = record.get("id") if isinstance(record, dict) else None
    if found is None:
        return Unconvertible('not a preference pair: it needs a prompt and "chosen" and "rejected" answers (or '
                             'ms-swift\'s "messages" + "rejected_response" or "rejected_messages")', sample_id)
    if data_format not in ("auto", found):
        return Unconvertible(f"looks like {found} pair data, but --data_format is {data_format}; use --data_format "
                             f"{found} (or auto)", sample_id)
    try:
        pair = {"native": _native, "rlaif-v": _rlaif_v, "sharegpt": _sharegpt, "messages": _messages}[found](record)
    except ValueError as e:
        return Unconvertible(f"{found} pair: {e}", sample_id)
    if _answer_text(pair.chosen) == _answer_text(pair.rejected):
        return Unconvertible("the chosen and the rejected answer are the same: the pair teaches nothing", sample_id)
    return pair


def _answer_text(record: dict):
    """The last turn of an SFT record (either format) as comparable text."""
    turn = (record.get("conversations") or record.get("messages"))[-1]
    return tuple(turn.get(key) for key in ("content", "value", "reasoning_content"))


def _prompt(turns, role_key: str, user_roles: tuple[str, ...]) -> list:
    if not isinstance(turns, list) or not turns:
        raise ValueError("the prompt conversation is empty")
    last = turns[-1]
    if not isinstance(last, dict) or last.get(role_key) not in user_roles:
        raise ValueError("the prompt must end with a user turn (the answers follow it)")
    return list(turns)


def _answer(value, name: str, role: dict, text_key: str, allowed: tuple[str, ...]) -> dict:
    """An answer (a string, or a turn object with `allowed` keys) as the format's assistant turn."""
    if isinstance(value, str):
        turn = {text_key: value}
    elif isinstance(value, dict):
        unknown = [key for key in value if key not in allowed]
        if unknown:
            raise ValueError(f'"{name}" has an unknown key {unknown[0]!r} (an answer has {", ".join(allowed)})')
        for key in role:
            if key in value and value[key] not in ("assistant", "gpt"):
                raise ValueError(f'"{name}" is from {value[key]!r}; an answer is the assistant\'s')
        turn = {key: value[key] for key in allowed if key in value and key not in role}
    else:
        raise ValueError(f'"{name}" must be text or an answer object')
    if not isinstance(turn.get(text_key), str) or not turn[text_key].strip():
        raise ValueError(f'"{name}" is empty')
    return {**role, **turn}


def _sides(record: dict, prompt: list, key: str, chosen: dict, rejected: dict, drop=()) -> PairRecords:
    rest = {k: v for k, v in record.items() if k not in ("chosen", "rejected", key, *drop)}
    return PairRecords({**rest, key: prompt + [chosen]}, {**rest, key: prompt + [rejected]})


def _native(record):
    prompt = _prompt(record.get("conversations"), "role", ("user",))
    role, allowed = {"role": "assistant"}, ("role", "content", "reasoning_content")
    pair = _sides(record, prompt, "conversations", _answer(record["chosen"], "chosen", role, "content", allowed),
                  _answer(record["rejected"], "rejected", role, "content", allowed), drop=("reference_logps",))
    reference = record.get("reference_logps")
    if reference is not None:
        if not isinstance(reference, (list, tuple)) or len(reference) != 2:
            raise ValueError('"reference_logps" must be 2 numbers (the chosen and the rejected answer\'s summed '
                             'log-probs under the reference model)')
        pair.reference = tuple(log_prob(value, f'"reference_logps" {side}')
                               for value, side in zip(reference, ("chosen", "rejected")))
    return pair


def log_prob(value, what: str) -> float:
    """A summed log-probability of the data as a float; ValueError naming `what` unless it is a
    finite number at most 0 (true / false are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value > 0:
        raise ValueError(f"{what} is {value!r}: a log-probability is a finite number at most 0")
    return float(value)


def _sharegpt(record):
    prompt = _prompt(record.get("conversations"), "from", ("human", "user"))
    role, allowed = {"from": "gpt"}, ("from", "value", "reasoning_content")
    return _sides(record, prompt, "conversations", _answer(record["chosen"], "chosen", role, "value", allowed),
                  _answer(record["rejected"], "rejected", role, "value", allowed))


def _messages(record):
    messages = record.get("messages")
    if not isinstance(messages, list) or len(messages) < 2 or not isinstance(messages[-1], dict) \
            or messages[-1].get("role") != "assistant":
        raise ValueError('"messages" must end with the chosen answer (an assistant message)')
    prompt = _prompt(messages[:-1], "role", ("user",))
    role, allowed = {"role": "assistant"}, ("role", "content", "reasoning_content")
    chosen = _answer(messages[-1], "chosen", role, "content", allowed)
    if "rejected_response" in record and "rejected_messages" in record:
        raise ValueError('both "rejected_response" and "rejected_messages": give one')
    if "rejected_response" in record:
        rejected = _answer(record["rejected_response"], "rejected_response", role, "content", allowed)
    else:
        rejected = _answer(_rejected_messages_answer(record, messages), "rejected_messages", role, "content", allowed)
    return _sides(record, prompt, "messages", chosen, rejected, drop=MESSAGES_REJECTED_KEYS)


def _rejected_messages_answer(record: dict, messages: list):
    """The last turn of ms-swift's "rejected_messages", which must repeat the chosen side's prompt
    and media: a pair here is one prompt with two answers (scored against one reference)."""
    rejected = record["rejected_messages"]
    if not isinstance(rejected, list) or len(rejected) < 2 or not isinstance(rejected[-1], dict) \
            or rejected[-1].get("role") != "assistant":
        raise ValueError('"rejected_messages" must end with the rejected answer (an assistant message)')
    if rejected[:-1] != messages[:-1]:
        raise ValueError('"rejected_messages" asks another prompt than "messages" (a pair shares its prompt)')
    for media in ("images", "videos"):
        if f"rejected_{media}" in record and record[f"rejected_{media}"] != record.get(media):
            raise ValueError(f'"rejected_{media}" differs from "{media}" (a pair shares its prompt\'s media)')
    return rejected[-1]


def _rlaif_v(record):
    unknown = [key for key in record if key not in RLAIF_V_KEYS + RLAIF_V_UNREAD]
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (an RLAIF-V pair has {', '.join(RLAIF_V_KEYS)}; "
                         f"{', '.join(RLAIF_V_UNREAD)} are not read)")
    question = record["question"]
    if not isinstance(question, str) or not question.strip():
        raise ValueError('"question" must be text')
    image = record.get("image")
    if isinstance(image, dict):
        if image.get("bytes") is not None:
            raise ValueError("image bytes are read from Parquet files (and written out beside them); give this "
                             "image as a path")
        image = image.get("path")
    role, allowed = {"role": "assistant"}, ("content",)
    sides = {name: {"role": "assistant", "content": _answer(record[name], name, role, "content", allowed)["content"]}
             for name in ("chosen", "rejected")}
    base = {"conversations": [{"role": "user", "content": question}]}
    if "id" in record:
        base["id"] = record["id"]
    if image is not None:
        base["image"] = image
    pair = _sides(base, base["conversations"], "conversations", sides["chosen"], sides["rejected"])
    if record.get("logps") is not None:
        pair.reference = _rlaif_v_reference(record["logps"])
    return pair


def _rlaif_v_reference(logps) -> tuple[float, float]:
    """The (chosen, rejected) sums of an RLAIF-V logps value (RLAIF_V_LOGPS), checked whole."""
    expected = (f'"logps" must be RLAIF-V\'s {len(RLAIF_V_LOGPS)} values ({", ".join(RLAIF_V_LOGPS)}), '
                'as a list or a JSON string of the list or of {"logps": list}')
    if isinstance(logps, str):
        try:
            logps = json.loads(logps)
        except json.JSONDecodeError as error:
            raise ValueError(f'"logps" is not JSON ({error.msg} at character {error.pos}); {expected}') from None
    if isinstance(logps, dict) and list(logps) == ["logps"]:
        logps = logps["logps"]
    if not isinstance(logps, (list, tuple)) or len(logps) != len(RLAIF_V_LOGPS):
        found = f"{len(logps)} values" if isinstance(logps, (list, tuple)) else type(logps).__name__
        raise ValueError(f"{expected}; found {found}")
    for value, name in zip(logps, RLAIF_V_LOGPS):
        if name.endswith("list"):
            if not isinstance(value, (list, tuple)):
                raise ValueError(f'"logps" {name} is {type(value).__name__}, not a list; {expected}')
        else:
            log_prob(value, f'"logps" {name}')
    return float(logps[0]), float(logps[3])
