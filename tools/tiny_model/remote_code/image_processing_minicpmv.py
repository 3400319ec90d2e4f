"""Image slicing and placeholders used by the tiny models' chat() (the inference side), and the
image processor class that 2.5+ checkpoints ship (preprocessor_config.json names it).

Written apart from the training pipeline on purpose: tests compare the two, as the real
checkpoints' processor and a fine-tuning script must agree.
"""
import math

import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor
from transformers.image_processing_utils import BaseImageProcessor


def _divide(length, patch):
    return max(round(length / patch) * patch, patch)


def _resize_to(size, scale, patch, upscale):
    width, height = size
    if width * height > scale * scale or upscale:
        ratio = width / height
        height = int(scale / math.sqrt(ratio))
        width = int(height * ratio)
    return _divide(width, patch), _divide(height, patch)


class MiniCPMVImageSlicer:
    def __init__(self, query_num, patch_size=14, max_slice_nums=9, scale_resolution=448, per_slice=False, use_image_id=False):
        self.query_num, self.patch, self.max_slices, self.scale = query_num, patch_size, max_slice_nums, scale_resolution
        self.per_slice, self.use_image_id = per_slice, use_image_id

    def grid(self, size):
        width, height = size
        multiple = min(math.ceil(width * height / self.scale ** 2), self.max_slices)
        if multiple <= 1:
            return None
        best, best_error = None, float("inf")
        for count in (multiple - 1, multiple, multiple + 1):
            if count == 1 or count > self.max_slices:
                continue
            for cols in range(1, count + 1):
                if count % cols == 0:
                    error = abs(math.log(width / height) - math.log(cols / (count // cols)))
                    if error < best_error:
                        best, best_error = (cols, count // cols), error
        return best

    def slices(self, image):
        """[source, row-major slices...] and the (cols, rows) grid or None."""
        grid = self.grid(image.size)
        if grid is None:
            return [image.resize(_resize_to(image.size, self.scale, self.patch, True), Image.Resampling.BICUBIC)], None
        source = image.resize(_resize_to(image.size, self.scale, self.patch, False), Image.Resampling.BICUBIC)
        cols, rows = grid
        cell_w, cell_h = _resize_to((_divide(image.size[0], cols) / cols, _divide(image.size[1], rows) / rows),
                                    self.scale, self.patch, True)
        refined = image.resize((cell_w * cols, cell_h * rows), Image.Resampling.BICUBIC)
        cells = [refined.crop((c * cell_w, r * cell_h, (c + 1) * cell_w, (r + 1) * cell_h))
                 for r in range(rows) for c in range(cols)]
        return [source] + cells, grid

    def placeholder(self, tokenizer, grid, image_index):
        unks = tokenizer.unk_token * self.query_num
        image = tokenizer.im_start + unks + tokenizer.im_end
        if not self.per_slice:
            if grid is None:
                return image
            row = image * grid[0]
            return image + tokenizer.slice_start + "\n".join([row] * grid[1]) + tokenizer.slice_end
        prefix = f"{tokenizer.im_id_start}{image_index}{tokenizer.im_id_end}" if self.use_image_id else ""
        if grid is None:
            return prefix + image
        row = (tokenizer.slice_start + unks + tokenizer.slice_end) * grid[0]
        return prefix + image + "\n".join([row] * grid[1])

    def to_tensor(self, view, patch_major):
        """[3, H, W] normalised (mean 0.5, std 0.5), or [3, patch, H*W/patch] when patch_major."""
        pixels = torch.from_numpy(np.asarray(view.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
        pixels = (pixels - 0.5) / 0.5
        tgt = (pixels.shape[1] // self.patch, pixels.shape[2] // self.patch)
        if patch_major:
            unfolded = torch.nn.functional.unfold(pixels, (self.patch, self.patch), stride=(self.patch, self.patch))
            pixels = unfolded.reshape(3, self.patch, self.patch, -1).permute(0, 1, 3, 2).reshape(3, self.patch, -1)
        return pixels, tgt


class MiniCPMVImageProcessor(BaseImageProcessor):
    """The slicing settings of preprocessor_config.json. As in the real checkpoints they are a
    second copy of config.json's: 2.6+ chat() asserts that the two agree and slices with these."""

    model_input_names = ["pixel_values"]

    def __init__(self, max_slice_nums=9, scale_resolution=448, patch_size=14, use_image_id=True,
                 image_feature_size=64, slice_mode=True, norm_mean=(0.5, 0.5, 0.5), norm_std=(0.5, 0.5, 0.5),
                 version=2.6, **kwargs):
        super().__init__(**kwargs)
        self.max_slice_nums, self.scale_resolution, self.patch_size = max_slice_nums, scale_resolution, patch_size
        self.use_image_id, self.image_feature_size, self.slice_mode = use_image_id, image_feature_size, slice_mode
        self.norm_mean, self.norm_std, self.version = list(norm_mean), list(norm_std), version

    def slicer(self, max_slice_nums=None, use_image_id=None):
        """The slicer of one call: chat()'s max_slice_nums / use_image_id win over these settings."""
        return MiniCPMVImageSlicer(self.image_feature_size, self.patch_size, max_slice_nums or self.max_slice_nums,
                                   self.scale_resolution, per_slice=True,
                                   use_image_id=self.use_image_id if use_image_id is None else bool(use_image_id))


# registered as the published files do, by the argument transformers 4.57 deprecates (a
# FutureWarning when the module loads)
AutoImageProcessor.register("MiniCPMVImageProcessor", MiniCPMVImageProcessor)
