"""Slicing follows the specification exactly (values worked out by hand from its formulas)."""
import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from minicpmv_ft.slicing import (best_grid, ensure_divide, layout_shape, model_input, normalise, plan_slices,
                                 reshape_by_patch, slice_image, view_pixels)
from minicpmv_ft.versions import ImageSettings


def settings(max_slice_nums=9, layout="chw"):
    return ImageSettings(query_num=64, patch_size=14, max_slice_nums=max_slice_nums, scale_resolution=448,
                         slice_mode=True, use_image_id=False, placeholder_scheme="wrapped", pixel_layout=layout)


# (W, H), max_slice_nums -> source size, grid (cols, rows), slice size
CASES = [
    ((20, 20), 9, (448, 448), None, None),  # tiny: upscaled, not sliced
    ((448, 448), 9, (448, 448), None, None),  # exactly scale_resolution^2: one view
    ((449, 449), 9, (448, 448), (1, 2), (630, 322)),  # just over: 2 slices, first minimum (1, 2) wins
    ((1000, 1000), 9, (448, 448), (2, 2), (448, 448)),  # square
    ((2400, 400), 9, (1092, 182), (6, 1), (448, 448)),  # panorama 6:1
    ((400, 2400), 9, (182, 1092), (1, 6), (448, 448)),  # tall 1:6
    ((4000, 3000), 9, (518, 392), (3, 3), (518, 392)),  # photo, capped at 9 slices
    ((100, 300), 9, (252, 770), None, None),  # needs upscale
    ((800, 600), 9, (518, 392), (2, 2), (518, 392)),
    ((2400, 400), 4, (1092, 182), (4, 1), (546, 364)),  # max_slice_nums 4
    ((4000, 3000), 4, (518, 392), (2, 2), (518, 392)),
    ((4000, 3000), 1, (518, 392), None, None),  # max_slice_nums 1: never sliced
    ((1000, 1000), 1, (448, 448), None, None),
]


@pytest.mark.parametrize("size,max_slices,source,grid,cell", CASES)
def test_plan(size, max_slices, source, grid, cell):
    plan = plan_slices(size, settings(max_slices))
    assert (plan.source_size, plan.grid, plan.cell_size) == (source, grid, cell)


def test_ensure_divide_uses_round_half_even():
    assert ensure_divide(224.5 * 2, 2) == 448  # round(224.5) == 224
    assert ensure_divide(3, 14) == 14  # never below one patch


def test_grid_candidates_skip_one_and_above_max():
    assert best_grid((900, 500), 9, 448) == (2, 1)  # multiple 3 -> counts 2,3,4 -> 2:1 fits 1.8:1 best
    assert best_grid((900, 500), 2, 448) == (2, 1)  # multiple capped at 2 -> counts 2 only


@pytest.mark.parametrize("size,max_slices,source,grid,cell", CASES)
def test_views_are_cut_row_major(size, max_slices, source, grid, cell):
    image = Image.new("RGB", size)
    if grid is not None:  # paint each future cell a distinct colour to check the order
        cols, rows = grid
        for r in range(rows):
            for c in range(cols):
                box = (c * size[0] // cols, r * size[1] // rows, (c + 1) * size[0] // cols, (r + 1) * size[1] // rows)
                image.paste((10 * c, 10 * r, 200), box)
    views, plan = slice_image(image, settings(max_slices))
    assert views[0].size == source
    assert len(views) == 1 + plan.num_slices
    for k, view in enumerate(views[1:]):
        assert view.size == cell
        r, c = divmod(k, grid[0])
        centre = view.getpixel((cell[0] // 2, cell[1] // 2))
        assert abs(centre[0] - 10 * c) <= 2 and abs(centre[1] - 10 * r) <= 2


def _remote_slicer(max_slices):
    path = __import__("make_tiny_model").REMOTE_CODE / "image_processing_minicpmv.py"
    spec = importlib.util.spec_from_file_location("remote_image_processing", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MiniCPMVImageSlicer(64, 14, max_slices, 448)


@pytest.mark.parametrize("max_slices", [1, 2, 4, 9])
def test_training_slicing_matches_inference_processor(max_slices):
    """The tiny models' chat() slices with its own code; both must agree on every size."""
    slicer = _remote_slicer(max_slices)
    sizes = [(w, h) for w in (14, 97, 448, 449, 640, 1024, 1920, 4032) for h in (14, 300, 448, 480, 1080, 3024)]
    for size in sizes:
        plan = plan_slices(size, settings(max_slices))
        views, grid = slicer.slices(Image.new("RGB", size))
        assert grid == plan.grid, size
        assert views[0].size == plan.source_size, size
        assert all(v.size == plan.cell_size for v in views[1:]), size


def test_pixels_normalised_and_patch_major_layout():
    image = Image.new("RGB", (28, 42), (255, 0, 128))
    pixels = view_pixels(image, settings(layout="chw"))
    assert pixels.dtype == torch.uint8 and pixels.shape == layout_shape(42, 28, settings(layout="chw")) == (3, 42, 28)
    tensor = model_input(pixels)
    assert torch.allclose(tensor[:, 0, 0], torch.tensor([1.0, -1.0, 128 / 255 * 2 - 1]), atol=1e-6)
    patched = view_pixels(image, settings(layout="patch_major"))
    assert patched.shape == layout_shape(42, 28, settings(layout="patch_major")) == (3, 14, 42 * 28 // 14)
    # rearranged as uint8 then normalised: the floats of normalising first, then rearranging
    assert torch.equal(model_input(patched), reshape_by_patch(normalise(image), 14))


def test_normalised_pixels_equal_torchvision_bit_for_bit():
    """The checkpoints' processors: transforms.ToTensor() then Normalize(mean 0.5, std 0.5)."""
    from torchvision import transforms

    pixels = np.random.RandomState(0).randint(0, 256, (37, 53, 3), dtype=np.uint8)
    official = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,) * 3, (0.5,) * 3)])
    expected = official(Image.fromarray(pixels))
    for view in (Image.fromarray(pixels), pixels):  # PIL view, or a cached uint8 array
        ours = normalise(view)
        assert ours.dtype == torch.float32 and torch.equal(ours, expected)


def test_reshape_by_patch_lays_patches_side_by_side_in_row_major_order():
    image = torch.arange(3 * 28 * 42, dtype=torch.float32).reshape(3, 28, 42)  # 2 x 3 patches of 14
    out = reshape_by_patch(image, 14)
    assert out.shape == (3, 14, 6 * 14)
    for k in range(6):
        r, c = divmod(k, 3)
        assert torch.equal(out[:, :, k * 14:(k + 1) * 14], image[:, r * 14:(r + 1) * 14, c * 14:(c + 1) * 14])
