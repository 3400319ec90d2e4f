"""Conversation -> token ids and labels, exactly as the checkpoint's inference encodes it.

The version's chat format renders the whole conversation (image placeholders included) into
one string with the trained character ranges recorded; the tokenizer encodes that string in
one call, as the checkpoint's chat()/processor does, so the ids are the inference ids by
construction. Each token is then labelled by the character it starts at: a token starting
inside an answer (or its end-of-turn token) is trained (label = its id), every other one gets
-100. A piece that straddles the end of an answer therefore counts as answer, one that
straddles its start as prompt. Labels follow the Hugging Face convention: aligned with
input_ids, shifted by the loss.

Image query blocks are located from the offsets recorded while the placeholders were built,
never by searching the ids.
"""
from __future__ import annotations

import re
from bisect import bisect_left
from dataclasses import dataclass
from operator import itemgetter
from types import SimpleNamespace

from .chat_formats import TextBuilder, Turn
from .slicing import SlicePlan, plan_slices
from .versions import ImageSettings, ModelVersion

IGNORE_INDEX = -100
# Padding value for input_ids. Padded positions are masked out of attention and have label
# IGNORE_INDEX, so the id only has to be a valid row of the embedding table.
PAD_TOKEN_ID = 0


@dataclass(frozen=True)
class Placeholder:
    """The text an image is replaced by, with the character ranges of its query blocks."""

    text: str
    queries: tuple[tuple[int, int], ...]  # [start, end) of each run of unk tokens, in order


# The tokenizer's string attributes that placeholders are made of.
PLACEHOLDER_TOKENS = ("unk_token", "im_start", "im_end", "slice_start", "slice_end", "im_id_start", "im_id_end")


def placeholder_tokens(tokenizer) -> SimpleNamespace:
    """The PLACEHOLDER_TOKENS of a tokenizer as plain attributes (each read through the
    tokenizer's __getattr__ costs microseconds, which a data check of 200k samples notices)."""
    return SimpleNamespace(**{name: getattr(tokenizer, name, None) for name in PLACEHOLDER_TOKENS})


def image_placeholder(plan: SlicePlan, settings: ImageSettings, tokenizer, image_index: int) -> Placeholder:
    """An image's placeholder exactly as the version's inference code writes it (`tokenizer`:
    the tokenizer or its placeholder_tokens)."""
    unks = tokenizer.unk_token * settings.query_num
    pieces, queries = [], []
    length = 0

    def add(text, is_query=False):
        nonlocal length
        if is_query:
            queries.append((length, length + len(text)))
        pieces.append(text)
        length += len(text)

    def block(opener, closer):
        add(opener), add(unks, True), add(closer)

    per_slice = settings.placeholder_scheme == "per_slice"
    if per_slice and settings.use_image_id:
        add(f"{tokenizer.im_id_start}{image_index}{tokenizer.im_id_end}")
    block(tokenizer.im_start, tokenizer.im_end)
    if plan.grid is not None:
        cols, rows = plan.grid
        opener, closer = (tokenizer.slice_start, tokenizer.slice_end) if per_slice else (tokenizer.im_start, tokenizer.im_end)
        if not per_slice:
            add(tokenizer.slice_start)
        for r in range(rows):
            if r:
                add("\n")
            for _ in range(cols):
                block(opener, closer)
        if not per_slice:
            add(tokenizer.slice_end)
    return Placeholder("".join(pieces), tuple(queries))


def video_placeholder(frame_size, frames, settings: ImageSettings, tokenizer) -> Placeholder:
    """A video's placeholder as chat() writes the frames it is given: each frame's image
    placeholder (`settings`: the version's frame settings, no image ids), joined by "\n". With
    4.5's groups (`frames`: a FramePlan) only the first frame of a group has one: its processor
    drops the others' placeholders and the newline before each."""
    frame = image_placeholder(plan_slices(frame_size, settings), settings, tokenizer, 0)
    pieces, queries, length = [], [], 0
    for k in range(sum(frames.kept)):
        if k:
            pieces.append("\n")
            length += 1
        queries += [(length + start, length + end) for start, end in frame.queries]
        pieces.append(frame.text)
        length += len(frame.text)
    return Placeholder("".join(pieces), tuple(queries))


def tokenize_with_starts(tokenizer, text: str, add_special_tokens: bool) -> tuple[list[int], list[int]]:
    """(ids, start character of each token) of `tokenizer(text)`; tokens the tokenizer adds
    itself (a BOS) start at 0."""
    if tokenizer.is_fast:
        encoded = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        return encoded["input_ids"], [start for start, _ in encoded["offset_mapping"]]
    ids = tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]
    return ids, _sentencepiece_starts(tokenizer, text, ids)


def tokenize_many_with_starts(tokenizer, texts: list[str], add_special_tokens: bool) -> list[tuple[list[int], list[int]]]:
    """tokenize_with_starts of each text; a fast tokenizer encodes them in one batch call (the
    same ids, without the per-call overhead that dominated the data check of large sets)."""
    if not tokenizer.is_fast or not texts:
        return [tokenize_with_starts(tokenizer, text, add_special_tokens) for text in texts]
    backend = tokenizer.backend_tokenizer
    if backend.truncation is not None or backend.padding is not None:  # left set by some other call
        encoded = tokenizer(texts, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        return [(ids, [start for start, _ in offsets])
                for ids, offsets in zip(encoded["input_ids"], encoded["offset_mapping"])]
    # The Rust tokenizer itself: what tokenizer(texts) calls, without converting every encoding
    # into Python dicts of attention masks and type ids first.
    first = itemgetter(0)
    return [(encoding.ids, list(map(first, encoding.offsets)))
            for encoding in backend.encode_batch(texts, add_special_tokens=add_special_tokens)]


def _sentencepiece_starts(tokenizer, text: str, ids: list[int]) -> list[int]:
    """Starts for a slow sentencepiece tokenizer (2.0): it splits the text at its added tokens
    and encodes each run between them with sentencepiece, whose pieces carry byte offsets."""
    pieces, starts, offset = [], [], 0
    for chunk in tokenizer.tokens_trie.split(text):
        if chunk in tokenizer.added_tokens_encoder:
            pieces.append(tokenizer.added_tokens_encoder[chunk])
            starts.append(offset)
        elif chunk:
            char_at_byte = [k for k, char in enumerate(chunk) for _ in char.encode("utf-8")] + [len(chunk)]
            for piece in tokenizer.sp_model.encode(chunk, out_type="proto").pieces:
                pieces.append(piece.id)
                starts.append(offset + char_at_byte[piece.begin])
        offset += len(chunk)
    extra = len(ids) - len(pieces)
    if extra < 0 or ids[extra:] != pieces:
        raise RuntimeError(f"{type(tokenizer).__name__}: cannot align its tokens with the text; "
                           "training labels would be unreliable")
    return [0] * extra + starts


@dataclass
class Encoding:
    """Token-level result of one conversation."""

    input_ids: list[int]
    labels: list[int]
    queries: list[list[tuple[int, int]]]  # per image: (start, end) token span of each query block
    blocks: list[tuple[int, int]]  # per image: (first, last) token of its whole placeholder


# Grounding markup (`<ref>cat</ref><box>x1 y1 x2 y2</box>`): special tokens of the 2.5+
# tokenizers that data is meant to contain; samples.py checks the coordinates.
GROUNDING_TOKENS = ("<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>", "<point>", "</point>")


THINK_OPEN = "<think>"  # a thinking model's reasoning block, in an answer written as text


class ChatEncoder:
    """Encodes turns for one tokenizer and version."""

    def __init__(self, tokenizer, version: ModelVersion, keep_earlier_reasoning: bool = False):
        self.tokenizer = tokenizer
        self.version = version
        self.format = version.chat
        self.context = self.format.context(tokenizer)
        self.keep_earlier_reasoning = keep_earlier_reasoning
        self.stop_label = tokenizer.convert_tokens_to_ids(self.format.end_of_turn_token(self.context))
        # Typed into text, these would silently change the turns or the image blocks: the
        # tokenizer's special and image tokens (not those that are ordinary characters, as 2.5's
        # pad "!"), and the format's turn markers (plain text in 2.0's vocabulary).
        image_tokens = [getattr(tokenizer, name, None) for name in
                        ("im_start", "im_end", "slice_start", "slice_end", "im_id_start", "im_id_end")]
        added_special = [t.content for t in tokenizer.added_tokens_decoder.values() if t.special]
        special = [t for t in [*added_special, *tokenizer.all_special_tokens, *image_tokens]
                   if t in tokenizer.added_tokens_encoder and len(t) > 1]
        allowed = set(GROUNDING_TOKENS)  # grounding text: tokenized as these special tokens, as chat() does
        self.forbidden = sorted((set(special) - allowed) | set(self.format.structural), key=lambda t: (-len(t), t))
        self._forbidden_pattern = re.compile("|".join(map(re.escape, self.forbidden))) if self.forbidden else None
        self.unk_id, self.unk_length = tokenizer.unk_token_id, len(tokenizer.unk_token or "")  # query tokens (not the native versions')

    def check_text(self, turns: list[Turn]):
        """ValueError naming the turn when content holds a special or chat-control token."""
        if self._forbidden_pattern is None:
            return
        for turn in turns:
            texts = [p for p in turn.parts if isinstance(p, str)] + [turn.reasoning or ""]
            found = [m.group() for text in texts for m in self._forbidden_pattern.finditer(text)]
            for token in self.forbidden:  # the first in self.forbidden's order, as reported before
                if token in found:
                    raise ValueError(f"{turn.role} turn {turn.index} contains {token!r}, a special token of this "
                                     "model, in its text; write it differently (images go in through their markers)")

    def prepare(self, turns: list[Turn]) -> list[Turn]:
        """Reasoning taken out of `<think>...</think>` content (thinking formats), or refused."""
        prepared = []
        for turn in turns:
            if turn.role == "assistant" and self.format.thinking and turn.reasoning is None:
                reasoning, answer = self.format.split_reasoning("".join(turn.parts))
                turn = Turn(turn.role, [answer], turn.index, reasoning)
            elif not self.format.thinking and (turn.reasoning is not None or THINK_OPEN in "".join(
                    part for part in turn.parts if isinstance(part, str))):
                what = "reasoning_content" if turn.reasoning is not None else f"a {THINK_OPEN} block"
                raise ValueError(f"turn {turn.index} has {what}, but MiniCPM-V {self.version.name} has no thinking "
                                 "mode; put the text in the answer or drop it")
            prepared.append(turn)
        return prepared

    def render(self, turns: list[Turn]) -> TextBuilder:
        out = TextBuilder()
        self.format.render(self.prepare(turns), out, self.context, self.keep_earlier_reasoning)
        return out

    def encode(self, turns: list[Turn]) -> Encoding:
        rendered = self.render_checked(turns)
        return self.label(rendered, *tokenize_with_starts(self.tokenizer, rendered.text,
                                                          self.version.encode_adds_special_tokens))

    def render_checked(self, turns: list[Turn]) -> TextBuilder:
        """The conversation as the one string the tokenizer encodes (ValueError for text that
        holds a special token)."""
        self.check_text(turns)
        return self.render(turns)

    def label(self, rendered: TextBuilder, ids: list[int], starts: list[int]) -> Encoding:
        """Labels and image spans of `rendered`, tokenized as (ids, start character of each)."""
        labels = [IGNORE_INDEX] * len(ids)
        for begin, end in rendered.trained:
            for i in range(bisect_left(starts, begin), bisect_left(starts, end)):
                labels[i] = ids[i]
        for position in rendered.stops:  # 2.0: the token after a non-final answer learns "stop here"
            i = bisect_left(starts, position)
            if i < len(ids):
                labels[i] = self.stop_label
        queries, blocks = [], []
        for offset, placeholder in rendered.images:
            queries.append([self._query_span(ids, starts, offset + a, offset + b) for a, b in placeholder.queries])
            blocks.append((bisect_left(starts, offset), bisect_left(starts, offset + len(placeholder.text)) - 1))
        return Encoding(ids, labels, queries, blocks)

    def _query_span(self, ids, starts, begin: int, end: int) -> tuple[int, int]:
        first, last = bisect_left(starts, begin), bisect_left(starts, end)
        if ids[first:last].count(self.unk_id) != last - first or last - first != (end - begin) // self.unk_length:
            raise ValueError(f"an image placeholder did not encode as {self.tokenizer.unk_token} tokens "
                             "(text next to an image marker merged with it)")
        return first, last
