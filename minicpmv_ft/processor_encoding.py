"""The data path of a native checkpoint (4.6, 4.7), whose own processor writes the image placeholders
and makes the pixels: the same seam as SampleEncoder (record -> Sample -> EncodedSample ->
tensors, the same chat formats, labels, truncation and reports), with the processor in the
places where the remote-code versions need our reproduction of their slicing.

- Placeholders: the processor's `replace_image_token` (and its `<image_id>k</image_id>` prefix,
  k counting the sample's images), fed the view sizes that its image processor's own
  planning methods (`get_sliced_grid`, `find_best_resize`, `get_refine_size`) give for the
  image's size, so the data check needs only the file's header.
- Pixels: the image processor itself, per sample; the view sizes it returns must be the planned
  ones (checked per item).
- Videos: its video processor picks the frames, plans their views, writes the placeholders and
  makes the pixels (minicpmv_ft/processor_video.py).
- Batches: minicpmv_ft/batching.py (PROCESSOR_MEDIA).
"""
from __future__ import annotations

import numpy as np
import torch

from . import processor_video
from .chat_formats import Turn
from .chat_tokens import Placeholder
from .encoding import DEFAULT_MODEL_MAX_LENGTH, SampleEncoder, read_image
from .processor_video import plan_views, target_sizes
from .samples import Sample
from .slicing import SlicePlan, view_bytes
from .versions import ImageSettings
from .video import FramePlan, VideoError, decode_frames

def processor_settings(processor, max_slice_nums: int | None = None) -> ImageSettings:
    """The slicing settings the processor holds (`max_slice_nums` overrides its own)."""
    images = processor.image_processor
    chosen = images.max_slice_nums if max_slice_nums is None else max_slice_nums
    if int(chosen) < 1:
        raise ValueError(f"max_slice_nums must be >= 1, got {chosen}")
    return ImageSettings(query_num=0, patch_size=int(images.patch_size), max_slice_nums=int(chosen),
                         scale_resolution=int(images.scale_resolution), slice_mode=bool(processor.slice_mode),
                         use_image_id=bool(processor.default_use_image_id), placeholder_scheme="processor",
                         pixel_layout="patch_major")


class ProcessorSampleEncoder(SampleEncoder):
    """Samples of a native checkpoint -> token ids, labels, NaViT-packed pixels and target sizes."""

    def __init__(self, tokenizer, version, processor, max_slice_nums: int | None = None, model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
                 keep_earlier_reasoning: bool = False):
        super().__init__(tokenizer, version, processor_settings(processor, max_slice_nums), model_max_length,
                         keep_earlier_reasoning)
        self.processor = processor
        self.query_token = processor.image_token
        self.image_options = {} if max_slice_nums is None else {"max_slice_nums": int(max_slice_nums)}
        check_template(self.chat, processor, version)

    def plan(self, size) -> SlicePlan:
        """The views of an image of (W, H) `size`, from its image processor's own planning."""
        return plan_views(self.processor.image_processor, size, self.settings.max_slice_nums, self.settings.slice_mode)

    def target_sizes(self, plan: SlicePlan) -> list[list[int]]:
        """(height, width) in patches of each view, source first (the processor's target_sizes)."""
        return target_sizes(plan, self.settings.patch_size)

    def placeholder(self, plan: SlicePlan, image_index: int) -> Placeholder:
        """The processor's placeholder for an image with this plan, image id first when it uses them.
        No query spans: the model finds the image tokens by their id."""
        cols, rows = plan.grid or (0, 0)
        views = {"grids": [[rows, cols]], "num_patches_per_image": [1 + plan.num_slices if plan.grid else 1],
                 "target_sizes": np.array(self.target_sizes(plan))}
        text = self.processor.replace_image_token(views, image_idx=0, image_token_divisor=self.processor.image_token_divisor)
        if self.settings.use_image_id:
            text = f"{self.processor.image_id_start_token}{image_index}{self.processor.image_id_end_token}{text}"
        return Placeholder(text, ())

    def frame_plan(self, info) -> FramePlan:
        return processor_video.frame_plan(self.processor.video_processor, info, self.video)

    def frame_view_bytes(self, info) -> int:
        return view_bytes(processor_video.frame_views(self.processor.video_processor, info, self.video))

    def _render(self, sample: Sample, image_sizes, videos=()):
        plans = [self.plan(size) for size in image_sizes]
        placeholders = {marker: self.placeholder(plan, k) for k, (marker, plan) in enumerate(zip(sample.markers, plans))}
        for k, (marker, (info, frames)) in enumerate(zip(sample.video_markers, videos)):
            inputs = processor_video.planned_inputs(self.processor.video_processor, info, frames, self.video)
            placeholders[marker] = Placeholder(processor_video.placeholder(self.processor, inputs, k), ())
        try:
            return self.chat.render_checked(sample.with_placeholders(placeholders)), plans
        except ValueError as exc:
            raise sample.error(str(exc)) from None

    def with_pixels(self, sample: Sample):
        """(encoded sample, pixel_values [3, patch, N] of every view of the kept images in text
        order, their target_sizes int32 [views, 2], and for kept videos pixel_values_videos
        [3, patch, M] with target_sizes_videos [frame views, 2] ({} without)) from the files."""
        images = {marker: read_image(sample, path, decode=True) for marker, path in zip(sample.markers, sample.image_paths)}
        videos = dict(zip(sample.video_markers, self._video_plans(sample)))
        encoded = self.encode(sample, [images[m][0].size for m in sample.markers],
                              [videos[m] for m in sample.video_markers])
        encoded.frames = [images[m][1] for m in sample.markers]
        kept = sample.media_order()[:encoded.kept_media]
        kept_images = [m for m in kept if m in images]
        patch = self.settings.patch_size
        pixel_values, sizes = torch.zeros(3, patch, 0), torch.zeros(0, 2, dtype=torch.int32)
        if kept_images:
            processed = self.processor.image_processor([images[m][0] for m in kept_images], return_tensors="pt",
                                                       **self.image_options)
            planned = [size for m in kept_images for size in self.target_sizes(encoded.image_plans[sample.markers.index(m)])]
            self._check_sizes(sample, "image", processed["target_sizes"], planned)
            pixel_values, sizes = processed["pixel_values"][0], processed["target_sizes"].to(torch.int32)
        kept_videos = [self._video_pixels(sample, path, *videos[m]) for m, path in zip(sample.video_markers,
                                                                                        sample.video_paths) if m in kept]
        video_inputs = {} if not kept_videos else {
            "pixel_values_videos": torch.cat([pixels for pixels, _ in kept_videos], dim=-1),
            "target_sizes_videos": torch.cat([views for _, views in kept_videos])}
        return encoded, pixel_values, sizes, video_inputs

    def _video_pixels(self, sample: Sample, path: str, info, frames: FramePlan):
        """(pixel_values_videos [3, patch, M], target_sizes_videos int32 [views, 2]) of one video:
        the planned frames decoded, through its video processor."""
        try:
            decoded = decode_frames(path, frames.indices)
        except VideoError as exc:
            raise sample.error(f"{path}: {exc}") from None
        video_processor = self.processor.video_processor
        processed = processor_video.processed(video_processor, decoded, info, self.video)
        planned = processor_video.planned_inputs(video_processor, info, frames, self.video)["target_sizes_videos"]
        self._check_sizes(sample, "video", processed["target_sizes_videos"], planned.tolist())
        return processed["pixel_values_videos"][0], processed["target_sizes_videos"].to(torch.int32)

    @staticmethod
    def _check_sizes(sample: Sample, kind: str, made, planned: list):
        """RuntimeError unless the processor made views of the planned sizes (the placeholders'
        token counts come from the plan)."""
        if made.tolist() != planned:
            raise RuntimeError(f"{sample.source}, sample {sample.index}: the {kind} processor made views of "
                               f"{made.tolist()} patches where its planning gave {planned}; the placeholders would "
                               "not match the features (a transformers change?)")

    def item(self, sample: Sample) -> dict:
        """input_ids, labels, attention_mask [L] and either position_ids [L] or, for a model that
        lays out its own positions (positions_from_model), the processor's mm_token_type_ids [L]
        (0 text, 1 image, 2 video); pixel_values [3, patch, N] (all views of the sample's images,
        NaViT-packed); target_sizes int32 [views, 2]; with a video pixel_values_videos and
        target_sizes_videos, its frames' views likewise."""
        encoded, pixel_values, target_sizes, video_inputs = self.with_pixels(sample)
        length = len(encoded.input_ids)
        item = {
            "input_ids": torch.tensor(encoded.input_ids, dtype=torch.long),
            "labels": torch.tensor(encoded.labels, dtype=torch.long),
            "attention_mask": torch.ones(length, dtype=torch.long),
            "pixel_values": pixel_values,
            "target_sizes": target_sizes,
            **video_inputs,
        }
        if self.version.positions_from_model:
            item["mm_token_type_ids"] = torch.tensor(self.processor.create_mm_token_type_ids([encoded.input_ids])[0],
                                                     dtype=torch.int32)
        else:
            item["position_ids"] = torch.arange(length, dtype=torch.long)
        return item


# A conversation that touches every part of the format: an image before the question, an
# earlier answer, a final answer with reasoning.
PROBE = [("user", "What is it?", True, None), ("assistant", "A cat.", False, None), ("user", "Sure?", False, None),
         ("assistant", "Yes.", False, "It has whiskers.")]


def check_template(chat, processor, version):
    """ValueError unless the checkpoint's own chat template (what its inference renders) writes
    PROBE exactly as the version's chat format does (what we train on)."""
    turns, messages = [], []
    for k, (role, text, image, reasoning) in enumerate(PROBE):
        image_token = Placeholder(processor.image_token, ())
        turns.append(Turn(role, [image_token, "\n", text] if image else [text], k, reasoning))
        content = [{"type": "image"}, {"type": "text", "text": text}] if image else text
        messages.append({"role": role, "content": content, **({"reasoning_content": reasoning} if reasoning else {})})
    ours = chat.render(turns).text
    theirs = processor.apply_chat_template(messages, tokenize=False)
    if ours != theirs:
        raise ValueError(f"the checkpoint's chat template renders a conversation differently from MiniCPM-V "
                         f"{version.name}'s format that training uses, so training would not match its inference:\n"
                         f"  its template: {theirs!r}\n  training:     {ours!r}\nPlease report this with the "
                         "checkpoint's name (minicpmv_ft/versions/)")
