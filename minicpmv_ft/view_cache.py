"""--image_cache_dir: each image's (and each video's sampled frames') decoded and sliced views
kept on disk as uint8 (in the model's pixel layout), so that epochs after the first skip
decoding, resizing and rearranging (most of the data path's time).

One file per (image file, its modification time and size, slicing settings): a header with
the image's size, frame count and view shapes, then the views' RGB bytes. Entries are written
to a temporary name and renamed, so processes writing the same image at once (DataLoader
workers, ranks) leave one whole file; an entry that cannot be read is rebuilt. A changed image
file gets a new key; entries of old versions stay until the folder is deleted.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import struct
import tempfile

import numpy as np

MAGIC = b"MCPV1\n"  # change when the layout or the way views are made changes
HEADER = struct.Struct("<IIII")  # width, height, frames, number of views
logger = logging.getLogger(__name__)


class ViewCache:
    def __init__(self, folder: str, settings, *more_settings):
        """`settings` (and `more_settings`): the dataclasses whose values decide the views (the
        image settings; for a video's frames also its sampling scheme)."""
        self.folder = folder
        os.makedirs(folder, exist_ok=True)
        self.settings_key = "".join(repr(dataclasses.astuple(s)) for s in (settings, *more_settings)).encode()
        self.failed = False

    def path(self, image_path: str) -> str:
        stat = os.stat(image_path)
        key = hashlib.sha256(b"|".join([os.path.abspath(image_path).encode(), str(stat.st_mtime_ns).encode(),
                                        str(stat.st_size).encode(), self.settings_key])).hexdigest()
        return os.path.join(self.folder, key[:2], key + ".views")

    def get(self, image_path: str):
        """((W, H), frames, [(view height, view width, its uint8 pixels, flat)]) of a cached image,
        or None."""
        try:
            with open(self.path(image_path), "rb") as handle:
                data = bytearray(os.fstat(handle.fileno()).st_size)  # writable: torch takes the views as they are
                handle.readinto(data)
        except OSError:
            return None
        if not data.startswith(MAGIC) or len(data) < len(MAGIC) + HEADER.size:
            return None
        width, height, frames, count = HEADER.unpack_from(data, len(MAGIC))
        offset = len(MAGIC) + HEADER.size
        shapes = struct.unpack_from(f"<{2 * count}I", data, offset)
        offset += 8 * count
        views = []
        for k in range(count):
            rows, cols = shapes[2 * k], shapes[2 * k + 1]
            end = offset + rows * cols * 3
            if end > len(data):
                return None
            views.append((rows, cols, np.frombuffer(data, np.uint8, rows * cols * 3, offset)))
            offset = end
        return (width, height), frames, views

    def put(self, image_path: str, size, frames: int, views: list):
        """Stores the views, each (height, width, its 3 * height * width uint8 pixels in any layout);
        on a write failure (a full disk) logs it once and stops caching."""
        if self.failed:
            return
        try:
            self._write(image_path, size, frames, views)
        except OSError as exc:
            self.failed = True
            logger.warning("image cache %s: cannot write (%s); this process goes on without caching", self.folder, exc)

    def _write(self, image_path: str, size, frames: int, views: list):
        target = self.path(image_path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        header = MAGIC + HEADER.pack(size[0], size[1], frames, len(views)) + struct.pack(
            f"<{2 * len(views)}I", *[n for rows, cols, _ in views for n in (rows, cols)])
        handle, temporary = tempfile.mkstemp(dir=os.path.dirname(target), suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(header)
                for _, _, pixels in views:
                    out.write(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes())
            os.replace(temporary, target)
        except OSError:
            if os.path.exists(temporary):
                os.remove(temporary)
            raise
