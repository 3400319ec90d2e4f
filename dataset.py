"""JSON conversations + images -> the tensors MiniCPM-V's forward(data=...) takes.

    dataset = SupervisedDataset("train.json", tokenizer, model.config)
    batch = data_collator([dataset[0], dataset[1]])
    labels = batch.pop("labels")
    output = model(data=batch)

Every sample is checked when the dataset is built (structure, roles, image markers, image
files, token counts), with the same code check_data.py runs. A sample that fails stops the
build with its file, index, id and reason (or, with skip_bad_samples, is left out and
counted); samples that `model_max_length` would cut inside an image or leave with no trained
token are dropped, logged and counted, never replaced by another sample.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
from collections import Counter
from dataclasses import dataclass, field

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
    plans: list  # SlicePlan per image kept after truncation, in order
    all_plans: list  # SlicePlan per image of the sample
    blocks: list[tuple[int, int]]  # (first, last) token of each image's whole placeholder
    length_before_truncation: int
    drop_reason: str | None = None


@dataclass
class SampleReport:
    """What the check of one sample found (check_data.py reports these)."""

    index: int
    sample_id: object
    status: str  # "ok", "truncated", "dropped" or "failed"
    reason: str | None = None
    tokens: int = 0  # before truncation
    image_tokens: int = 0  # placeholder tokens of all images (query blocks and their markers)
    views_per_image: list[int] = field(default_factory=list)  # 1 + slices, per image


class SupervisedDataset(Dataset):
    """Items: input_ids, position_ids, labels [L] (long); pixel_values (list of per-view
    tensors); tgt_sizes int32 [n_views, 2]; image_bound / image_bounds long [n_views, 2]."""

    def __init__(self, data, tokenizer, config, llm_type=None, max_slice_nums=None,
                 model_max_length=2048, base_dir=None, skip_bad_samples=False, verify_images=False,
                 num_workers=1, progress=False):
        self.tokenizer = tokenizer
        self.version = detect_version(config, tokenizer, llm_type)
        self.settings = image_settings(config, self.version, max_slice_nums)
        self.model_max_length = int(model_max_length)
        self.encoder = ChatEncoder(tokenizer, self.version)
        self.verify_images = verify_images
        self.records, self.source, self.folder = load_records(data, base_dir)
        results = _run_checks(self, len(self.records), num_workers, progress)
        self.reports = [report for report, _ in results]
        self.samples = {sample.index: sample for _, sample in results if sample is not None}
        self.kept = [r.index for r in self.reports if r.status in ("ok", "truncated")]
        self.dropped = [(r.index, r.sample_id, r.reason) for r in self.reports if r.status == "dropped"]
        self.failed = [(r.index, r.sample_id, r.reason) for r in self.reports if r.status == "failed"]
        if self.failed and not skip_bad_samples:
            index, sample_id, reason = self.failed[0]
            more = f" (and {len(self.failed) - 1} more failing samples: run check_data.py for all of them)" \
                if len(self.failed) > 1 else ""
            raise DataError(self.source, index, sample_id, reason + more)
        self._log_summary()

    def check(self, index: int) -> tuple[SampleReport, Sample | None]:
        """Runs sample `index` through the training preprocessing; never raises DataError."""
        record = self.records[index]
        sample_id = record.get("id", index) if isinstance(record, dict) else None
        try:
            sample = parse_sample(record, index, self.source, self.folder, self.version.chat.system_allowed)
            if self.verify_images:
                encoded = self._tensors(sample)[0]
            else:
                encoded = self.encode_from_headers(sample)
        except DataError as error:
            return SampleReport(index, sample_id, "failed", error.reason), None
        report = SampleReport(index, sample_id, "ok", tokens=encoded.length_before_truncation,
                              image_tokens=sum(last - first + 1 for first, last in encoded.blocks),
                              views_per_image=[1 + plan.num_slices for plan in encoded.all_plans])
        if encoded.drop_reason:
            report.status, report.reason = "dropped", encoded.drop_reason
            return report, None
        if encoded.length_before_truncation > len(encoded.input_ids):
            report.status = "truncated"
        return report, sample

    def _log_summary(self):
        reasons = Counter(reason for _, _, reason in self.dropped)
        logger.info(
            "%s: %d samples, %d kept, %d dropped%s, %d failed and skipped (llm_type=%s, max_slice_nums=%d, "
            "model_max_length=%d)", self.source, len(self.records), len(self.kept), len(self.dropped),
            "".join(f"; {n} {r}" for r, n in reasons.items()), len(self.failed), self.version.llm_type,
            self.settings.max_slice_nums, self.model_max_length,
        )
        for kind, entries in (("dropped", self.dropped), ("skipped failing", self.failed)):
            for index, sample_id, reason in entries[:20]:
                logger.warning("%s: %s sample %d (id %r): %s", self.source, kind, index, sample_id, reason)

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
        encoded = EncodedSample(ids, labels, spans, plans, plans, self._image_blocks(ids, spans, plans), len(ids))
        if len(ids) > self.model_max_length:
            self._truncate(encoded)
        return encoded

    def encode_from_headers(self, sample: Sample) -> EncodedSample:
        """encode() with image sizes read from the files' headers (no pixel decoding)."""
        return self.encode(sample, [_read_image(sample, path, decode=False) for path in sample.image_paths])

    def _truncate(self, encoded: EncodedSample):
        cut = self.model_max_length
        for start, end in encoded.blocks:
            if start < cut <= end:
                encoded.drop_reason = f"model_max_length {cut} cuts an image span"
                return
        if all(label == IGNORE_INDEX for label in encoded.labels[1:cut]):
            encoded.drop_reason = f"no trained token within model_max_length {cut}"
            return
        encoded.input_ids, encoded.labels = encoded.input_ids[:cut], encoded.labels[:cut]
        encoded.spans = [(s, e) for s, e in encoded.spans if e < cut]
        encoded.plans = encoded.plans[: _images_within(encoded.plans, len(encoded.spans))]

    def _image_blocks(self, ids, spans, plans):
        """(first, last) token index of each image's whole placeholder, image id included."""
        tok, blocks, k = self.tokenizer, [], 0
        for plan in plans:
            n = 1 + plan.num_slices
            first, last = spans[k][0] - 1, spans[k + n - 1][1]
            if self.settings.placeholder_scheme == "wrapped" and plan.grid is not None:
                last += 1  # the closing slice token around the grid
            if self.settings.use_image_id and first > 0 and ids[first - 1] == tok.im_id_end_id:
                while first > 0 and ids[first] != tok.im_id_start_id:
                    first -= 1
            blocks.append((first, last))
            k += n
        return blocks

    def __getitem__(self, i):
        encoded, pixel_values, tgt_sizes = self._tensors(self.samples[self.kept[i]])
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

    def _tensors(self, sample: Sample):
        """(encoded sample, pixel tensors of every kept view, their tgt_sizes) from the image files."""
        images = [_read_image(sample, path, decode=True) for path in sample.image_paths]
        encoded = self.encode(sample, [image.size for image in images])
        pixel_values, tgt_sizes = [], []
        for image in images[: len(encoded.plans)]:
            views, _ = slice_image(image, self.settings)
            for view in views:
                tensor, tgt = view_to_model_input(view, self.settings)
                pixel_values.append(tensor)
                tgt_sizes.append(tgt)
        return encoded, pixel_values, tgt_sizes


def _run_checks(dataset: SupervisedDataset, count: int, num_workers: int, progress: bool):
    """dataset.check(i) for every sample, in worker processes when num_workers > 1."""
    indices = range(count)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=count, desc=f"checking {dataset.source}", unit="sample")
    results = []
    if num_workers > 1 and count > 1:
        global _CHECKED
        _CHECKED = dataset  # inherited by the forked workers, not pickled per task
        with multiprocessing.get_context("fork").Pool(num_workers, initializer=_single_threaded) as pool:
            for result in pool.imap(_check_in_worker, indices, chunksize=max(1, min(64, count // (4 * num_workers)))):
                results.append(result)
                if bar:
                    bar.update()
        _CHECKED = None
    else:
        for index in indices:
            results.append(dataset.check(index))
            if bar:
                bar.update()
    if bar:
        bar.close()
    return results


_CHECKED = None


def _single_threaded():
    # OpenMP is not fork-safe: a forked child entering a parallel region that the parent
    # already used can hang. One thread per worker, as torch's DataLoader workers do.
    torch.set_num_threads(1)


def _check_in_worker(index):
    return _CHECKED.check(index)


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


def _read_image(sample: Sample, path: str, decode: bool):
    """The decoded RGB image (decode=True) or just its (W, H) from the header; DataError if unreadable."""
    if not os.path.isfile(path):
        raise sample.error(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            return image.convert("RGB") if decode else image.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
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
