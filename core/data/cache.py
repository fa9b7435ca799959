"""Pixel cache: every image of a dataset at one square size, as a memory-mapped uint8 array.

Pages and trainers index it (``cache.array[i]``) without loading the dataset into memory.
Images are letterboxed: padded to a square (centred, black) and resized, so anatomy keeps
its aspect ratio; :func:`box_to_cache` maps boxes the same way. A file that cannot be read
is recorded in ``errors`` and its slot stays black with ``ok[i] == False``; it never stops
the build.

Location: ``<workspace>/cache/<content hash[:16]>/pixels_<size>.npy`` (+ ``.ok.npy``,
``.errors.json``). The content hash fixes the row order, so a changed dataset gets a new cache.
"""
from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.data.datasets import Dataset
from core.data.io import ImageReadError, read_image, to_uint8
from core.files import atomic_path


@dataclass(eq=False)
class PixelCache:
    array: np.ndarray          # (N, size, size) uint8, memory-mapped, manifest order
    ok: np.ndarray             # (N,) bool; False where the file could not be read
    errors: dict[str, str]     # image_id -> readable message
    size: int
    path: Path

    def index_of(self, ds: Dataset) -> dict[str, int]:
        return {image_id: i for i, image_id in enumerate(ds.manifest["image_id"])}


def letterbox(image: np.ndarray, size: int) -> np.ndarray:
    """Pad a 2-D float image to a centred square, then resize to ``size`` x ``size``."""
    from PIL import Image

    h, w = image.shape
    side = max(h, w)
    if (h, w) != (side, side):
        square = np.zeros((side, side), dtype=np.float32)
        top, left = (side - h) // 2, (side - w) // 2
        square[top:top + h, left:left + w] = image
        image = square
    if side == size:
        return image.astype(np.float32)
    resample = Image.Resampling.BOX if side > size else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(image.astype(np.float32), mode="F").resize((size, size), resample))


def box_to_cache(box: dict, width: int, height: int, size: int) -> dict:
    """Map a box from stored-file pixels to letterboxed cache pixels."""
    side = max(width, height)
    s = size / side
    dx, dy = (side - width) // 2, (side - height) // 2
    return {**box, "xmin": (box["xmin"] + dx) * s, "xmax": (box["xmax"] + dx) * s,
            "ymin": (box["ymin"] + dy) * s, "ymax": (box["ymax"] + dy) * s}


def cache_dir(ds: Dataset) -> Path:
    from core.workspace import workspace_dir

    return workspace_dir("cache") / ds.content_hash[:16]


def pixel_cache(ds: Dataset, size: int = 256,
                on_progress: Callable[[int, int, str], None] | None = None) -> PixelCache:
    """Open the cache for ``ds`` at ``size``, building it first if it does not exist."""
    if not 8 <= size <= 2048:
        raise ValueError(f"size={size}: the pixel cache size must be between 8 and 2048 pixels.")
    folder = cache_dir(ds)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"pixels_{size}.npy"
    ok_path, err_path = path.with_suffix(".ok.npy"), path.with_suffix(".errors.json")
    if not (path.is_file() and ok_path.is_file() and err_path.is_file()):
        _build(ds, size, path, ok_path, err_path, on_progress)
    array = np.load(path, mmap_mode="r")
    if array.shape != (len(ds.manifest), size, size):  # stale or foreign file: rebuild once
        _build(ds, size, path, ok_path, err_path, on_progress)
        array = np.load(path, mmap_mode="r")
    return PixelCache(array=array, ok=np.load(ok_path), errors=json.loads(err_path.read_text()),
                      size=size, path=path)


def _build(ds: Dataset, size: int, path: Path, ok_path: Path, err_path: Path, on_progress) -> None:
    """Write the three files under temp names beside them (a full disk or Ctrl+C leaves none
    behind), then rename them together: ok and errors first, the pixels last (the ``with``
    blocks end innermost first), so the pixel file's presence marks a complete cache."""
    with atomic_path(path) as tmp, atomic_path(err_path) as err_tmp, atomic_path(ok_path) as ok_tmp:
        _build_files(ds, size, on_progress, tmp, ok_tmp, err_tmp)


def _reserve(f, nbytes: int) -> None:
    """Allocate the file's blocks now: on a full disk this raises ENOSPC here, where a
    write through the memory map of a sparse file would kill the process with SIGBUS."""
    try:
        os.posix_fallocate(f.fileno(), 0, nbytes)
    except AttributeError:  # not on this OS
        pass
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):  # the file system cannot; go on sparse
            raise


def _build_files(ds: Dataset, size: int, on_progress, tmp: Path, ok_tmp: Path, err_tmp: Path) -> None:
    """Fill the pixel file ``tmp`` (its blocks reserved first) and write ``ok_tmp`` and ``err_tmp``."""
    n = len(ds.manifest)
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, size, size))
    with open(tmp, "r+b") as f:
        _reserve(f, os.path.getsize(tmp))
    ok = np.zeros(n, dtype=bool)
    errors: dict[str, str] = {}
    report = on_progress or (lambda done, total, msg: None)
    step = max(1, n // 50)
    for i, row in enumerate(ds.manifest.itertuples()):
        try:
            arr[i] = to_uint8(letterbox(read_image(ds.root / row.path), size))
            ok[i] = True
        except ImageReadError as e:
            errors[row.image_id] = str(e)
        if (i + 1) % step == 0 or i + 1 == n:
            report(i + 1, n, f"Caching {ds.name} at {size} px")
    arr.flush()
    del arr
    with open(ok_tmp, "wb") as f:
        np.save(f, ok)
    err_tmp.write_text(json.dumps(errors, indent=1))
