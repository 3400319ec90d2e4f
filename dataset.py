"""JSON conversations + images -> the tensors MiniCPM-V's forward(data=...) takes.

    dataset = SupervisedDataset("train.json", tokenizer, model.config)
    batch = data_collator([dataset[0], dataset[1]])
    labels = batch.pop("labels")
    output = model(data=batch)

Every sample is checked when the dataset is built (structure, roles, image markers, image
files, token counts); samples that `model_max_length` would cut inside an image or leave
with no trained token are dropped, logged and counted, never replaced by another sample.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass

import torch
from PIL import Image, UnidentifiedImageError
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import Dataset

from minicpmv_ft.chat_tokens import IGNORE_INDEX, ChatEncoder, image_placeholder, image_spans
from minicpmv_ft.samples import SINGLE_IMAGE_MARKER, DataError, Sample, load_records, parse_sample
from minicpmv_ft.slicing import plan_slices, slice_image, view_to_model_input
from minicpmv_ft.versions import detect_version, image_settings

logger = logging.getLogger(__name__)

# Padding value for input_ids. Padded positions are masked out of attention and have label
# -100, so the id only has to be a valid row of the embedding table.
PAD_TOKEN_ID = 0


@dataclass
class EncodedSample:
    """Token-level result of one sample (no pixels)."""

    input_ids: list[int]
    labels: list[int]
    spans: list[tuple[int, int]]  # query blocks, in order
    plans: list  # SlicePlan per image, in order
    drop_reason: str | None = None


class SupervisedDataset(Dataset):
    """Items: input_ids, position_ids, labels [L] (long); pixel_values (list of per-view
    tensors); tgt_sizes int32 [n_views, 2]; image_bound / image_bounds long [n_views, 2]."""

    def __init__(self, data, tokenizer, config, llm_type=None, max_slice_nums=None,
                 model_max_length=2048, base_dir=None):
        self.tokenizer = tokenizer
        self.version = detect_version(config, tokenizer, llm_type)
        self.settings = image_settings(config, self.version, max_slice_nums)
        self.model_max_length = int(model_max_length)
        self.encoder = ChatEncoder(tokenizer, self.version)
        records, self.source, folder = load_records(data, base_dir)
        self.samples = [
            parse_sample(record, i, self.source, folder, self.version.chat.system_allowed)
            for i, record in enumerate(records)
        ]
        self.kept: list[int] = []
        self.dropped: list[tuple[int, object, str]] = []  # (index, id, reason)
        self.token_lengths: list[int] = []  # untruncated length of every sample
        for sample in self.samples:
            encoded = self.encode(sample, [_image_size(sample, p) for p in sample.image_paths])
            self.token_lengths.append(len(encoded.input_ids))
            if encoded.drop_reason is None:
                self.kept.append(sample.index)
            else:
                self.dropped.append((sample.index, sample.sample_id, encoded.drop_reason))
        self._log_summary()

    def _log_summary(self):
        reasons = Counter(reason for _, _, reason in self.dropped)
        logger.info(
            "%s: %d samples, %d kept, %d dropped%s (llm_type=%s, max_slice_nums=%d, model_max_length=%d)",
            self.source, len(self.samples), len(self.kept), len(self.dropped),
            "".join(f"; {n} {r}" for r, n in reasons.items()), self.version.llm_type,
            self.settings.max_slice_nums, self.model_max_length,
        )
        for index, sample_id, reason in self.dropped[:20]:
            logger.warning("%s: dropped sample %d (id %r): %s", self.source, index, sample_id, reason)

    def __len__(self):
        return len(self.kept)

    def encode(self, sample: Sample, image_sizes) -> EncodedSample:
        """Token ids, labels and image spans for a sample whose images have these (W, H) sizes."""
        plans = [plan_slices(size, self.settings) for size in image_sizes]
        placeholders = {
            marker: image_placeholder(plan, self.settings, self.tokenizer, k)
            for k, (marker, plan) in enumerate(zip(sample.markers, plans))
        }
        turns = _substitute(sample, placeholders)
        try:
            ids, labels = self.encoder.encode(turns)
        except ValueError as exc:
            raise sample.error(str(exc)) from None
        spans = image_spans(ids, self.tokenizer, self.settings)
        expected = sum(1 + plan.num_slices for plan in plans)
        unk = self.tokenizer.unk_token_id
        if len(spans) != expected or any(ids[s:e] != [unk] * self.settings.query_num for s, e in spans):
            raise sample.error(
                f"expected {expected} image blocks of {self.settings.query_num} {self.tokenizer.unk_token} "
                f"tokens, found {len(spans)}: the text contains image special tokens "
                f"({self.tokenizer.im_start}, {self.tokenizer.slice_start}, {self.tokenizer.unk_token}, ...)"
            )
        encoded = EncodedSample(ids, labels, spans, plans)
        if len(ids) > self.model_max_length:
            self._truncate(encoded)
        return encoded

    def _truncate(self, encoded: EncodedSample):
        cut = self.model_max_length
        for start, end in self._image_blocks(encoded):
            if start < cut <= end:
                encoded.drop_reason = f"model_max_length {cut} cuts an image span"
                return
        if all(label == IGNORE_INDEX for label in encoded.labels[1:cut]):
            encoded.drop_reason = f"no trained token within model_max_length {cut}"
            return
        encoded.input_ids, encoded.labels = encoded.input_ids[:cut], encoded.labels[:cut]
        encoded.spans = [(s, e) for s, e in encoded.spans if e < cut]
        encoded.plans = encoded.plans[: _images_within(encoded.plans, len(encoded.spans))]

    def _image_blocks(self, encoded: EncodedSample):
        """(first, last) token index of each image's whole placeholder, image id included."""
        tok, ids, blocks, k = self.tokenizer, encoded.input_ids, [], 0
        for plan in encoded.plans:
            n = 1 + plan.num_slices
            first, last = encoded.spans[k][0] - 1, encoded.spans[k + n - 1][1]
            if self.settings.placeholder_scheme == "wrapped" and plan.grid is not None:
                last += 1  # the closing slice token around the grid
            if self.settings.use_image_id and first > 0 and ids[first - 1] == tok.im_id_end_id:
                while first > 0 and ids[first] != tok.im_id_start_id:
                    first -= 1
            blocks.append((first, last))
            k += n
        return blocks

    def __getitem__(self, i):
        sample = self.samples[self.kept[i]]
        images = [_open_image(sample, path) for path in sample.image_paths]
        encoded = self.encode(sample, [image.size for image in images])
        pixel_values, tgt_sizes = [], []
        for image, plan in zip(images, encoded.plans):
            views, _ = slice_image(image, self.settings)
            for view in views:
                tensor, tgt = view_to_model_input(view, self.settings)
                pixel_values.append(tensor)
                tgt_sizes.append(tgt)
        bounds = torch.tensor(encoded.spans, dtype=torch.long).reshape(-1, 2)
        length = len(encoded.input_ids)
        return {
            "input_ids": torch.tensor(encoded.input_ids, dtype=torch.long),
            "position_ids": torch.arange(length, dtype=torch.long),
            "labels": torch.tensor(encoded.labels, dtype=torch.long),
            "attention_mask": torch.ones(length, dtype=torch.long),
            "pixel_values": pixel_values,
            "tgt_sizes": torch.tensor(tgt_sizes, dtype=torch.int32).reshape(-1, 2),
            "image_bound": bounds,
            "image_bounds": bounds,
        }


def _images_within(plans, n_spans: int) -> int:
    """How many whole images the first n_spans query blocks hold."""
    count, used = 0, 0
    for plan in plans:
        used += 1 + plan.num_slices
        if used > n_spans:
            break
        count += 1
    return count


def _substitute(sample: Sample, placeholders: dict[str, str]):
    turns = []
    for role, content in sample.turns:
        for marker, text in placeholders.items():
            content = content.replace(marker, text)
        turns.append([role, content])
    if sample.marker_missing:
        first_user = next(t for t in turns if t[0] == "user")
        first_user[1] = placeholders[SINGLE_IMAGE_MARKER] + "\n" + first_user[1]
    return [tuple(t) for t in turns]


def _image_size(sample: Sample, path: str):
    if not os.path.isfile(path):
        raise sample.error(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError) as exc:
        raise sample.error(f"cannot read image {path}: {exc}") from None


def _open_image(sample: Sample, path: str) -> Image.Image:
    if not os.path.isfile(path):
        raise sample.error(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise sample.error(f"cannot read image {path}: {exc}") from None


def data_collator(examples):
    """Right-pads a list of items into a batch for model(data=batch).

    input_ids pad with PAD_TOKEN_ID, labels with -100, attention_mask with 0, position_ids
    with 0; pixel_values, tgt_sizes and image_bound stay per-sample lists (the remote code
    iterates over them). Text-only samples have empty [0, 2] tgt_sizes and image_bound.
    """
    def pad(key, value):
        return pad_sequence([e[key] for e in examples], batch_first=True, padding_value=value)

    bounds = [e["image_bound"] for e in examples]
    return {
        "input_ids": pad("input_ids", PAD_TOKEN_ID),
        "position_ids": pad("position_ids", 0),
        "labels": pad("labels", IGNORE_INDEX),
        "attention_mask": pad("attention_mask", 0),
        "pixel_values": [e["pixel_values"] for e in examples],
        "tgt_sizes": [e["tgt_sizes"] for e in examples],
        "image_bound": bounds,
        "image_bounds": bounds,
    }
