"""The one seam between a checked sample and model tensors:

    record --parse_sample--> Sample --SampleEncoder.encode--> EncodedSample --.item--> tensors

`check_records` runs every record through the same steps (optionally decoding every image)
and reports what it found; training (dataset.py) and check_data.py both use it.
"""
from __future__ import annotations

import multiprocessing
import os
from dataclasses import dataclass, field, replace

import torch
from PIL import Image, UnidentifiedImageError

from .chat_tokens import (IGNORE_INDEX, ChatEncoder, image_placeholder, placeholder_tokens, tokenize_many_with_starts,
                          tokenize_with_starts, video_placeholder)
from .errors import DataError
from .images import frame_count, to_rgb
from .samples import Sample, parse_sample
from .slicing import layout_shape, model_input, plan_slices, slice_image, view_bytes, view_pixels
from .versions import ImageSettings, ModelVersion, names_where
from .video import FramePlan, VideoError, decode_frames, plan_frames, read_video_info
from .view_cache import ViewCache

# Tokens per sample, images included, unless --model_max_length says otherwise.
DEFAULT_MODEL_MAX_LENGTH = 2048


@dataclass
class EncodedSample:
    """Token-level result of one sample (no pixels)."""

    input_ids: list[int]
    labels: list[int]
    image_plans: list  # SlicePlan per image of the sample
    blocks: list[tuple[int, int]]  # (first, last) token of each image's or video's whole placeholder, text order
    queries: list  # per image / video, text order: the (start, end) token spans of its query blocks
    length_before_truncation: int
    drop_reason: str | None = None
    frames: list[int] = field(default_factory=list)  # per image: > 1 for an animation (its first frame is used)

    @property
    def kept_media(self) -> int:
        """Images and videos (in text order) whose placeholders survive truncation."""
        return sum(1 for _, last in self.blocks if last < len(self.input_ids))

    @property
    def spans(self) -> list[tuple[int, int]]:
        """Query blocks of the kept images and videos, in order (the image_bound rows)."""
        return [span for per_media in self.queries[:self.kept_media] for span in per_media]


def in_layout(cached_views, settings) -> list:
    """Views read from the image cache, (height, width, flat uint8), as (height, width, pixels in
    the model's layout)."""
    return [(h, w, torch.from_numpy(flat).reshape(layout_shape(h, w, settings))) for h, w, flat in cached_views]


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
    view_bytes: int = 0  # uint8 RGB bytes of all views of all images and video frames (what the image cache stores)
    animated: list[str] = field(default_factory=list)  # "path (N frames)": only the first frame is trained on
    videos: list[dict] = field(default_factory=list)  # per video: path, frames, groups (placeholders), tokens

    @property
    def usable(self) -> bool:
        """The sample trains (in full or truncated)."""
        return self.status in ("ok", "truncated")


class SampleEncoder:
    """Samples of one checkpoint -> token ids, labels and pixel tensors for model(data=...)."""

    def __init__(self, tokenizer, version: ModelVersion, settings: ImageSettings, model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
                 keep_earlier_reasoning: bool = False, image_cache_dir: str | None = None):
        self.tokenizer, self.version, self.settings = tokenizer, version, settings
        self.model_max_length = int(model_max_length)
        self.chat = ChatEncoder(tokenizer, version, keep_earlier_reasoning)
        self.placeholder_tokens = placeholder_tokens(tokenizer)
        self.query_token = tokenizer.unk_token  # what fills an image's query blocks
        self.cache = ViewCache(image_cache_dir, settings) if image_cache_dir else None
        self.video = version.video
        # Video frames as the checkpoint's video example feeds them: no image ids, its slice count
        self.frame_settings = replace(settings, max_slice_nums=self.video.max_slice_nums, use_image_id=False) \
            if self.video else None
        self.video_cache = ViewCache(image_cache_dir, self.frame_settings, self.video) \
            if image_cache_dir and self.video else None

    def encode(self, sample: Sample, image_sizes, videos=()) -> EncodedSample:
        """Token ids, labels and image spans for a sample whose images have these (W, H) sizes and
        whose videos these (VideoInfo, FramePlan)."""
        rendered, plans = self._render(sample, image_sizes, videos)
        ids, starts = tokenize_with_starts(self.tokenizer, rendered.text, self.version.encode_adds_special_tokens)
        return self._finish(sample, rendered, plans, ids, starts)

    def encode_from_headers(self, sample: Sample) -> EncodedSample:
        """encode() with image sizes read from the files' headers (no pixel decoding)."""
        headers, videos = self._headers(sample)
        encoded = self.encode(sample, [size for size, _ in headers], videos)
        encoded.frames = [frames for _, frames in headers]
        return encoded

    def _headers(self, sample: Sample):
        """([(W, H), frames] per image, [(VideoInfo, FramePlan)] per video) from the files'
        headers and containers, nothing decoded."""
        return [read_image(sample, path, decode=False) for path in sample.image_paths], self._video_plans(sample)

    def _render(self, sample: Sample, image_sizes, videos=()):
        """(the conversation as one string with its placeholders, the images' slice plans). A sample
        with a video has no image ids at all, as chat() is called for videos (use_image_id=False)."""
        settings = replace(self.settings, use_image_id=False) if sample.video_paths else self.settings
        plans = [plan_slices(size, settings) for size in image_sizes]
        placeholders = {marker: image_placeholder(plan, settings, self.placeholder_tokens, k)
                        for k, (marker, plan) in enumerate(zip(sample.markers, plans))}
        for marker, (info, frame_plan) in zip(sample.video_markers, videos):
            placeholders[marker] = video_placeholder(info.size, frame_plan, self.frame_settings, self.placeholder_tokens)
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
        encoded = EncodedSample(encoding.input_ids, encoding.labels, plans, encoding.blocks, encoding.queries,
                                len(encoding.input_ids))
        if len(encoded.input_ids) > self.model_max_length:
            self._truncate(encoded)
        return encoded

    def _truncate(self, encoded: EncodedSample):
        cut = self.model_max_length
        for start, end in encoded.blocks:
            if start < cut <= end:
                encoded.drop_reason = f"model_max_length {cut} cuts an image span"  # or a video's
                return
        if all(label == IGNORE_INDEX for label in encoded.labels[1:cut]):
            encoded.drop_reason = f"no trained token within model_max_length {cut}"
            return
        encoded.input_ids, encoded.labels = encoded.input_ids[:cut], encoded.labels[:cut]  # spans follow

    def with_pixels(self, sample: Sample):
        """(encoded sample, pixel tensors of every view of the kept images and videos in text
        order, their tgt_sizes, their temporal groups: [-1] per image view, a video's frame groups
        (4.5) or [-1] per frame view) from the files (or the image cache)."""
        images = {m: self._views(sample, path) for m, path in zip(sample.markers, sample.image_paths)}
        videos = {m: self._video_views(sample, path) for m, path in zip(sample.video_markers, sample.video_paths)}
        encoded = self.encode(sample, [images[m][0] for m in sample.markers],
                              [videos[m][:2] for m in sample.video_markers])
        encoded.frames = [images[m][1] for m in sample.markers]
        views, groups = [], []
        for marker in sample.media_order()[:encoded.kept_media]:
            if marker in images:
                views += images[marker][2]
                groups += [[-1]] * len(images[marker][2])
            else:
                _, plan, frame_views = videos[marker]
                views += frame_views
                groups += plan.groups if self.video.grouped else [[-1]] * len(frame_views)
        patch = self.settings.patch_size
        return (encoded, [model_input(pixels) for _, _, pixels in views], [(h // patch, w // patch) for h, w, _ in views],
                groups)

    def _video_plans(self, sample: Sample) -> list:
        """(VideoInfo, FramePlan) of each video of the sample, from the containers (no decoding)."""
        if sample.video_paths and self.video is None:
            raise sample.error(f"MiniCPM-V {self.version.name} takes no video; use one that does "
                               f"({names_where(lambda v: v.video)}), or give frames as images")
        plans = []
        for path in sample.video_paths:
            if not os.path.isfile(path):
                raise sample.error(f"video not found: {path}")
            try:
                info = read_video_info(path)
            except VideoError as exc:
                raise sample.error(f"{path}: {exc}") from None
            plans.append((info, self.frame_plan(info)))
        return plans

    def frame_plan(self, info) -> FramePlan:
        """The frames of a video with this container metadata that its inference takes."""
        return plan_frames(info, self.video)

    def frame_view_bytes(self, info) -> int:
        """uint8 RGB bytes of the views of one frame of a video with this metadata."""
        return view_bytes(plan_slices(info.size, self.frame_settings))

    def _video_views(self, sample: Sample, path: str):
        """(VideoInfo, FramePlan, [(height, width, uint8 pixels in the model's layout)] of every view
        of every sampled frame, in time order)."""
        (info, plan), = self._video_plans(replace(sample, video_paths=[path]))
        if self.video_cache is not None:
            cached = self.video_cache.get(path)
            if cached is not None:
                return info, plan, in_layout(cached[2], self.frame_settings)
        try:
            frames = decode_frames(path, plan.indices)
        except VideoError as exc:
            raise sample.error(f"{path}: {exc}") from None
        views = [(view.height, view.width, view_pixels(view, self.frame_settings))
                 for frame in frames for view in slice_image(frame, self.frame_settings)[0]]
        if self.video_cache is not None:
            self.video_cache.put(path, info.size, len(plan.indices), [(h, w, pixels.numpy()) for h, w, pixels in views])
        return info, plan, views

    def _views(self, sample: Sample, path: str):
        """((W, H), frames, [(height, width, uint8 pixels in the model's layout) per view, source
        first]) of one image file."""
        if self.cache is not None:
            cached = self.cache.get(path)
            if cached is not None:
                size, frames, views = cached
                return size, frames, in_layout(views, self.settings)
        image, frames = read_image(sample, path, decode=True)
        views = [(view.height, view.width, view_pixels(view, self.settings))
                 for view in slice_image(image, self.settings)[0]]
        if self.cache is not None:
            self.cache.put(path, image.size, frames, [(h, w, pixels.numpy()) for h, w, pixels in views])
        return image.size, frames, views

    def item(self, sample: Sample) -> dict:
        """input_ids, position_ids, labels, attention_mask [L]; pixel_values (list of per-view
        tensors); tgt_sizes int32 [n_views, 2]; image_bound / image_bounds long [n_spans, 2] (one
        per query block: per view, or per group of frames on 4.5); 4.5 with a video: temporal_ids,
        the groups of views ([-1] for each view of an image)."""
        encoded, pixel_values, tgt_sizes, groups = self.with_pixels(sample)
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
        if self.version.temporal_ids and any(t >= 0 for group in groups for t in group):
            # only with a video, as chat() passes temporal_ids only for one: without them the 3-D
            # resampler attends to every view in one call, with them once per group (under
            # ZeRO-3 each call gathers its weights, so the count must not differ between processes
            # for image-only batches)
            item["temporal_ids"] = groups
        return item

    @staticmethod
    def _video_summaries(sample: Sample, encoded: EncodedSample, videos) -> list[dict]:
        order = sample.media_order()
        summaries = []
        for marker, path, (info, plan) in zip(sample.video_markers, sample.video_paths, videos):
            first, last = encoded.blocks[order.index(marker)]
            summaries.append({"path": path, "seconds": round(info.duration, 3), "frames": len(plan.indices),
                              "groups": len(plan.groups), "tokens": last - first + 1})
        return summaries

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
                    results[index] = self._report(sample, self.with_pixels(sample)[0], self._video_plans(sample))
                    continue
                headers, videos = self._headers(sample)
                pending.append((sample, headers, videos,
                                *self._render(sample, [size for size, _ in headers], videos)))
            except DataError as error:
                results[index] = SampleReport(index, error.sample_id, "failed", error.reason)
        texts = [rendered.text for _, _, _, rendered, _ in pending]
        tokenized = tokenize_many_with_starts(self.tokenizer, texts, self.version.encode_adds_special_tokens)
        for (sample, headers, videos, rendered, plans), (ids, starts) in zip(pending, tokenized):
            try:
                encoded = self._finish(sample, rendered, plans, ids, starts)
            except DataError as error:
                results[sample.index] = SampleReport(sample.index, error.sample_id, "failed", error.reason)
                continue
            encoded.frames = [frames for _, frames in headers]
            results[sample.index] = self._report(sample, encoded, videos)
        return [results[index] for index in indices]

    def _report(self, sample: Sample, encoded: EncodedSample, videos=()) -> SampleReport:
        report = SampleReport(sample.index, sample.sample_id, "ok", tokens=encoded.length_before_truncation,
                              image_tokens=sum(last - first + 1 for first, last in encoded.blocks),
                              views_per_image=[1 + plan.num_slices for plan in encoded.image_plans],
                              view_bytes=sum(view_bytes(plan) for plan in encoded.image_plans) + sum(
                                  len(frames.indices) * self.frame_view_bytes(info) for info, frames in videos),
                              animated=[f"{path} ({n} frames)" for path, n in zip(sample.image_paths, encoded.frames)
                                        if n > 1],
                              videos=self._video_summaries(sample, encoded, videos))
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
