"""Preview samples and sample grids: what the Augment page shows and what a run logs to MLflow."""
from __future__ import annotations

import numpy as np

from core.augment.pipeline import Augmented, Pipeline


def preview_samples(pipeline: Pipeline, image: np.ndarray, boxes: list[dict] | None, n: int,
                    seed: int = 0) -> list[Augmented]:
    """``n`` augmented versions of one image; sample ``k`` uses the generator ``[seed, k]``,
    so changing ``n`` keeps the earlier samples."""
    if not 1 <= n <= 64:
        raise ValueError(f"n={n}: choose between 1 and 64 preview samples.")
    return [pipeline.apply(image, np.random.default_rng([seed, k]), boxes) for k in range(n)]


def fit_working_size(image: np.ndarray, max_side: int = 512) -> np.ndarray:
    """Downscale (area filter) so the longer side is at most ``max_side``; dtype kept."""
    from PIL import Image

    h, w = image.shape
    if max(h, w) <= max_side:
        return image
    s = max_side / max(h, w)
    size = (max(2, round(w * s)), max(2, round(h * s)))
    if image.dtype == np.uint16:
        return np.asarray(Image.fromarray(image.astype(np.int32)).resize(size, Image.Resampling.BOX)).astype(np.uint16)
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))


def display_uint8(image: np.ndarray) -> np.ndarray:
    """An 8-bit view of a uint8/uint16 image for display (uint16 scaled by its bit depth)."""
    from core.augment.ops import value_max

    if image.dtype == np.uint8:
        return image
    return (image.astype(np.float32) * (255.0 / value_max(image)) + 0.5).astype(np.uint8)


def grid_image(tiles: list, cols: int, tile: int = 192, gap: int = 4):
    """Lay PIL images out in a grid of ``tile`` px cells (each fitted, aspect kept) on a dark
    background; returns one RGB PIL image."""
    from PIL import Image

    cols = max(1, min(cols, len(tiles)))
    rows = (len(tiles) + cols - 1) // cols
    canvas = Image.new("RGB", (cols * tile + (cols + 1) * gap, rows * tile + (rows + 1) * gap), (17, 17, 17))
    for k, im in enumerate(tiles):
        im = im.convert("RGB")
        scale = tile / max(im.size)
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))))
        r, c = divmod(k, cols)
        x = gap + c * (tile + gap) + (tile - im.width) // 2
        y = gap + r * (tile + gap) + (tile - im.height) // 2
        canvas.paste(im, (x, y))
    return canvas


def sample_grid(pipeline: Pipeline, sources: list[tuple[np.ndarray, list[dict]]], classes: list[str],
                per_image: int = 4, seed: int = 0, tile: int = 160):
    """One row per source image: the original, then ``per_image`` augmented samples, boxes drawn."""
    from core.images import draw_boxes

    tiles = []
    for image, boxes in sources:
        tiles.append(draw_boxes(display_uint8(image), boxes, classes, labels=False))
        for out in preview_samples(pipeline, image, boxes, per_image, seed):
            tiles.append(draw_boxes(display_uint8(out.image), out.boxes, classes, labels=False))
    return grid_image(tiles, per_image + 1, tile)
