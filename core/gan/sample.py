"""A GAN checkpoint's generator, and noise -> images through it.

:func:`load_generator` builds G from a train-gan checkpoint in eval mode; :func:`decode` turns noise
vectors (and class indices) into uint8 images. The family-agnostic calls (``generate_images``,
``write_synthetic_set``) live in :mod:`core.generators` and :mod:`core.synthetic`, which dispatch a
checkpoint to this module or to :mod:`core.diffusion.sample`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from core.device import resolve_device
from core.gan.models import Generator
from core.gan.train import checkpoint_config, load_checkpoint


def load_generator(checkpoint: str | Path, device: str = "cpu", state: dict | None = None) -> tuple[Generator, dict]:
    """The checkpoint's generator in eval mode on ``device``, and the checkpoint dict (``state``: the
    checkpoint already read)."""
    dev = resolve_device(device)
    state = state if state is not None else load_checkpoint(checkpoint, dev)
    cfg = checkpoint_config(state)
    G = Generator(cfg.nz, cfg.resolution, 1, cfg.width, len(cfg.classes) if cfg.conditional else 0)
    try:
        G.load_state_dict(state["generator"])
    except RuntimeError as e:
        raise ValueError(f"{checkpoint}: generator weights do not fit its config ({str(e)[:200]}); "
                         f"the checkpoint is damaged.") from e
    return G.to(dev).eval(), state


def decode(G: Generator, z: torch.Tensor, idx: torch.Tensor | None, batch: int = 256) -> np.ndarray:
    """uint8 images (n, R, R) from noise ``z`` (n, nz) and class indices ``idx`` (None: unconditional);
    G in eval mode, so each image depends on its own z only."""
    dev = next(G.parameters()).device
    parts = []
    with torch.inference_mode():
        for i in range(0, len(z), batch):
            y = None if idx is None else idx[i:i + batch].to(dev)
            x = G(z[i:i + batch].to(dev), y).float()
            parts.append(((x[:, 0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu().numpy())
    return np.concatenate(parts)
