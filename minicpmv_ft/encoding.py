"""The one seam between a checked sample and model tensors:

    record --parse_sample--> Sample --SampleEncoder.encode--> EncodedSample --.item--> tensors

`check_records` runs every record through the same steps (optionally decoding every image)
and reports what it found; training (dataset.py) and check_data.py both use it.
"""
from __future__ import annotations

import multiprocessing
import os
from dataclasses import dataclass, field

import torch
from PIL import Image, UnidentifiedImageError

from .chat_tokens import IGNORE_INDEX, ChatEncoder, image_placeholder
from .images import frame_count, to_rgb
from .samples import DataError, Sample, parse_sample
from .slicing import plan_slices, slice_image, view_to_model_input
from .versions import ImageSettings, ModelVersion


@dataclass
class EncodedSample:
    """Token-level result of one sample (no pixels)."""

    input_ids: list[int]
    labels: list[int]
    spans: list[tuple[int, int]]  # query blocks of the kept images, in order (the image_bound rows)
    plans: list  # SlicePlan per image kept after truncation, in order
    all_plans: list  # SlicePlan per image of the sample
    blocks: list[tuple[int, int]]  # (first, last) token of each image's whole placeholder
    length_before_truncation: int
    drop_reason: str | None = None
    frames: list[int] = field(default_factory=list)  # per image: > 1 for an animation (its first frame is used)


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
    animated: list[str] = field(default_factory=list)  # "path (N frames)": only the first frame is trained on


class SampleEncoder:
    """Samples of one checkpoint -> token ids, labels and pixel tensors for model(data=...)."""

    def __init__(self, tokenizer, version: ModelVersion, settings: ImageSettings, model_max_length: int = 2048,
                 keep_earlier_reasoning: bool = False):
        self.tokenizer, self.version, self.settings = tokenizer, version, settings
        self.model_max_length = int(model_max_length)
        self.chat = ChatEncoder(tokenizer, version, keep_earlier_reasoning)

    def encode(self, sample: Sample, image_sizes) -> EncodedSample:
        """Token ids, labels and image spans for a sample whose images have these (W, H) sizes."""
        plans = [plan_slices(size, self.settings) for size in image_sizes]
        placeholders = {marker: image_placeholder(plan, self.settings, self.tokenizer, k)
                        for k, (marker, plan) in enumerate(zip(sample.markers, plans))}
        try:
            encoding = self.chat.encode(sample.with_placeholders(placeholders))
        except ValueError as exc:
            raise sample.error(str(exc)) from None
        spans = [span for per_image in encoding.queries for span in per_image]
        encoded = EncodedSample(encoding.input_ids, encoding.labels, spans, plans, plans, encoding.blocks,
                                len(encoding.input_ids))
        if len(encoded.input_ids) > self.model_max_length:
            self._truncate(encoded)
        return encoded

    def encode_from_headers(self, sample: Sample) -> EncodedSample:
        """encode() with image sizes read from the files' headers (no pixel decoding)."""
        headers = [read_image(sample, path, decode=False) for path in sample.image_paths]
        encoded = self.encode(sample, [size for size, _ in headers])
        encoded.frames = [frames for _, frames in headers]
        return encoded

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
        kept_images = sum(1 for _, last in encoded.blocks if last < cut)
        encoded.plans = encoded.plans[:kept_images]
        encoded.spans = encoded.spans[:sum(1 + plan.num_slices for plan in encoded.plans)]

    def with_pixels(self, sample: Sample):
        """(encoded sample, pixel tensors of every kept view, their tgt_sizes) from the image files."""
        read = [read_image(sample, path, decode=True) for path in sample.image_paths]
        images = [image for image, _ in read]
        encoded = self.encode(sample, [image.size for image in images])
        encoded.frames = [frames for _, frames in read]
        pixel_values, tgt_sizes = [], []
        for image in images[: len(encoded.plans)]:
            views, _ = slice_image(image, self.settings)
            for view in views:
                tensor, tgt = view_to_model_input(view, self.settings)
                pixel_values.append(tensor)
                tgt_sizes.append(tgt)
        return encoded, pixel_values, tgt_sizes

    def item(self, sample: Sample) -> dict:
        """input_ids, position_ids, labels, attention_mask [L]; pixel_values (list of per-view
        tensors); tgt_sizes int32 [n_views, 2]; image_bound / image_bounds long [n_views, 2];
        4.5: temporal_ids, one group [-1] per view (still images)."""
        encoded, pixel_values, tgt_sizes = self.with_pixels(sample)
        bounds = torch.tensor(encoded.spans, dtype=torch.long).reshape(-1, 2)
        length = len(encoded.input_ids)
        item = {
            "input_ids": torch.tensor(encoded.input_ids, dtype=torch.long),
            "position_ids": torch.arange(length, dtype=torch.long),
            "labels": torch.tensor(encoded.labels, dtype=torch.long),
            "attention_mask": torch.ones(length, dtype=torch.long),
            "pixel_values": pixel_values,
            "tgt_sizes": torch.tensor(tgt_sizes, dtype=torch.int32).reshape(-1, 2),
            "image_bound": bounds,
            "image_bounds": bounds,
        }
        if self.version.temporal_ids:
            item["temporal_ids"] = [[-1] for _ in pixel_values]
        return item

    def check(self, record, index: int, source: str, folder: str, verify_images: bool):
        """(SampleReport, Sample or None): the record through the training preprocessing; never raises DataError."""
        try:
            sample = parse_sample(record, index, source, folder, self.version.chat.system_allowed)
            encoded = self.with_pixels(sample)[0] if verify_images else self.encode_from_headers(sample)
        except DataError as error:
            return SampleReport(index, error.sample_id, "failed", error.reason), None
        report = SampleReport(index, sample.sample_id, "ok", tokens=encoded.length_before_truncation,
                              image_tokens=sum(last - first + 1 for first, last in encoded.blocks),
                              views_per_image=[1 + plan.num_slices for plan in encoded.all_plans],
                              animated=[f"{path} ({n} frames)" for path, n in zip(sample.image_paths, encoded.frames)
                                        if n > 1])
        if encoded.drop_reason:
            report.status, report.reason = "dropped", encoded.drop_reason
            return report, None
        if encoded.length_before_truncation > len(encoded.input_ids):
            report.status = "truncated"
        return report, sample


def read_image(sample: Sample, path: str, decode: bool):
    """(the decoded RGB image (decode=True), or its (W, H) after a cheap check that the whole file
    decodes (JPEG: at 1/8 scale; other formats: their own verify, e.g. PNG chunk checksums), so
    a truncated file fails the data check instead of the training step that reaches it; its
    number of frames, from the same open). DataError if unreadable."""
    if not os.path.isfile(path):
        raise sample.error(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            frames = frame_count(image)  # before verify(), which leaves the file unusable
            if decode:
                return to_rgb(image), frames
            size = image.size
            if image.format == "JPEG":
                image.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
                image.load()
            else:
                image.verify()
            return size, frames
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise sample.error(f"cannot read image {path}: {exc}") from None


def check_records(encoder: SampleEncoder, records: list, source: str, folder: str, verify_images: bool = False,
                  num_workers: int = 1, progress: bool = False) -> list:
    """encoder.check() of every record, in order: [(SampleReport, Sample or None)], in forked
    worker processes when num_workers > 1."""
    def check(index):
        return encoder.check(records[index], index, source, folder, verify_images)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(records), desc=f"checking {source}", unit="sample")
    results = []
    if num_workers > 1 and len(records) > 1:
        chunk = max(1, min(64, len(records) // (4 * num_workers)))
        # fork: workers inherit `check` (the encoder with its tokenizer) instead of unpickling it per task
        with multiprocessing.get_context("fork").Pool(num_workers, initializer=_worker_init, initargs=(check,)) as pool:
            for result in pool.imap(_worker_check, range(len(records)), chunksize=chunk):
                results.append(result)
                if bar:
                    bar.update()
    else:
        for index in range(len(records)):
            results.append(check(index))
            if bar:
                bar.update()
    if bar:
        bar.close()
    return results


_worker_check_function = None  # set in each forked worker by _worker_init, never in the parent


def _worker_init(check):
    global _worker_check_function
    # OpenMP is not fork-safe: a forked child entering a parallel region that the parent
    # already used can hang. One thread per worker, as torch's DataLoader workers do.
    torch.set_num_threads(1)
    _worker_check_function = check


def _worker_check(index):
    return _worker_check_function(index)
