"""Conversation -> token ids and labels, in the chat format of the checkpoint's version.

Labels follow the Hugging Face convention: aligned with input_ids, shifted by the loss.
A token is trained (label = its id) when it is assistant content or the end-of-turn token
closing an assistant turn; everything else is -100. One exception, MiniCPM-V 2.0: its turns
have no separator, so an assistant turn that is not the last one has no end-of-turn token
in the text; the token that follows it gets the label eos, which trains the model to stop there.

Text is tokenized in chunks whose boundaries are special tokens, so the ids equal those of
tokenizing the whole rendered conversation at once (as inference does); the only boundary
inside plain text (turn header | content) is resolved by tokenizing header+content together.
"""
from __future__ import annotations

import re

from .slicing import SlicePlan
from .versions import ImageSettings, ModelVersion

IGNORE_INDEX = -100


def image_placeholder(plan: SlicePlan, settings: ImageSettings, tokenizer, image_index: int) -> str:
    """The text an image is replaced by, exactly as the version's inference code writes it."""
    unks = tokenizer.unk_token * settings.query_num
    whole = tokenizer.im_start + unks + tokenizer.im_end
    if settings.placeholder_scheme == "wrapped":
        text = whole
        if plan.grid is not None:
            cols, rows = plan.grid
            text += tokenizer.slice_start + "\n".join([whole * cols] * rows) + tokenizer.slice_end
        return text
    text = whole
    if settings.use_image_id:
        text = f"{tokenizer.im_id_start}{image_index}{tokenizer.im_id_end}" + text
    if plan.grid is not None:
        cols, rows = plan.grid
        cell = tokenizer.slice_start + unks + tokenizer.slice_end
        text += "\n".join([cell * cols] * rows)
    return text


class ChatEncoder:
    """Encodes (role, content) turns for one tokenizer and chat format."""

    def __init__(self, tokenizer, version: ModelVersion):
        self.tokenizer = tokenizer
        self.format = version.chat
        fill = {"{bos}": tokenizer.bos_token or "", "{eos}": tokenizer.eos_token or ""}
        self.begin = _fill(self.format.begin, fill)
        self.end_of_turn = _fill(self.format.end_of_turn, fill)
        self.end_of_turn_id = tokenizer.convert_tokens_to_ids(self.end_of_turn)
        if self.end_of_turn_id is None or self.end_of_turn_id == tokenizer.unk_token_id:
            raise ValueError(f"tokenizer has no end-of-turn token {self.end_of_turn!r} for llm_type {version.llm_type}")
        self.default_system = self._default_system() if self.format.default_system_from_template else None
        self._prefix_ids = {role: self._encode(p) for role, p in self.format.turn_prefix.items()}
        # Tokens that give a conversation its structure; inside message content they would
        # silently change the turns, so content holding them is rejected.
        vocab = tokenizer.get_vocab()
        structural = [self.end_of_turn, tokenizer.bos_token, tokenizer.eos_token]
        for prefix in self.format.turn_prefix.values():
            structural += [prefix] if prefix in vocab else re.findall(r"<\|[^|>]+\|>", prefix)
        self.structural_ids = {tokenizer.convert_tokens_to_ids(t) for t in structural if t} - {None}

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _default_system(self) -> str | None:
        """The system turn the checkpoint's own chat template adds when there is none."""
        if not getattr(self.tokenizer, "chat_template", None):
            return None
        rendered = self.tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
        opening = self.begin + self.format.turn_prefix["system"]
        if not rendered.startswith(opening):
            return None
        end = rendered.find(self.end_of_turn, len(opening))
        return rendered[len(opening):end] if end >= 0 else None

    def with_default_system(self, turns):
        if self.default_system is not None and turns[0][0] != "system":
            return [("system", self.default_system)] + list(turns)
        return list(turns)

    def render_text(self, turns) -> str:
        """The conversation as one string (what the ids below decode to, save pending labels)."""
        turns = self.with_default_system(turns)
        parts = [self.begin]
        for i, (role, content) in enumerate(turns):
            parts.append(self.format.turn_prefix[role] + self._content(content))
            if self._eot_written(i, len(turns)):
                parts.append(self.end_of_turn + self.format.after_turn)
        return "".join(parts)

    def _content(self, content: str) -> str:
        return content.strip() if self.format.strip_content else content

    def _eot_written(self, i: int, n_turns: int) -> bool:
        return self.format.end_of_turn_in_text == "every" or i == n_turns - 1

    def encode(self, turns) -> tuple[list[int], list[int]]:
        """(input_ids, labels) for the turns; content containing chat-control tokens raises ValueError."""
        turns = self.with_default_system(turns)
        ids = self._encode(self.begin)
        labels = [IGNORE_INDEX] * len(ids)
        pending_label = None  # 2.0: eos label for the token after a non-final assistant turn
        for i, (role, content) in enumerate(turns):
            prefix_ids = self._prefix_ids[role]
            chunk = self._encode(self.format.turn_prefix[role] + self._content(content))
            n = _common_prefix(chunk, prefix_ids)
            bad = self.structural_ids.intersection(chunk[n:])
            if bad:
                token = self.tokenizer.convert_ids_to_tokens(sorted(bad)[0])
                raise ValueError(f"{role} turn {i} contains the chat-control token {token!r} in its text")
            trained = role == "assistant"
            chunk_labels = [IGNORE_INDEX] * n + (chunk[n:] if trained else [IGNORE_INDEX] * (len(chunk) - n))
            if pending_label is not None and chunk_labels:
                chunk_labels[0] = pending_label
                pending_label = None
            ids += chunk
            labels += chunk_labels
            if self._eot_written(i, len(turns)):
                ids.append(self.end_of_turn_id)
                labels.append(self.end_of_turn_id if trained else IGNORE_INDEX)
                after = self._encode(self.format.after_turn)
                ids += after
                labels += [IGNORE_INDEX] * len(after)
            elif trained:
                pending_label = self.end_of_turn_id
        return ids, labels


def _fill(template: str, values: dict) -> str:
    for key, value in values.items():
        template = template.replace(key, value)
    return template


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < len(a) and n < len(b) and a[n] == b[n]:
        n += 1
    return n


def image_spans(ids, tokenizer, settings: ImageSettings) -> list[tuple[int, int]]:
    """(start, end) of every image/slice query block: start after the opening token, end at
    the closing token (so end - start == query_num), in order of appearance."""
    openers = {tokenizer.im_start_id}
    closers = {tokenizer.im_end_id}
    if settings.placeholder_scheme == "per_slice":
        openers.add(tokenizer.slice_start_id)
        closers.add(tokenizer.slice_end_id)
    spans, start = [], None
    for pos, token in enumerate(ids):
        if token in openers:
            start = pos + 1
        elif token in closers and start is not None:
            spans.append((start, pos))
            start = None
    return spans
