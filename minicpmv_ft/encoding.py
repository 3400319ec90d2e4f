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

from .chat_tokens import (IGNORE_INDEX, ChatEncoder, image_placeholder, placeholder_tokens, tokenize_many_with_starts,
                          tokenize_with_starts)
from .images import frame_count, to_rgb
from .samples import DataError, Sample, parse_sample
from .slicing import layout_shape, model_input, plan_slices, slice_image, view_bytes, view_pixels
from .versions import ImageSettings, ModelVersion
from .view_cache import ViewCache


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
    view_bytes: int = 0  # uint8 RGB bytes of all views of all images (what the image cache stores)
    animated: list[str] = field(default_factory=list)  # "path (N frames)": only the first frame is trained on

    @property
    def usable(self) -> bool:
        """The sample trains (in full or truncated)."""
        return self.status in ("ok", "truncated")


class SampleEncoder:
    """Samples of one checkpoint -> token ids, labels and pixel tensors for model(data=...)."""

    def __init__(self, tokenizer, version: ModelVersion, settings: ImageSettings, model_max_length: int = 2048,
                 keep_earlier_reasoning: bool = False, image_cache_dir: str | None = None):
        self.tokenizer, self.version, self.settings = tokenizer, version, settings
        self.model_max_length = int(model_max_length)
        self.chat = ChatEncoder(tokenizer, version, keep_earlier_reasoning)
        self.placeholder_tokens = placeholder_tokens(tokenizer)
        self.cache = ViewCache(image_cache_dir, settings) if image_cache_dir else None

    def encode(self, sample: Sample, image_sizes) -> EncodedSample:
        """Token ids, labels and image spans for a sample whose images have these (W, H) sizes."""
        rendered, plans = self._render(sample, image_sizes)
        ids, starts = tokenize_with_starts(self.tokenizer, rendered.text, self.version.encode_adds_special_tokens)
        return self._finish(sample, rendered, plans, ids, starts)

    def encode_from_headers(self, sample: Sample) -> EncodedSample:
        """encode() with image sizes read from the files' headers (no pixel decoding)."""
        headers = [read_image(sample, path, decode=False) for path in sample.image_paths]
        encoded = self.encode(sample, [size for size, _ in headers])
        encoded.frames = [frames for _, frames in headers]
        return encoded

    def _render(self, sample: Sample, image_sizes):
        """(the conversation as one string with its placeholders, the images' slice plans)."""
        plans = [plan_slices(size, self.settings) for size in image_sizes]
        placeholders = {marker: image_placeholder(plan, self.settings, self.placeholder_tokens, k)
                        for k, (marker, plan) in enumerate(zip(sample.markers, plans))}
        try:
            return self.chat.render_checked(sample.with_placeholders(placeholders)), plans
        except ValueError as exc:
            raise sample.error(str(exc)) from None

    def _finish(self, sample: Sample, rendered, plans, ids, starts) -> EncodedSample:
        """The EncodedSample of a rendered conversation tokenized as (ids, starts), truncated."""
        try:
            encoding = self.chat.label(rendered, ids, starts)
        except ValueError as exc:
            raise sample.error(str(exc)) from None
        spans = [span for per_image in encoding.queries for span in per_image]
        encoded = EncodedSample(encoding.input_ids, encoding.labels, spans, plans, plans, encoding.blocks,
                                len(encoding.input_ids))
        if len(encoded.input_ids) > self.model_max_length:
            self._truncate(encoded)
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
        """(encoded sample, pixel tensors of every kept view, their tgt_sizes) from the image files
        (or their views in the image cache)."""
        images = [self._views(sample, path) for path in sample.image_paths]
        encoded = self.encode(sample, [size for size, _, _ in images])
        encoded.frames = [frames for _, frames, _ in images]
        patch = self.settings.patch_size
        views = [view for _, _, views in images[: len(encoded.plans)] for view in views]
        return encoded, [model_input(pixels) for _, _, pixels in views], [(h // patch, w // patch) for h, w, _ in views]

    def _views(self, sample: Sample, path: str):
        """((W, H), frames, [(height, width, uint8 pixels in the model's layout) per view, source
        first]) of one image file."""
        if self.cache is not None:
            cached = self.cache.get(path)
            if cached is not None:
                size, frames, views = cached
                return size, frames, [(h, w, torch.from_numpy(flat).reshape(layout_shape(h, w, self.settings)))
                                      for h, w, flat in views]
        image, frames = read_image(sample, path, decode=True)
        views = [(view.height, view.width, view_pixels(view, self.settings))
                 for view in slice_image(image, self.settings)[0]]
        if self.cache is not None:
            self.cache.put(path, image.size, frames, [(h, w, pixels.numpy()) for h, w, pixels in views])
        return image.size, frames, views

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

    def parse(self, record, index: int, source: str, folder: str) -> Sample:
        return parse_sample(record, index, source, folder, self.version.chat.system_allowed)

    def check_many(self, records: list, indices, source: str, folder: str, verify_images: bool) -> list:
        """[SampleReport] of records[i] for each index, through the training preprocessing; never
        raises DataError. The conversations of a call are tokenized in one batch (per-call
        tokenizer overhead dominated the check of large sets)."""
        results, pending = {}, []
        for index in indices:
            try:
                sample = self.parse(records[index], index, source, folder)
                if verify_images:
                    results[index] = self._report(sample, self.with_pixels(sample)[0])
                    continue
                headers = [read_image(sample, path, decode=False) for path in sample.image_paths]
                pending.append((sample, headers, *self._render(sample, [size for size, _ in headers])))
            except DataError as error:
                results[index] = SampleReport(index, error.sample_id, "failed", error.reason)
        texts = [rendered.text for _, _, rendered, _ in pending]
        tokenized = tokenize_many_with_starts(self.tokenizer, texts, self.version.encode_adds_special_tokens)
        for (sample, headers, rendered, plans), (ids, starts) in zip(pending, tokenized):
            try:
                encoded = self._finish(sample, rendered, plans, ids, starts)
            except DataError as error:
                results[sample.index] = SampleReport(sample.index, error.sample_id, "failed", error.reason)
                continue
            encoded.frames = [frames for _, frames in headers]
            results[sample.index] = self._report(sample, encoded)
        return [results[index] for index in indices]

    @staticmethod
    def _report(sample: Sample, encoded: EncodedSample) -> SampleReport:
        report = SampleReport(sample.index, sample.sample_id, "ok", tokens=encoded.length_before_truncation,
                              image_tokens=sum(last - first + 1 for first, last in encoded.blocks),
                              views_per_image=[1 + plan.num_slices for plan in encoded.all_plans],
                              view_bytes=sum(view_bytes(plan) for plan in encoded.all_plans),
                              animated=[f"{path} ({n} frames)" for path, n in zip(sample.image_paths, encoded.frames)
                                        if n > 1])
        if encoded.drop_reason:
            report.status, report.reason = "dropped", encoded.drop_reason
        elif encoded.length_before_truncation > len(encoded.input_ids):
            report.status = "truncated"
        return report


# The last bytes of an intact file: JPEG's end-of-image marker, PNG's IEND chunk. A copy or
# download cut short lacks them.
END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"\x00\x00\x00\x00IEND\xaeB`\x82"}


def read_image(sample: Sample, path: str, decode: bool):
    """(the decoded RGB image (decode=True), or its (W, H) after a cheap check that the file is
    whole; its number of frames, from the same open). DataError if unreadable.

    The cheap check reads the header and the file's last bytes: a JPEG or PNG that ends with its
    end marker passes; one that does not (cut short, or with data appended after the image) is
    decoded, JPEG at 1/8 scale, other formats by their own verify (e.g. PNG chunk checksums), so a
    truncated file fails the data check instead of the training step that reaches it."""
    if not os.path.isfile(path):
        raise sample.error(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            frames = frame_count(image)  # before verify(), which leaves the file unusable
            if decode:
                return to_rgb(image), frames
            size = image.size
            if _ends_with_marker(image):
                return size, frames
            if image.format == "JPEG":
                image.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
                image.load()
            else:
                image.verify()
            return size, frames
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise sample.error(f"cannot read image {path}: {exc}") from None


def _ends_with_marker(image) -> bool:
    marker = END_MARKERS.get(image.format)
    if marker is None:
        return False
    handle = image.fp
    handle.seek(-len(marker), os.SEEK_END)
    return handle.read(len(marker)) == marker


# Records per check_many call: large enough that batch tokenization pays, small enough for a
# smooth progress bar and balanced workers.
CHECK_CHUNK = 256


def check_records(encoder: SampleEncoder, records: list, source: str, folder: str, verify_images: bool = False,
                  num_workers: int = 1, progress: bool = False) -> list:
    """encoder.check_many() of every record, in order: [SampleReport], in forked worker processes
    when num_workers > 1. Reports only: a kept sample is parsed again from its record when it is
    used (cheap), rather than sent back from a worker (unpickling 200k samples took longer in
    the parent than checking them in the workers)."""
    chunks = [range(start, min(start + CHECK_CHUNK, len(records))) for start in range(0, len(records), CHECK_CHUNK)]

    def check(indices):
        return encoder.check_many(records, indices, source, folder, verify_images)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(records), desc=f"checking {source}", unit="sample")
    results = []
    if num_workers > 1 and len(chunks) > 1:
        # fork: workers inherit `check` (the encoder with its tokenizer, the records) instead of
        # unpickling them per task
        with multiprocessing.get_context("fork").Pool(num_workers, initializer=_worker_init, initargs=(check,)) as pool:
            for chunk_results in pool.imap(_worker_check, chunks):
                results += chunk_results
                if bar:
                    bar.update(len(chunk_results))
    else:
        for indices in chunks:
            results += check(indices)
            if bar:
                bar.update(len(indices))
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


def _worker_check(indices):
    return _worker_check_function(indices)
