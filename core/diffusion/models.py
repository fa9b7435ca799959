"""The denoising UNet and the noise schedules, from MONAI.

The UNet halves the image at each level down to 16 px, where one self-attention block sits:
64 px -> 3 levels (w, 2w, 4w), 128 px -> 4, 256 px -> 5 (w, 2w, 4w, 4w, 8w); 32 px (tests) -> 2.
A class-conditional model has one class embedding more than it has classes: the last index is
the "no class" token that classifier-free guidance trains with (condition dropout) and samples
against. MONAI is imported inside the functions: ``import monai`` loads its submodules (seconds).
"""
from __future__ import annotations

import torch

RESOLUTIONS = (32, 64, 128, 256)
SCHEDULES = ("cosine", "linear_beta", "scaled_linear_beta")
PREDICTIONS = ("v_prediction", "epsilon")


def channels_for(resolution: int, width: int) -> tuple[int, ...]:
    """Channels per level: the last level works at 16 px (8 px for 32 px inputs)."""
    levels = {32: 2, 64: 3, 128: 4, 256: 5}[resolution]
    mult = (1, 2, 4, 4, 8)[:levels]
    return tuple(width * m for m in mult)


def build_unet(resolution: int, width: int, n_classes: int, attention: bool = True) -> torch.nn.Module:
    """MONAI's DiffusionModelUNet for 1-channel images. ``n_classes`` > 0: class-conditional, with
    ``n_classes + 1`` embeddings (the last is the unconditional token)."""
    from monai.networks.nets.diffusion_model_unet import DiffusionModelUNet

    ch = channels_for(resolution, width)
    return DiffusionModelUNet(
        spatial_dims=2, in_channels=1, out_channels=1, channels=ch,
        attention_levels=(False,) * (len(ch) - 1) + (attention,), num_res_blocks=1,
        norm_num_groups=8, num_head_channels=min(32, ch[-1]),
        num_class_embeds=(n_classes + 1) if n_classes else None)


def training_scheduler(timesteps: int, schedule: str, prediction: str):
    from monai.networks.schedulers.ddpm import DDPMScheduler

    return DDPMScheduler(timesteps, schedule=schedule, prediction_type=prediction, clip_sample=True)


def sampling_scheduler(timesteps: int, schedule: str, prediction: str, steps: int, device: torch.device):
    """A DDIM scheduler (eta = 0: deterministic given the start noise) set to ``steps`` steps."""
    from monai.networks.schedulers.ddim import DDIMScheduler

    s = DDIMScheduler(timesteps, schedule=schedule, prediction_type=prediction, clip_sample=True)
    s.set_timesteps(steps, device=device)
    return s
