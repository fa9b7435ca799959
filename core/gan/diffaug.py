"""DiffAugment (Zhao et al. 2020): the same random translation and cutout on real AND fake
images before every D call, differentiable, so D cannot memorise a set of tens of images
and G still gets gradients through the augmentation.

Both ops draw their parameters on the images' device from torch's global generator (so a
checkpoint's RNG state replays them, and a CUDA graph can capture them). Uncovered pixels
become ``fill`` (-1: black in the [-1, 1] image range, like the letterbox padding).
"""
from __future__ import annotations

import torch

TRANSLATION_RATIO = 0.125   # shift up to 1/8 of the side each way (the paper's setting)
CUTOUT_RATIO = 0.5          # blank a square of half the side (the paper's setting)


def _draw(low: int, high: int, b: int, device, part: tuple[int, slice] | None) -> torch.Tensor:
    """(b, 1) random integers in [low, high); with ``part = (global_batch, slice)`` they are
    drawn for the whole global batch and sliced, as every rank of a distributed run does."""
    if part is None:
        return torch.randint(low, high, (b, 1), device=device)
    total, sl = part
    return torch.randint(low, high, (total, 1), device=device)[sl]


def translate(x: torch.Tensor, ratio: float = TRANSLATION_RATIO, fill: float = -1.0,
              part: tuple[int, slice] | None = None) -> torch.Tensor:
    """Shift each image (B, C, H, W) by its own integer (dy, dx) in [-ratio*side, ratio*side]."""
    b, c, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = _draw(-sh, sh + 1, b, x.device, part)
    dx = _draw(-sw, sw + 1, b, x.device, part)
    rows = torch.arange(h, device=x.device)[None, :] - dy          # (B, H): source row of each output row
    cols = torch.arange(w, device=x.device)[None, :] - dx          # (B, W)
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]   # (B, H, W)
    index = rows.clamp(0, h - 1)[:, :, None] * w + cols.clamp(0, w - 1)[:, None, :]           # (B, H, W)
    moved = x.reshape(b, c, h * w).gather(2, index.view(b, 1, h * w).expand(b, c, h * w)).view(b, c, h, w)
    return torch.where(inside[:, None], moved, torch.full_like(moved, fill))


def cutout(x: torch.Tensor, ratio: float = CUTOUT_RATIO, fill: float = -1.0,
           part: tuple[int, slice] | None = None) -> torch.Tensor:
    """Blank one (ratio*H) x (ratio*W) square per image, its centre uniform over the image."""
    b, c, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    top = _draw(0, h + (1 - ch % 2), b, x.device, part) - ch // 2
    left = _draw(0, w + (1 - cw % 2), b, x.device, part) - cw // 2
    ys, xs = torch.arange(h, device=x.device)[None, :], torch.arange(w, device=x.device)[None, :]
    in_y = (ys >= top) & (ys < top + ch)                           # (B, H)
    in_x = (xs >= left) & (xs < left + cw)                         # (B, W)
    hole = in_y[:, :, None] & in_x[:, None, :]                     # (B, H, W)
    return torch.where(hole[:, None], torch.full_like(x, fill), x)


def diff_augment(x: torch.Tensor, part: tuple[int, slice] | None = None) -> torch.Tensor:
    """Translation then cutout: the policy the paper recommends for small grayscale sets.
    ``part``: (global batch, this rank's slice) in a distributed run (see core.distributed)."""
    return cutout(translate(x, part=part), part=part)
