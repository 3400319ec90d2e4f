"""Any image file's pixels as the RGB image the models were trained on.

PIL's convert("RGB") is wrong for two kinds of files a dataset holds: 16-bit images (mode
I;16 / I) clip to white instead of scaling, and transparent pixels take whatever colour
their RGB channels hold. Training and chat.py both read images through `to_rgb`.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

# Transparent areas are composited onto white, as browsers and viewers show them.
BACKGROUND = (255, 255, 255)
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def to_rgb(image: Image.Image) -> Image.Image:
    """The first frame of `image` in RGB: 16-bit values scaled to 8 bits, transparency on BACKGROUND."""
    if image.mode in SIXTEEN_BIT_MODES:  # 16-bit grayscale (PNG opens as I;16 or I): 65535 -> 255
        pixels = np.asarray(image, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode == "F":
        return Image.fromarray(np.clip(np.rint(np.asarray(image)), 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, BACKGROUND + (255,)), rgba).convert("RGB")
    if image.mode == "RGB":  # most JPEGs: convert() would copy every pixel for nothing
        image.load()
        return image
    return image.convert("RGB")


def frame_count(image: Image.Image) -> int:
    """Frames of an open animated GIF / APNG / WebP / multi-page TIFF (1 for a still image).
    Training uses the first frame, as the checkpoints' chat() does with such a file."""
    return getattr(image, "n_frames", 1)


def open_rgb(path: str) -> Image.Image:
    with Image.open(path) as image:
        return to_rgb(image)
