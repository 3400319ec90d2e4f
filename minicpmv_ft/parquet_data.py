"""Parquet data files (Hugging Face datasets: RLAIF-V, LLaVA-style sets), read with pyarrow, a
batch of rows at a time.

Their images are often inside the rows as {"bytes": ..., "path": ...}. Every such image is
written once to a folder beside the data file (DATA.images/, named by its content's hash, so
runs and processes share the files and a row's image is written once however often it is
read) and the row names that file instead, so the rest of the data path (the check, slicing,
the image cache) reads images from disk as it does for JSON data. The log says how many
images were written and how many were there already.
"""
from __future__ import annotations

import hashlib
import logging
import os

from .errors import DataError

logger = logging.getLogger(__name__)
ROWS_PER_BATCH = 256  # rows decoded at once: their image bytes are in memory until written
IMAGE_KEYS = ("image", "images")  # where rows keep images (ours and RLAIF-V: image; LLaMA-Factory, ms-swift: images)
SIGNATURES = ((b"\x89PNG", ".png"), (b"\xff\xd8", ".jpg"), (b"GIF8", ".gif"), (b"BM", ".bmp"))


def images_folder(data_path: str) -> str:
    """DATA.images beside the data file, as an absolute path: the rows name their images by it,
    and a relative one would be taken from the data's folder a second time (samples.read_records)."""
    return os.path.splitext(os.path.abspath(data_path))[0] + ".images"


def read_parquet(path: str) -> list[dict]:
    """The rows of a Parquet file as records, embedded images replaced by their files' paths."""
    import pyarrow
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=ROWS_PER_BATCH)
        writer = ImageWriter(images_folder(path))
        records = [writer.record(row) for batch in batches for row in batch.to_pylist()]
    except (pyarrow.ArrowException, OSError) as error:
        raise DataError(path, None, None, f"cannot read it as Parquet: {error}") from None
    if writer.written or writer.found:
        logger.info("%s: %d images inside the rows written to %s (%d were there already)", path, writer.written,
                    writer.folder, writer.found)
    return records


class ImageWriter:
    """Replaces {"bytes", "path"} images of rows with files in `folder`, counting them."""

    def __init__(self, folder: str):
        self.folder, self.written, self.found = folder, 0, 0

    def record(self, row: dict) -> dict:
        for key in IMAGE_KEYS:
            value = row.get(key)
            if isinstance(value, list):
                row[key] = [self.path(item) for item in value]
            elif value is not None:
                row[key] = self.path(value)
        return row

    def path(self, image):
        """A file path for an embedded image; anything else as it is (a path stays a path; an
        entry of {"bytes": None, "path": p} becomes p)."""
        if not isinstance(image, dict) or "bytes" not in image:
            return image
        data = image["bytes"]
        if data is None:
            return image.get("path")
        suffix = os.path.splitext(image.get("path") or "")[1].lower() or _sniffed_suffix(data)
        target = os.path.join(self.folder, hashlib.sha256(data).hexdigest()[:32] + suffix)
        if os.path.exists(target) and os.path.getsize(target) == len(data):
            self.found += 1
            return target
        os.makedirs(self.folder, exist_ok=True)
        partial = f"{target}.{os.getpid()}.partial"  # processes reading the same file write side by side
        with open(partial, "wb") as handle:
            handle.write(data)
        os.replace(partial, target)
        self.written += 1
        return target


def _sniffed_suffix(data: bytes) -> str:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return next((suffix for signature, suffix in SIGNATURES if data.startswith(signature)), ".img")
