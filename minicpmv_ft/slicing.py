"""MiniCPM-V's adaptive high-resolution slicing, reproduced exactly.

An image becomes one downscaled "source" image plus, when it is large, a grid of slices
(cols x rows, row-major). The sizes depend only on the image size and the checkpoint's
settings, so `plan_slices` works from a size alone (used to count tokens without decoding
pixels) and `slice_image` applies the same plan to pixels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .versions import ImageSettings


def ensure_divide(length: float, patch_size: int) -> int:
    # Python's round (half to even), as the real checkpoints use.
    return max(round(length / patch_size) * patch_size, patch_size)


def best_resize(size, scale_resolution: int, patch_size: int, allow_upscale: bool = False):
    """(W, H) scaled to about scale_resolution^2 pixels at the same aspect ratio, patch-aligned."""
    width, height = size
    if width * height > scale_resolution * scale_resolution or allow_upscale:
        ratio = width / height
        height = int(scale_resolution / math.sqrt(ratio))
        width = int(height * ratio)
    return ensure_divide(width, patch_size), ensure_divide(height, patch_size)


def best_grid(size, max_slice_nums: int, scale_resolution: int):
    """(cols, rows) of the slice grid, or None when the image is not sliced."""
    width, height = size
    multiple = min(math.ceil(width * height / (scale_resolution * scale_resolution)), max_slice_nums)
    if multiple <= 1:
        return None
    counts = [n for n in (multiple - 1, multiple, multiple + 1) if n != 1 and n <= max_slice_nums]
    log_ratio = math.log(width / height)
    grid, min_error = None, float("inf")
    for n in counts:
        for cols in range(1, n + 1):
            if n % cols:
                continue
            error = abs(log_ratio - math.log(cols / (n // cols)))
            if error < min_error:  # strict: the first minimum wins
                grid, min_error = (cols, n // cols), error
    return grid


@dataclass(frozen=True)
class SlicePlan:
    source_size: tuple[int, int]  # (W, H) of the whole-image view
    grid: tuple[int, int] | None  # (cols, rows), None when not sliced
    cell_size: tuple[int, int] | None  # (W, H) of each slice

    @property
    def num_slices(self) -> int:
        return 0 if self.grid is None else self.grid[0] * self.grid[1]


def plan_slices(size, settings: ImageSettings) -> SlicePlan:
    s, p = settings.scale_resolution, settings.patch_size
    grid = best_grid(size, settings.max_slice_nums, s) if settings.slice_mode else None
    if grid is None:
        return SlicePlan(best_resize(size, s, p, allow_upscale=True), None, None)
    cols, rows = grid
    refine_w, refine_h = ensure_divide(size[0], cols), ensure_divide(size[1], rows)
    cell = best_resize((refine_w / cols, refine_h / rows), s, p, allow_upscale=True)
    return SlicePlan(best_resize(size, s, p), grid, cell)


def view_bytes(plan: SlicePlan) -> int:
    """uint8 RGB bytes of all views of an image with this plan."""
    source = plan.source_size[0] * plan.source_size[1]
    cells = plan.num_slices * plan.cell_size[0] * plan.cell_size[1] if plan.grid else 0
    return 3 * (source + cells)


def slice_image(image: Image.Image, settings: ImageSettings):
    """[source, slice(0,0), slice(0,1), ...] as PIL images (row-major), and the plan."""
    plan = plan_slices(image.size, settings)
    views = [image.resize(plan.source_size, Image.Resampling.BICUBIC)]
    if plan.grid is not None:
        cols, rows = plan.grid
        cell_w, cell_h = plan.cell_size
        whole = image.resize((cell_w * cols, cell_h * rows), Image.Resampling.BICUBIC)
        for r in range(rows):
            for c in range(cols):
                views.append(whole.crop((c * cell_w, r * cell_h, (c + 1) * cell_w, (r + 1) * cell_h)))
    return views, plan


def normalise(view) -> torch.Tensor:
    """[3, H, W] float32 of an RGB view (PIL image or uint8 H x W x 3 array): ToTensor (x / 255)
    then mean 0.5 / std 0.5 per channel, the same float32 operations in the same order, so the
    same bits, as the checkpoints' processors."""
    return _normalised(_channels_first(view).contiguous())


def _channels_first(view) -> torch.Tensor:
    return torch.from_numpy(np.array(view, dtype=np.uint8, copy=True)).permute(2, 0, 1)


def _normalised(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.float().div_(255).sub_(0.5).div_(0.5)


def reshape_by_patch(image: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[C, H, W] -> [C, patch, H*W/patch]: the patch x patch squares in row-major order laid side
    by side (out[c, a, (i * W/patch + j) * patch + b] = image[c, i * patch + a, j * patch + b]).
    One permuted copy; any dtype (the data path moves uint8, a quarter of the bytes)."""
    channels, height, width = image.shape
    rows, cols = height // patch_size, width // patch_size
    blocks = image.reshape(channels, rows, patch_size, cols, patch_size)
    return blocks.permute(0, 2, 1, 3, 4).reshape(channels, patch_size, rows * cols * patch_size)


def view_pixels(view, settings: ImageSettings) -> torch.Tensor:
    """uint8 pixels of one view (PIL image or H x W x 3 array) in the version's layout: [3, H, W]
    or patch-major [3, patch, H*W/patch]; model_input() makes the model's floats of them."""
    pixels = _channels_first(view)
    if settings.pixel_layout == "patch_major":
        return reshape_by_patch(pixels, settings.patch_size)
    return pixels.contiguous()


def layout_shape(height: int, width: int, settings: ImageSettings) -> tuple[int, int, int]:
    """Shape of view_pixels() for an H x W view."""
    if settings.pixel_layout == "patch_major":
        return 3, settings.patch_size, height * width // settings.patch_size
    return 3, height, width


def model_input(pixels: torch.Tensor) -> torch.Tensor:
    """view_pixels() -> the float32 the model takes. Rearranging before normalising gives the same
    values: normalisation works on each pixel alone."""
    return _normalised(pixels)
