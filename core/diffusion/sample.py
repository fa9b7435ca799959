"""A diffusion checkpoint's EMA UNet, and noise -> images through it (DDIM, :mod:`core.diffusion.ddim`).

:func:`load_model` / :func:`generate_array` mirror :mod:`core.gan.sample`: the same (checkpoint,
seed, n, class, steps, guidance) gives the same images on any device, since the noise comes from
one seeded CPU generator. :mod:`core.generators` dispatches between the two families.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from core.device import resolve_device, use_bf16
from core.diffusion.ddim import ddim_sample, to_uint8
from core.diffusion.models import build_unet
from core.diffusion.train import DiffusionConfig, checkpoint_config, load_checkpoint


def load_model(checkpoint: str | Path, device: str = "cpu", state: dict | None = None
               ) -> tuple[torch.nn.Module, dict, DiffusionConfig]:
    """The checkpoint's EMA UNet in eval mode on ``device``, the checkpoint dict and its config
    (``state``: the checkpoint already read)."""
    from core.checkpoints import load_weights

    dev = resolve_device(device)
    state = state if state is not None else load_checkpoint(checkpoint, dev)
    cfg = checkpoint_config(state)
    model = build_unet(cfg.resolution, cfg.width, len(cfg.classes) if cfg.conditional else 0, cfg.attention)
    load_weights({"ema": model}, state, str(checkpoint))
    return model.to(dev).eval(), state, cfg


def sample_noise(n: int, resolution: int, seed: int) -> torch.Tensor:
    """The start noise of ``n`` images: one seeded CPU generator, the same on any device."""
    return torch.randn(n, 1, resolution, resolution, generator=torch.Generator().manual_seed(seed))


def generate_array(model, cfg: DiffusionConfig, noise: torch.Tensor, idx: torch.Tensor | None, *, steps: int,
                   guidance: float, device: str | torch.device = "cpu", batch: int = 64, on_progress=None) -> np.ndarray:
    """uint8 (n, R, R) from start ``noise`` and class indices ``idx`` in batches."""
    dev = resolve_device(str(device)) if not isinstance(device, torch.device) else device
    bf16 = use_bf16(dev, cfg.precision if cfg.precision != "auto" else "auto")
    n = len(noise)
    out = np.empty((n, cfg.resolution, cfg.resolution), dtype=np.uint8)
    for i in range(0, n, batch):
        y = None if idx is None else idx[i:i + batch]
        out[i:i + batch] = to_uint8(ddim_sample(model, cfg, noise[i:i + batch], y, steps, guidance, dev, bf16))
        if on_progress:
            on_progress(min(n, i + batch), n, f"DDIM {steps} steps, guidance {guidance:g}")
    return out
