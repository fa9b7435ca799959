"""DDIM sampling with classifier-free guidance (the sampling half of :mod:`core.diffusion`).

:func:`ddim_sample` runs ``steps`` deterministic DDIM steps (eta = 0) from given noise. With a
class-conditional model and a guidance scale w != 1, each step evaluates the UNet on the batch
twice, with the class and with the "no class" token, in one forward pass of 2B images, and
takes e = e_u + w (e_c - e_u) (Ho & Salimans 2022); w = 1 is plain conditional sampling (one pass).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from core.diffusion.models import sampling_scheduler


def check_sampling(steps: int, guidance: float, timesteps: int = 1000) -> None:
    if not 1 <= steps <= timesteps:
        raise ValueError(f"sample_steps={steps}: choose between 1 and the {timesteps} training timesteps "
                         f"(DDIM: 20-50 is the usual range).")
    if not (math.isfinite(guidance) and 0 <= guidance <= 20):
        raise ValueError(f"guidance={guidance}: choose a scale between 0 and 20 (1: no guidance; 1.5-4 is usual).")


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, 1, R, R) in [-1, 1] -> uint8 (B, R, R)."""
    return ((x[:, 0].float() + 1) * 127.5).nan_to_num(0.0).round().clamp(0, 255).to(torch.uint8).cpu().numpy()


@torch.inference_mode()
def ddim_sample(model: torch.nn.Module, config, noise: torch.Tensor, labels: torch.Tensor | None,
                steps: int, guidance: float, device: torch.device, bf16: bool = False,
                on_step=None) -> torch.Tensor:
    """Images in [-1, 1] from ``noise`` (B, 1, R, R) after ``steps`` DDIM steps; ``labels`` (B,) class
    indices of a conditional model (None: per-class or unconditional). ``on_step(i, steps)`` reports."""
    check_sampling(steps, guidance, config.timesteps)
    sched = sampling_scheduler(config.timesteps, config.schedule, config.prediction, steps, device)
    x = noise.to(device).float()
    n_classes = len(config.classes) if config.conditional else 0
    guided = labels is not None and n_classes and guidance != 1.0
    y = None
    if labels is not None and n_classes:
        y = labels.to(device).long()
        if guided:
            y = torch.cat([y, torch.full_like(y, n_classes)])   # conditional half, then "no class" half
    was_training = model.training
    model.eval()
    try:
        for i, t in enumerate(sched.timesteps):
            t_int = int(t)
            inp = torch.cat([x, x]) if guided else x
            tt = torch.full((len(inp),), t_int, device=device, dtype=torch.long)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                out = model(inp, tt, class_labels=y).float()
            if guided:
                cond, uncond = out.chunk(2)
                out = uncond + guidance * (cond - uncond)
            x, _ = sched.step(out, t_int, x)
            if on_step:
                on_step(i + 1, steps)
    finally:
        model.train(was_training)
    return x.clamp(-1, 1)
