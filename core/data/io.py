"""Reading image files into float arrays, with errors that name the file.

Issue-level scope: PNG, JPEG, TIFF (8 or 16 bit) through Pillow. Pillow's
decompression-bomb guard stays on; a bomb is reported like any other bad file. Images over
``MAX_DECODE_PIXELS`` are refused from their header, before any pixel is decoded.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
# Larger images are refused before decoding. A PNG of zeros compresses ~1000:1, so a 140 kB
# upload can claim 12,000 x 12,000 px; `prepare` decodes one image per worker and one worker
# per core, at ~13 bytes per pixel at its peak (decoded buffer, float32 image, letterboxed
# square). 50 M px (~7,000 px a side) keeps a worker under ~0.7 GB, and lies well above
# radiographs (VinDr films ~3,000 x 4,000 px, mammograms ~4,800 x 6,000 px); the dataset
# stores at most 2,048 px a side anyway. DICOM (core.data.dicom) uses the same limit.
MAX_DECODE_PIXELS = 50_000_000


class ImageReadError(ValueError):
    """An image file could not be read; the message names the file and what to do."""


def check_image_size(name, width: int, height: int) -> None:
    """Refuse an image over ``MAX_DECODE_PIXELS`` (call it with the header's size, before decoding)."""
    if width * height > MAX_DECODE_PIXELS:
        raise ImageReadError(f"{name}: the image is {width:,} x {height:,} px ({width * height / 1e6:,.0f} million "
                             f"pixels), over the limit of {MAX_DECODE_PIXELS / 1e6:,.0f} million pixels that one "
                             f"image may decode to (the dataset stores at most 2,048 px a side); downscale it, "
                             f"e.g. to 4,096 px on its longer side, and import it again.")


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
            check_image_size(path, *im.size)
            im.load()
            mode = im.mode
            # the stored samples; the decoded image is released when the file closes
            raw = np.asarray(im if mode in ("L", "I;16", "I;16B", "I;16L", "I", "F") else im.convert("L"))
        if mode in ("I;16", "I;16B", "I;16L", "I"):
            if raw.size and raw.min() < 0:
                raise ImageReadError(f"{path}: signed integer pixels are not supported; save as unsigned 8 or 16 bit.")
            top = float(raw.max()) if raw.size else 0.0
            bits = 8 if top < 256 else 12 if top < 4096 else 16
            # float32 in place: the same values as float64 division (checked for all 16-bit
            # values), at 4 instead of ~24 bytes per pixel
            arr = raw.astype(np.float32)
            arr /= np.float32(2**bits - 1)
        elif mode == "F":
            arr = np.asarray(raw, dtype=np.float64)
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
        else:
            arr = raw.astype(np.float32)
            arr /= np.float32(255.0)
        del raw
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"{path}: image is too large to open safely ({e}); downscale it first.") from e
    except UnidentifiedImageError as e:
        raise ImageReadError(f"{path}: not a readable image (corrupt or unsupported format); "
                             f"re-export it as PNG or TIFF.") from e
    except OSError as e:
        raise ImageReadError(f"{path}: the file is truncated or corrupt ({e}); re-export it.") from e
    if arr.ndim != 2 or min(arr.shape) < 1:
        raise ImageReadError(f"{path}: expected a 2-D grayscale image, got shape {arr.shape}.")
    arr = arr.astype(np.float32, copy=False)
    return np.clip(arr, 0.0, 1.0, out=arr)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float [0, 1] -> uint8 with rounding (values outside are clipped)."""
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
