"""Reading image files into float arrays, with errors that name the file.

Issue-level scope: PNG, JPEG, TIFF (8 or 16 bit) through Pillow. Pillow's
decompression-bomb guard stays on; a bomb is reported like any other bad file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class ImageReadError(ValueError):
    """An image file could not be read; the message names the file and what to do."""


def read_image(path: str | Path) -> np.ndarray:
    """Read one image as a 2-D float32 array in [0, 1] (colour is converted to luminance).

    8-bit data is divided by 255. 16-bit data is scaled by its stored bit depth
    (12-bit data in 16-bit containers is common for X-rays), found from the maximum value.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found; check the path or re-create the dataset.")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64)
                if arr.size and arr.min() < 0:
                    raise ImageReadError(f"{path}: signed integer pixels are not supported; save as unsigned 8 or 16 bit.")
                top = float(arr.max()) if arr.size else 0.0
                bits = 8 if top < 256 else 12 if top < 4096 else 16
                arr = arr / float(2**bits - 1)
            elif im.mode == "F":
                arr = np.asarray(im, dtype=np.float64)
                lo, hi = float(arr.min()), float(arr.max())
                arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
            else:
                arr = np.asarray(im.convert("L"), dtype=np.float64) / 255.0
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"{path}: image is too large to open safely ({e}); downscale it first.") from e
    except UnidentifiedImageError as e:
        raise ImageReadError(f"{path}: not a readable image (corrupt or unsupported format); "
                             f"re-export it as PNG or TIFF.") from e
    except OSError as e:
        raise ImageReadError(f"{path}: the file is truncated or corrupt ({e}); re-export it.") from e
    if arr.ndim != 2 or min(arr.shape) < 1:
        raise ImageReadError(f"{path}: expected a 2-D grayscale image, got shape {arr.shape}.")
    return np.clip(arr, 0.0, 1.0).astype(np.float32)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float [0, 1] -> uint8 with rounding (values outside are clipped)."""
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
