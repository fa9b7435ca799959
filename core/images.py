"""Image overlays and grids for display: boxes drawn in the class colours of ``core.charts``."""
from __future__ import annotations

import numpy as np

from core.charts import class_color


def draw_boxes(image: np.ndarray, boxes: list[dict], classes: list[str], width: int | None = None,
               labels: bool = True):
    """A uint8 grayscale array + boxes (pixel coords of that array) -> an RGB PIL image."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
    if not boxes:
        return im
    draw = ImageDraw.Draw(im)
    w = width or max(1, round(min(im.size) / 128))
    for box in boxes:
        color = class_color(box["label"], classes)
        xy = [box["xmin"], box["ymin"], max(box["xmax"] - 1, box["xmin"]), max(box["ymax"] - 1, box["ymin"])]
        draw.rectangle(xy, outline=color, width=w)
        if labels and min(im.size) >= 192:
            draw.text((box["xmin"] + 2, max(0, box["ymin"] - 11)), box["label"], fill=color)
    return im
