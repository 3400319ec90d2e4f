"""The data path of a native checkpoint (4.6), whose own processor writes the image placeholders
and makes the pixels: the same seam as SampleEncoder (record -> Sample -> EncodedSample ->
tensors, the same chat formats, labels, truncation and reports), with the processor in the
places where the remote-code versions need our reproduction of their slicing.

- Placeholders: the processor's `replace_image_token` (and its `<image_id>k</image_id>` prefix,
  k counting the sample's images), fed the view sizes that its image processor's own
  planning methods (`get_sliced_grid`, `find_best_resize`, `get_refine_size`) give for the
  image's size, so the data check needs only the file's header.
- Pixels: the image processor itself, per sample; the view sizes it returns must be the planned
  ones (checked per item).
- Batches: minicpmv_ft/batching.py (PROCESSOR_MEDIA).
"""
from __future__ import annotations

import numpy as np
import torch

from .chat_formats import Turn
from .chat_tokens import Placeholder
from .encoding import DEFAULT_MODEL_MAX_LENGTH, SampleEncoder, read_image
from .samples import Sample
from .slicing import SlicePlan
from .versions import ImageSettings

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
        images, settings = self.processor.image_processor, self.settings
        height_width = (size[1], size[0])
        grid = images.get_sliced_grid(height_width, settings.max_slice_nums, settings.scale_resolution) \
            if settings.slice_mode else None
        source_h, source_w = images.find_best_resize(height_width, settings.scale_resolution, settings.patch_size,
                                                     downsample_mode=images.downsample_mode,
                                                     allow_upscale=grid is None)
        if grid is None:
            return SlicePlan((source_w, source_h), None, None)
        rows, cols = grid
        refine_h, refine_w = images.get_refine_size(height_width, grid, settings.scale_resolution, settings.patch_size,
                                                    downsample_mode=images.downsample_mode, allow_upscale=True)
        return SlicePlan((source_w, source_h), (cols, rows), (refine_w // cols, refine_h // rows))

    def target_sizes(self, plan: SlicePlan) -> list[list[int]]:
        """(height, width) in patches of each view, source first (the processor's target_sizes)."""
        patch = self.settings.patch_size
        sizes = [[plan.source_size[1] // patch, plan.source_size[0] // patch]]
        if plan.grid is not None:
            sizes += [[plan.cell_size[1] // patch, plan.cell_size[0] // patch]] * plan.num_slices
        return sizes

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

    def _render(self, sample: Sample, image_sizes, videos=()):
        plans = [self.plan(size) for size in image_sizes]
        placeholders = {marker: self.placeholder(plan, k) for k, (marker, plan) in enumerate(zip(sample.markers, plans))}
        try:
            return self.chat.render_checked(sample.with_placeholders(placeholders)), plans
        except ValueError as exc:
            raise sample.error(str(exc)) from None

    def with_pixels(self, sample: Sample):
        """(encoded sample, pixel_values [3, patch, N] of every view of the kept images in text
        order, their target_sizes int32 [views, 2], None) from the files."""
        images = {marker: read_image(sample, path, decode=True) for marker, path in zip(sample.markers, sample.image_paths)}
        encoded = self.encode(sample, [images[m][0].size for m in sample.markers])
        encoded.frames = [images[m][1] for m in sample.markers]
        kept = sample.media_order()[:encoded.kept_media]
        patch = self.settings.patch_size
        if not kept:
            return encoded, torch.zeros(3, patch, 0), torch.zeros(0, 2, dtype=torch.int32), None
        processed = self.processor.image_processor([images[m][0] for m in kept], return_tensors="pt",
                                                   **self.image_options)
        planned = [size for m in kept for size in self.target_sizes(encoded.image_plans[sample.markers.index(m)])]
        if processed["target_sizes"].tolist() != planned:
            raise RuntimeError(f"{sample.source}, sample {sample.index}: the image processor made views of "
                               f"{processed['target_sizes'].tolist()} patches where its planning gave {planned}; the "
                               "placeholders would not match the features (a transformers change?)")
        return encoded, processed["pixel_values"][0], processed["target_sizes"].to(torch.int32), None

    def item(self, sample: Sample) -> dict:
        """input_ids, labels, attention_mask [L] and either position_ids [L] or, for a model that
        lays out its own positions (positions_from_model), the processor's mm_token_type_ids [L]
        (0 text, 1 image, 2 video); pixel_values [3, patch, N] (all views of the sample's images,
        NaViT-packed); target_sizes int32 [views, 2]."""
        encoded, pixel_values, target_sizes, _ = self.with_pixels(sample)
        length = len(encoded.input_ids)
        item = {
            "input_ids": torch.tensor(encoded.input_ids, dtype=torch.long),
            "labels": torch.tensor(encoded.labels, dtype=torch.long),
            "attention_mask": torch.ones(length, dtype=torch.long),
            "pixel_values": pixel_values,
            "target_sizes": target_sizes,
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
