"""--image_cache_dir: each image's (and each video's sampled frames') decoded and sliced views
kept on disk as uint8 (in the model's pixel layout), so that epochs after the first skip
decoding, resizing and rearranging (most of the data path's time).

One file per (image file, its modification time, change time, inode and size, slicing
settings): a header with the image's size, frame count, view shapes and a CRC-32 of the views,
then the views' RGB bytes. Entries are written to a temporary name and renamed, so processes
writing the same image at once (DataLoader workers, ranks, runs sharing the folder) leave one
whole file; an entry that cannot be read, or whose length or checksum disagrees with its header,
is rebuilt. A changed image file gets a new key (its change time and inode cannot be set back,
unlike its modification time); entries of old versions stay until the folder is deleted.
Several runs, with the same or other settings, can share one folder.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import struct
import tempfile
import zlib

import numpy as np

MAGIC = b"MCPV2\n"  # change when the layout or the way views are made changes
HEADER = struct.Struct("<IIIII")  # width, height, frames, number of views, CRC-32 of the views' bytes
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
        identity = (stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_size)
        key = hashlib.sha256(b"|".join([os.path.abspath(image_path).encode(), *(str(n).encode() for n in identity),
                                        self.settings_key])).hexdigest()
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
        width, height, frames, count, checksum = HEADER.unpack_from(data, len(MAGIC))
        offset = len(MAGIC) + HEADER.size
        if len(data) < offset + 8 * count:
            return None
        shapes = struct.unpack_from(f"<{2 * count}I", data, offset)
        offset += 8 * count
        if len(data) != offset + 3 * sum(rows * cols for rows, cols in zip(shapes[::2], shapes[1::2])) \
                or zlib.crc32(memoryview(data)[offset:]) != checksum:
            return None  # cut short, grown, or damaged: rebuilt
        views = []
        for k in range(count):
            rows, cols = shapes[2 * k], shapes[2 * k + 1]
            views.append((rows, cols, np.frombuffer(data, np.uint8, rows * cols * 3, offset)))
            offset += rows * cols * 3
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
        blobs = [np.ascontiguousarray(pixels, dtype=np.uint8).tobytes() for _, _, pixels in views]
        checksum = 0
        for blob in blobs:
            checksum = zlib.crc32(blob, checksum)
        header = MAGIC + HEADER.pack(size[0], size[1], frames, len(views), checksum) + struct.pack(
            f"<{2 * len(views)}I", *[n for rows, cols, _ in views for n in (rows, cols)])
        handle, temporary = tempfile.mkstemp(dir=os.path.dirname(target), suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(header)
                out.writelines(blobs)
            os.replace(temporary, target)
        except OSError:
            if os.path.exists(temporary):
                os.remove(temporary)
            raise


def check_cache_folder(folder: str):
    """ValueError in one line unless `folder` is (or can be made) a folder this process can write."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"--image_cache_dir {folder} is a file, not a folder")
    try:
        os.makedirs(folder, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=folder, suffix=".probe")
        os.close(handle)
        os.remove(probe)
    except OSError as error:
        raise ValueError(f"--image_cache_dir {folder}: cannot write there ({error.strerror or error}); choose a "
                         "writable folder, or train without the cache") from None


def held_bytes(folder: str) -> int:
    """Bytes of the cache's entries now; entries another run removes meanwhile (a temporary file
    renamed into place) are not counted."""
    held = 0
    for sub in _entries(folder):
        if sub.is_dir():
            for entry in _entries(sub.path):
                try:
                    held += entry.stat().st_size
                except FileNotFoundError:
                    pass
    return held


def _entries(folder: str) -> list:
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except FileNotFoundError:
        return []
