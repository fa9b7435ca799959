"""Class-conditional DDPM training: ``train_diffusion(images, labels, DiffusionConfig(...), out_dir)``.

One step (Ho et al. 2020; Salimans & Ho 2022 for v-prediction; Ho & Salimans 2022 for guidance):
    sample a real batch x0 in [-1, 1], timesteps t ~ U{0..T-1} and noise e ~ N(0, I);
    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) e;
    with probability ``cond_drop`` a label becomes the "no class" token (classifier-free guidance);
    minimise || UNet(x_t, t, y) - target ||^2, target = e (epsilon) or v = sqrt(abar_t) e - sqrt(1 - abar_t) x0;
    EMA weights follow the trained ones (decay ``ema_decay`` after a warm-up) and are the ones that sample.

The loop itself (checkpoints every ``grid_every`` steps, fixed-noise grids, the fidelity check and
best.pt, time budget, divergence, resume) is :func:`core.trainloop.train_generator`, shared with the
GANs. Sampling (DDIM, guidance) is :mod:`core.diffusion.sample`.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core import checkpoints, distributed
from core.config import DictConfig
from core.device import images_to_tensor, resolve_device, set_threads, use_bf16
from core.diffusion.ddim import check_sampling, ddim_sample, to_uint8
from core.diffusion.models import PREDICTIONS, RESOLUTIONS, SCHEDULES, build_unet, training_scheduler
from core.trainloop import (BEST_FILE, CHECKPOINT_FILE, GRIDS_DIR, EpochCallback,  # noqa: F401 -- re-exported
                            check_loop_fields,
                            FidelityCallback, FidelityFn, StepCallback, TrainResult, to_grid, train_generator)

CHECKPOINT_FORMAT = "medaug-diffusion-checkpoint/1"
FIDELITY_NOISE_SEED = 7_000_003   # the fidelity check's fixed noise (apart from the training stream)
GRID_NOISE_SEED = 7919
STAT_NAMES = ("loss",)
# fields that may change when resuming; every other field must match the checkpoint
RESUMABLE_FIELDS = ("max_steps", "max_seconds", "device", "threads", "precision", "log_every", "max_abs_loss",
                    "fidelity_every", "fidelity_patience", "sample_steps", "guidance")


@dataclass(frozen=True)
class DiffusionConfig(DictConfig):
    resolution: int = 64               # image side in px: 64 or 128 (256 on a GPU; 32 for quick tests)
    batch: int = 32                    # images per step
    max_steps: int | None = 2000       # stop after this many steps (the first limit reached wins)
    max_seconds: float | None = None   # stop after this much training time in this run (a time budget)
    grid_every: int | None = None      # checkpoint + fixed-noise sample grid every N steps; None: 200
    width: int = 32                    # base channels of the UNet (multiple of 8)
    attention: bool = True             # one self-attention block at the 16 px level
    conditional: bool = False          # one class-conditional model (class embedding + guidance)
    classes: tuple[str, ...] = ()      # class names; conditional label i means classes[i]
    class_name: str | None = None      # per-class model: the class it is trained on (kept for sampling)
    timesteps: int = 1000              # diffusion steps T of training
    schedule: str = "cosine"           # noise schedule (Nichol & Dhariwal's cosine: better at low resolution)
    prediction: str = "v_prediction"   # what the UNet predicts: "v_prediction" (stable at every t) or "epsilon"
    lr: float = 1e-3                   # AdamW learning rate (small UNet, small batch)
    ema_decay: float = 0.999           # EMA of the weights; the EMA weights sample (warm-up: (1+s)/(10+s))
    cond_drop: float = 0.15            # share of labels replaced by "no class" in training (guidance needs it)
    sample_steps: int = 25             # DDIM steps for grids, fidelity checks and, by default, generation
    guidance: float = 2.0              # classifier-free guidance scale w: e = e_u + w (e_c - e_u); 1 = none
    seed: int = 0                      # seeds weights, batches, timesteps and noise
    device: str = "auto"               # "auto" (cuda if present), "cpu", "cuda" or "cuda:N"
    threads: int | None = None         # CPU threads for this process; None: torch's default (one per core)
    precision: str = "auto"            # "auto": bf16 autocast on GPUs and CPUs with native bf16, else fp32
    log_every: int = 10                # read the loss from the device every N steps (one sync)
    grid_size: int = 16                # fixed-noise images in each grid (a conditional model: per-class rows)
    max_abs_loss: float = 1e3          # a loss above this in magnitude (or NaN) stops training as diverged
    fidelity_every: int | None = None  # fidelity check (KID, domain features) every N steps; best.pt; None: none
    fidelity_patience: int | None = None  # stop when KID has not improved for this many checks

    WHAT = "diffusion config"

    def __post_init__(self):
        if self.resolution not in RESOLUTIONS:
            raise ValueError(f"resolution={self.resolution}: choose one of {', '.join(map(str, RESOLUTIONS))} px.")
        if not 1 <= self.batch <= 4096:
            raise ValueError(f"batch={self.batch}: choose between 1 and 4096.")
        if self.max_steps is None and self.max_seconds is None:
            raise ValueError("max_steps and max_seconds are both unset: give at least one of them.")
        if self.max_steps is not None and not 1 <= self.max_steps <= 10_000_000:
            raise ValueError(f"max_steps={self.max_steps}: choose between 1 and 10000000.")
        if self.max_seconds is not None and not 1 <= self.max_seconds <= 30 * 86400:
            raise ValueError(f"max_seconds={self.max_seconds}: choose between 1 s and 30 days.")
        if self.grid_every is not None and not 1 <= self.grid_every <= 1_000_000:
            raise ValueError(f"grid_every={self.grid_every}: choose between 1 and 1000000 steps (or None).")
        if not (8 <= self.width <= 256 and self.width % 8 == 0):
            raise ValueError(f"width={self.width}: choose a multiple of 8 between 8 and 256 (group norm of 8 groups).")
        if not isinstance(self.classes, tuple):
            object.__setattr__(self, "classes", tuple(self.classes))
        if self.conditional and len(self.classes) < 2:
            raise ValueError(f"conditional=True needs at least 2 class names in classes, got {list(self.classes)}.")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes={list(self.classes)}: class names must be unique.")
        if not 10 <= self.timesteps <= 10_000:
            raise ValueError(f"timesteps={self.timesteps}: choose between 10 and 10000.")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r}: choose one of {', '.join(SCHEDULES)}.")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction={self.prediction!r}: choose one of {', '.join(PREDICTIONS)}.")
        if not (math.isfinite(self.lr) and 0 < self.lr <= 1.0):
            raise ValueError(f"lr={self.lr}: choose a learning rate in (0, 1].")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay={self.ema_decay}: choose in [0, 1), e.g. 0.999 (0: no averaging).")
        if not 0 <= self.cond_drop < 1:
            raise ValueError(f"cond_drop={self.cond_drop}: choose a share in [0, 1), e.g. 0.15.")
        check_sampling(self.sample_steps, self.guidance, self.timesteps)
        check_loop_fields(self)

    @property
    def variant(self) -> str:
        """How tables name the model (GAN configs name their variant here)."""
        return "ddpm"


# --- checkpoints -------------------------------------------------------------------------

CHECKPOINT_KIND = checkpoints.Kind(CHECKPOINT_FORMAT, "diffusion", "train-diffusion",
                                   ("config", "model", "ema", "opt", "rng", "step"))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """A train-diffusion checkpoint (:func:`core.checkpoints.load`)."""
    return checkpoints.load(path, CHECKPOINT_KIND, map_location)


def checkpoint_config(state: dict) -> DiffusionConfig:
    return DiffusionConfig.from_dict(state["config"])


def fingerprint(images: torch.Tensor, labels: torch.Tensor | None) -> str:
    """SHA-1 of the training pixels and labels: a resumed run must see the same data."""
    h = hashlib.sha1(images.numpy().tobytes())
    if labels is not None:
        h.update(labels.numpy().astype(np.int64).tobytes())
    return h.hexdigest()


def training_fingerprint(images, labels, config: DiffusionConfig) -> tuple[str, int]:
    t = images_to_tensor(images, config.resolution)
    y = (torch.as_tensor(np.asarray(labels), dtype=torch.long).view(-1)
         if config.conditional and labels is not None else None)
    return fingerprint(t, y), len(t)


def check_resume(state: dict, config: DiffusionConfig, data_fingerprint: str, n_images: int, where: str) -> None:
    checkpoints.check_resume(state, config.to_dict(), RESUMABLE_FIELDS,
                             state.get("data_fingerprint") == data_fingerprint,
                             f"the training images differ from the ones this checkpoint was trained on "
                             f"({state.get('n_images')} then, {n_images} now)", where)


def plan_steps(config: DiffusionConfig) -> tuple[int, int]:
    """(steps between checkpoints and grids, total steps); a time budget may stop earlier."""
    return config.grid_every or 200, config.max_steps or 2**62


# --- the trainer -------------------------------------------------------------------------

class DiffusionTrainer:
    """The UNet, its EMA copy, AdamW and the training data on one device; ``train_step()`` does one step.

    :func:`core.trainloop.train_generator` drives it; tests and ``bench/diffusion.py`` call it directly."""

    def __init__(self, images, labels, config: DiffusionConfig, ctx: distributed.Context | None = None):
        self.config = config
        self.ctx = ctx = ctx or distributed.current()
        if ctx.active:
            raise ValueError("train-diffusion runs in one process; run it without torchrun.")
        self.device = resolve_device(config.device)
        self.bf16 = use_bf16(self.device, config.precision)
        self.n_classes = len(config.classes) if config.conditional else 0
        cpu_images = images_to_tensor(images, config.resolution)
        cpu_labels = None
        if self.n_classes:
            if labels is None:
                raise ValueError("conditional=True needs labels: one class index per image.")
            cpu_labels = torch.as_tensor(np.asarray(labels), dtype=torch.long).view(-1)
            if len(cpu_labels) != len(cpu_images):
                raise ValueError(f"labels: {len(cpu_labels)} labels for {len(cpu_images)} images.")
            if int(cpu_labels.min()) < 0 or int(cpu_labels.max()) >= self.n_classes:
                raise ValueError(f"labels: class indices must lie in [0, {self.n_classes - 1}] "
                                 f"(classes={list(config.classes)}).")
        if len(cpu_images) == 0:
            raise ValueError("no training images.")
        self.n_images = len(cpu_images)
        self.data_fingerprint = fingerprint(cpu_images, cpu_labels)
        self.steps_per_epoch, self.total_steps = plan_steps(config)

        set_threads(config.threads, ctx)
        torch.manual_seed(config.seed)
        self.data = cpu_images.to(self.device)                                        # uint8 (N, 1, R, R)
        self.labels = cpu_labels.to(self.device) if cpu_labels is not None else None  # long (N,) or None
        self.model = build_unet(config.resolution, config.width, self.n_classes, config.attention).to(self.device)
        self.ema = build_unet(config.resolution, config.width, self.n_classes, config.attention).to(self.device)
        self.ema.load_state_dict(self.model.state_dict())
        self.ema.eval().requires_grad_(False)
        self.scheduler = training_scheduler(config.timesteps, config.schedule, config.prediction).to(self.device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=0.0,
                                     fused=self.device.type == "cuda")
        # fixed noise for the grids: its own generator, so it never shifts the training stream
        r = config.resolution
        self.fixed_noise = torch.randn(config.grid_size, 1, r, r, generator=torch.Generator().manual_seed(
            config.seed + GRID_NOISE_SEED))
        if self.n_classes:   # one row per class
            per_class = max(1, config.grid_size // self.n_classes)
            self.fixed_labels = torch.arange(self.n_classes).repeat_interleave(per_class)[:config.grid_size]
            self.fixed_noise, self.grid_nrow = self.fixed_noise[:len(self.fixed_labels)], per_class
        else:
            self.fixed_labels, self.grid_nrow = None, max(1, round(math.sqrt(config.grid_size)))
        self.step = 0
        self._loss = torch.zeros((), device=self.device)
        self._loss_steps = 0
        self.notes: list[str] = []
        who = config.class_name or ("conditional" if self.n_classes else "unconditional")
        self.what = f"DDPM ({who}) at {config.resolution} px"     # how the training loop names this run
        self.divergence_hint = "lower the learning rate (--lr)"

    load_checkpoint = staticmethod(load_checkpoint)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def train_step(self) -> None:
        """One denoising step on a batch drawn with replacement; the loss stays on the device."""
        c, B = self.config, self.config.batch
        idx = torch.randint(0, self.n_images, (B,), device=self.device)
        x0 = self.data[idx].float().mul_(2.0 / 255.0).sub_(1.0)
        y = None
        if self.n_classes:
            y = self.labels[idx].clone()
            y[torch.rand(B, device=self.device) < c.cond_drop] = self.n_classes   # the "no class" token
        noise = torch.randn_like(x0)
        t = torch.randint(0, c.timesteps, (B,), device=self.device)
        x_t = self.scheduler.add_noise(x0, noise, t)
        target = noise if c.prediction == "epsilon" else self.scheduler.get_velocity(x0, noise, t)
        with self.autocast():
            out = self.model(x_t, t, class_labels=y)
        loss = (out.float() - target).pow(2).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.step += 1
        self._update_ema()
        self._loss += loss.detach()
        self._loss_steps += 1

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        ema, live = list(self.ema.parameters()), list(self.model.parameters())
        torch._foreach_lerp_(ema, live, 1.0 - decay)

    def read_stats(self) -> dict[str, float]:
        """The mean loss since the last read (one host sync)."""
        if self._loss_steps == 0:
            return {}
        value = float(self._loss) / self._loss_steps
        self._loss.zero_()
        self._loss_steps = 0
        return {"loss": value}

    def sample(self, noise: torch.Tensor, labels: torch.Tensor | None, steps: int | None = None,
               guidance: float | None = None) -> torch.Tensor:
        """DDIM from ``noise`` (B, 1, R, R) with the EMA weights: images in [-1, 1]."""
        c = self.config
        return ddim_sample(self.ema, c, noise, labels, steps or c.sample_steps,
                           c.guidance if guidance is None else guidance, self.device, self.bf16)

    def sample_grid(self) -> np.ndarray:
        return to_grid(self.sample(self.fixed_noise, self.fixed_labels), self.grid_nrow)

    def sample_uint8(self, n: int, label: int | None = None, seed: int = 0, batch: int = 128) -> np.ndarray:
        """``n`` uint8 images (n, R, R) on fixed noise (its own seeded CPU generator, so every fidelity
        check sees the same noise and the training stream is untouched)."""
        if self.n_classes and label is None:
            raise ValueError("a conditional model needs a class index to sample.")
        r = self.config.resolution
        noise = torch.randn(n, 1, r, r, generator=torch.Generator().manual_seed(FIDELITY_NOISE_SEED + seed))
        y = torch.full((n,), int(label), dtype=torch.long) if self.n_classes else None
        out = np.empty((n, r, r), dtype=np.uint8)
        for i in range(0, n, batch):
            out[i:i + batch] = to_uint8(self.sample(noise[i:i + batch], None if y is None else y[i:i + batch]))
        return out

    # -- state ------------------------------------------------------------------------------

    def state_dict(self, epoch: int, meta: Mapping | None = None, metrics: Mapping | None = None) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "step": self.step, "epoch": epoch, "steps_per_epoch": self.steps_per_epoch,
            "n_images": self.n_images, "data_fingerprint": self.data_fingerprint,
            "model": self.model.state_dict(), "ema": self.ema.state_dict(), "opt": self.opt.state_dict(),
            "rng": checkpoints.rng_state(self.device),
            "meta": dict(meta or {}), "metrics": dict(metrics or {}), "saved": checkpoints.saved_at(),
        }

    def load_state_dict(self, state: dict, where: str = "checkpoint") -> int:
        """Restore weights, EMA, optimiser, RNG and step from a checkpoint; returns its epoch."""
        check_resume(state, self.config, self.data_fingerprint, self.n_images, where)
        checkpoints.load_weights({"model": self.model, "ema": self.ema, "opt": self.opt}, state, where)
        checkpoints.restore_rng(state["rng"], self.device)
        self.step = int(state["step"])
        return int(state.get("epoch", 0))


def train_diffusion(images, labels=None, config: DiffusionConfig = DiffusionConfig(), out_dir: str | Path = ".", *,
                    on_step: StepCallback | None = None, on_epoch: EpochCallback | None = None,
                    resume: bool = False, meta: Mapping | None = None, trainer: DiffusionTrainer | None = None,
                    fidelity_fn: FidelityFn | None = None, on_fidelity: FidelityCallback | None = None) -> TrainResult:
    """Train a DDPM on uint8 ``images`` (N, H, W) (+ class indices ``labels`` for a conditional model)
    through :func:`core.trainloop.train_generator`: ``out_dir/checkpoint.pt`` and a grid every
    ``grid_every`` steps, ``best.pt`` with a fidelity check, callbacks, resume, budget and divergence stops."""
    trainer = trainer or DiffusionTrainer(images, labels, config)
    return train_generator(trainer, out_dir, on_step=on_step, on_epoch=on_epoch, resume=resume, meta=meta,
                           fidelity_fn=fidelity_fn, on_fidelity=on_fidelity)
