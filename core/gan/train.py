"""One GAN training loop for every variant in :data:`core.gan.variants.VARIANTS`.

``train_gan(images, labels, GanConfig(...), out_dir)`` trains on a uint8 array (N, H, W),
writes an atomic checkpoint and a fixed-noise sample grid every epoch, and reports through
``on_step(step, metrics)`` and ``on_epoch(EpochReport)`` callbacks (the CLI logs them to
MLflow; this module needs only torch, torchvision, numpy and pillow).

One step (= one generator update):
    (1) n_critic times: sample a real batch and z on the device; update D/critic to minimise
        loss(D(x), real) + loss(D(G(z)), fake) [+ lambda * gradient penalty]; clip D's
        weights if the variant clips (after EVERY critic update).
    (2) update G to minimise loss(D(G(z)), real). With n_critic = 1 the fakes of step (1) are
        reused, as pytorch/examples' DCGAN does; otherwise G gets fresh noise (Arjovsky et
        al., Gulrajani et al.). D's weights are frozen here: G needs only D's input gradient.

Speed without changing the maths: the whole training set stays on the device as uint8;
channels_last (oneDNN on CPUs, tensor cores on GPUs); fused Adam; losses accumulate on the
device and are read every ``log_every`` steps (one host sync); bf16 autocast on GPUs; and,
optionally on a GPU, the whole step is captured once in a CUDA graph and replayed.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core import checkpoints, distributed
from core.config import DictConfig
from core.device import images_to_tensor, resolve_device, set_threads, use_bf16
from core.gan.diffaug import diff_augment
from core.gan.models import NORMS, RESOLUTIONS, Discriminator, Generator
from core.gan.variants import VARIANTS, Variant, gradient_penalty
from core.trainloop import (BEST_FILE, CHECKPOINT_FILE, GRIDS_DIR, EpochCallback,  # noqa: F401 -- re-exported
                            check_loop_fields,
                            FidelityCallback, FidelityFn, StepCallback, TrainResult, save_png, to_grid,
                            train_generator)

CHECKPOINT_FORMAT = "medaug-gan-checkpoint/1"
FIDELITY_NOISE_SEED = 7_000_003   # the fidelity check's fixed noise (apart from the training stream)
MIN_STEPS_PER_EPOCH = 20     # tiny classes: an epoch (grid + checkpoint) still holds some training
CUDA_GRAPH_WARMUP = 3        # eager steps on a side stream before capture (optimizer state, cuDNN plans)
STAT_NAMES = ("loss_d", "loss_g", "d_real", "d_fake", "d_fake_g", "wasserstein", "gp")
# fields that may change when resuming; every other field must match the checkpoint
RESUMABLE_FIELDS = ("epochs", "max_steps", "max_seconds", "device", "threads", "precision", "cuda_graph", "log_every",
                    "max_abs_loss", "fidelity_every", "fidelity_patience")


@dataclass(frozen=True)
class GanConfig(DictConfig):
    variant: str = "dcgan"             # key of core.gan.variants.VARIANTS: "dcgan", "wgan", "wgan-gp"
    resolution: int = 64               # image side in px: 64, 128 or 256 (32 for quick tests)
    batch: int = 64                    # images per D batch and per G batch
    epochs: int | None = 25            # stop after this many epochs (None: max_steps alone decides)
    max_steps: int | None = None       # stop after this many generator steps (the first limit reached wins)
    max_seconds: float | None = None   # stop after this much training time in this run (a time budget)
    steps_per_epoch: int | None = None # generator steps per epoch; None: ceil(images / batch), at least 20
    nz: int = 100                      # length of the noise vector z
    width: int = 64                    # base channel count of G and D (64 = the paper's ngf/ndf)
    conditional: bool = False          # one class-conditional model (label embedding + projection D)
    classes: tuple[str, ...] = ()      # class names; conditional label i means classes[i]
    class_name: str | None = None      # per-class model: the class it is trained on (kept for sampling)
    diffaug: bool = False              # DiffAugment translation + cutout on real and fake (tens of images)
    lr: float | None = None            # learning rate of both networks; None: the variant's
    n_critic: int | None = None        # critic updates per generator update; None: the variant's
    seed: int = 0                      # seeds weights, batches, noise and augmentation
    device: str = "auto"               # "auto" (cuda if present), "cpu", "cuda" or "cuda:N"
    threads: int | None = None         # CPU threads for this process; None: torch's default (one per core).
                                       # Fewer when the cores are shared (two jobs, a busy server).
    precision: str = "auto"            # "auto": bf16 autocast on GPUs and on CPUs with native bf16 (AMX /
                                       # AVX512-BF16), else fp32; or "fp32" / "bf16" (mixed precision:
                                       # fp32 weights, optimiser state and losses)
    cuda_graph: bool = True            # GPU only: capture the whole D+G step once and replay it (4.5x the
                                       # reference at batch 64 on an H200); falls back to eager if capture fails
    log_every: int = 10                # read the losses from the device every N steps (one sync)
    grid_size: int = 64                # fixed-noise images in each epoch's sample grid
    max_abs_loss: float = 1e4          # a loss above this in magnitude (or NaN) stops training as diverged
    fidelity_every: int | None = None  # run the fidelity check (train_gan's fidelity_fn) every N generator steps
                                       # and keep the lowest-KID checkpoint as best.pt; None: no check
    fidelity_patience: int | None = None  # stop when KID has not improved for this many checks (None: never)

    WHAT = "GAN config"

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant={self.variant!r}: choose one of {', '.join(VARIANTS)}.")
        if self.resolution not in RESOLUTIONS:
            raise ValueError(f"resolution={self.resolution}: choose one of {', '.join(map(str, RESOLUTIONS))} px.")
        if not 2 <= self.batch <= 4096:
            raise ValueError(f"batch={self.batch}: choose between 2 and 4096 (batch norm needs at least 2).")
        if self.epochs is None and self.max_steps is None and self.max_seconds is None:
            raise ValueError("epochs, max_steps and max_seconds are all unset: give at least one of them.")
        if self.epochs is not None and not 1 <= self.epochs <= 100_000:
            raise ValueError(f"epochs={self.epochs}: choose between 1 and 100000.")
        if self.max_steps is not None and not 1 <= self.max_steps <= 10_000_000:
            raise ValueError(f"max_steps={self.max_steps}: choose between 1 and 10000000.")
        if self.max_seconds is not None and not 1 <= self.max_seconds <= 30 * 86400:
            raise ValueError(f"max_seconds={self.max_seconds}: choose between 1 s and 30 days.")
        if self.steps_per_epoch is not None and not 1 <= self.steps_per_epoch <= 1_000_000:
            raise ValueError(f"steps_per_epoch={self.steps_per_epoch}: choose between 1 and 1000000 (or None).")
        if not 1 <= self.nz <= 1024:
            raise ValueError(f"nz={self.nz}: choose a noise length between 1 and 1024.")
        if not 4 <= self.width <= 256:
            raise ValueError(f"width={self.width}: choose a base channel count between 4 and 256.")
        if not isinstance(self.classes, tuple):
            object.__setattr__(self, "classes", tuple(self.classes))
        if self.conditional and len(self.classes) < 2:
            raise ValueError(f"conditional=True needs at least 2 class names in classes, got {list(self.classes)}.")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes={list(self.classes)}: class names must be unique.")
        if self.lr is not None and not (math.isfinite(self.lr) and 0 < self.lr <= 1.0):
            raise ValueError(f"lr={self.lr}: choose a learning rate in (0, 1], or None for the variant's.")
        if self.n_critic is not None and not 1 <= self.n_critic <= 100:
            raise ValueError(f"n_critic={self.n_critic}: choose between 1 and 100, or None for the variant's.")
        check_loop_fields(self)

    @property
    def spec(self) -> Variant:
        return VARIANTS[self.variant]

    @property
    def effective_lr(self) -> float:
        return self.lr if self.lr is not None else self.spec.lr

    @property
    def effective_n_critic(self) -> int:
        return self.n_critic if self.n_critic is not None else self.spec.n_critic

class GanDiverged(ValueError):
    """Training diverged (NaN or runaway loss); raised by the CLI after it records the status."""


# --- checkpoints -------------------------------------------------------------------------

CHECKPOINT_KIND = checkpoints.Kind(CHECKPOINT_FORMAT, "GAN", "train-gan",
                                   ("config", "generator", "discriminator", "opt_g", "opt_d", "rng", "step"))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """A train-gan checkpoint (:func:`core.checkpoints.load`)."""
    return checkpoints.load(path, CHECKPOINT_KIND, map_location)


def checkpoint_config(state: dict) -> GanConfig:
    return GanConfig.from_dict(state["config"])


def check_resume(state: dict, config: GanConfig, data_fingerprint: str, n_images: int, where: str) -> None:
    """Raise :class:`core.checkpoints.CheckpointError` unless ``state`` can continue with ``config`` on these images
    (only :data:`RESUMABLE_FIELDS` may change). The CLI calls it before any side effect."""
    checkpoints.check_resume(state, config.to_dict(), RESUMABLE_FIELDS,
                             state.get("data_fingerprint") == data_fingerprint,
                             f"the training images differ from the ones this checkpoint was trained on "
                             f"({state.get('n_images')} then, {n_images} now)", where)


def training_fingerprint(images, labels, config: GanConfig) -> tuple[str, int]:
    """(fingerprint, image count) of the data a :class:`GanTrainer` with ``config`` would train on."""
    t = images_to_tensor(images, config.resolution)
    y = (torch.as_tensor(np.asarray(labels), dtype=torch.long).view(-1)
         if config.conditional and labels is not None else None)
    return fingerprint(t, y), len(t)


# --- the trainer -------------------------------------------------------------------------

def plan_steps(n_images: int, config: GanConfig) -> tuple[int, int]:
    """(steps per epoch, total steps) for ``n_images`` training images (a time budget may stop earlier)."""
    spe = config.steps_per_epoch or max(math.ceil(n_images / config.batch), MIN_STEPS_PER_EPOCH)
    total = min(config.epochs * spe if config.epochs else 2**62, config.max_steps or 2**62)
    return spe, total


def fingerprint(images: torch.Tensor, labels: torch.Tensor | None) -> str:
    """SHA-1 of the training pixels and labels: a resumed run must see the same data."""
    h = hashlib.sha1(images.numpy().tobytes())
    if labels is not None:
        h.update(labels.numpy().astype(np.int64).tobytes())
    return h.hexdigest()


class GanTrainer:
    """G, D, their optimisers and the training data on one device; ``train_step()`` does one step.

    ``train_gan`` drives it; tests and ``bench/gan.py`` call the step methods directly."""

    def __init__(self, images, labels, config: GanConfig, ctx: distributed.Context | None = None):
        self.config = config
        self.variant = config.spec
        self.n_critic = config.effective_n_critic
        self.ctx = ctx = ctx or distributed.current()
        self.part = distributed.local_part(config.batch, ctx)   # this rank's slice of every global batch
        self.device = resolve_device(distributed.device_for(ctx, config.device))
        self.bf16 = use_bf16(self.device, config.precision)
        if self.variant.critic_norm not in NORMS:
            raise ValueError(f"variant {self.variant.name}: critic_norm {self.variant.critic_norm!r} is not one of {NORMS}.")
        n_classes = len(config.classes) if config.conditional else 0

        cpu_images = images_to_tensor(images, config.resolution)
        cpu_labels = None
        if n_classes:
            if labels is None:
                raise ValueError("conditional=True needs labels: one class index per image.")
            cpu_labels = torch.as_tensor(np.asarray(labels), dtype=torch.long).view(-1)
            if len(cpu_labels) != len(cpu_images):
                raise ValueError(f"labels: {len(cpu_labels)} labels for {len(cpu_images)} images.")
            if int(cpu_labels.min()) < 0 or int(cpu_labels.max()) >= n_classes:
                raise ValueError(f"labels: class indices must lie in [0, {n_classes - 1}] (classes={list(config.classes)}).")
        self.n_images = len(cpu_images)
        self.data_fingerprint = fingerprint(cpu_images, cpu_labels)
        self.steps_per_epoch, self.total_steps = plan_steps(self.n_images, config)

        set_threads(config.threads, ctx)
        torch.manual_seed(config.seed)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True   # fixed shapes: let cuDNN pick its fastest kernels once
        cl = torch.channels_last
        self.data = cpu_images.to(self.device).contiguous(memory_format=cl)          # uint8 (N, 1, R, R)
        self.labels = cpu_labels.to(self.device) if cpu_labels is not None else None  # long (N,) or None
        self.G = Generator(config.nz, config.resolution, 1, config.width, n_classes).to(self.device, memory_format=cl)
        self.D = Discriminator(config.resolution, 1, config.width, n_classes,
                               norm=self.variant.critic_norm).to(self.device, memory_format=cl)
        # under torchrun: synchronised batch norm, and DDP wrappers for the updates that need them
        # (G's update goes through the plain D: only D's input gradient is needed there)
        distributed.sync_batchnorm(self.G, ctx)
        distributed.sync_batchnorm(self.D, ctx)
        self.G_train, self.D_train = distributed.wrap(self.G, ctx), distributed.wrap(self.D, ctx)
        self.d_params = list(self.D.parameters())   # after the batch-norm swap: these are the live ones
        capturable = config.cuda_graph and self.device.type == "cuda" and not ctx.active
        self.opt_g = self._optimizer(self.G.parameters(), capturable)
        self.opt_d = self._optimizer(self.D.parameters(), capturable)

        # fixed noise for the per-epoch grids: its own generator, so it never shifts the training stream
        fixed = torch.Generator().manual_seed(config.seed + 7919)
        self.fixed_z = torch.randn(config.grid_size, config.nz, generator=fixed).to(self.device)
        if n_classes:   # one row per class
            per_class = max(1, config.grid_size // n_classes)
            self.fixed_labels = torch.arange(n_classes).repeat_interleave(per_class)[:config.grid_size]
            self.fixed_z, self.grid_nrow = self.fixed_z[:len(self.fixed_labels)], per_class
            self.fixed_labels = self.fixed_labels.to(self.device)
        else:
            self.fixed_labels, self.grid_nrow = None, max(1, round(math.sqrt(config.grid_size)))

        self.step = 0
        self._stats = torch.zeros(len(STAT_NAMES), device=self.device)   # summed on the device between reads
        self._stats_steps = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.notes: list[str] = []
        self._graph_pending = capturable        # capture on the first step after the warm-up
        self._warmup_left = CUDA_GRAPH_WARMUP
        self._static_grads = capturable         # a graph updates gradients in place: never set them to None
        if config.cuda_graph and self.device.type == "cuda" and ctx.active:
            self.notes.append("CUDA graphs are off under torchrun (DDP's gradient all-reduce is not captured).")
        self.what = f"{config.variant} at {config.resolution} px"   # how the training loop names this run
        self.divergence_hint = "lower the learning rate or try wgan-gp"

    @staticmethod
    def load_checkpoint(path: str | Path) -> dict:
        return load_checkpoint(path)

    # -- pieces of a step -------------------------------------------------------------------

    def _optimizer(self, params, capturable: bool) -> torch.optim.Optimizer:
        v, lr = self.variant, self.config.effective_lr
        if v.optimizer == "adam":   # fused: one kernel per step on CPU and GPU
            return torch.optim.Adam(params, lr=lr, betas=v.betas, fused=True, capturable=capturable)
        return torch.optim.RMSprop(params, lr=lr, foreach=True, capturable=capturable)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16, cache_enabled=False)

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        if not self.config.diffaug:
            return x
        return diff_augment(x, (self.config.batch, self.part) if self.ctx.active else None)

    # Random draws are made for the whole global batch and sliced to this rank's part, so a
    # distributed run sees the same data and noise as one process (see core.distributed).

    def sample_real(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A batch drawn uniformly (with replacement) on the device: floats in [-1, 1], channels_last."""
        idx = torch.randint(0, self.n_images, (self.config.batch,), device=self.device)[self.part]
        real = self.data[idx].float().mul_(2.0 / 255.0).sub_(1.0).contiguous(memory_format=torch.channels_last)
        return real, (self.labels[idx] if self.labels is not None else None)

    def sample_noise(self, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """z ~ N(0, I) (B, nz); conditional labels follow the training set's class frequencies."""
        z = torch.randn(self.config.batch, self.config.nz, device=self.device)[self.part]
        if self.labels is not None and labels is None:
            labels = self.labels[torch.randint(0, self.n_images, (self.config.batch,), device=self.device)[self.part]]
        return z, labels

    def critic_update(self, real, y_real, fake, y_fake) -> list[torch.Tensor]:
        """One D/critic update; returns detached (loss_d, D(x), D(G(z)), wasserstein, gp)."""
        v = self.variant
        self.opt_d.zero_grad(set_to_none=not self._static_grads)
        with self.autocast():
            real_in, fake_in = self._augment(real), self._augment(fake.detach())
            s_real = self.D_train(real_in, y_real).float()
            s_fake = self.D_train(fake_in, y_fake).float()
            loss = v.loss(s_real, True) + v.loss(s_fake, False)
            gp = torch.zeros((), device=self.device)
            if v.gp_lambda is not None:
                eps = torch.rand(self.config.batch, device=self.device)[self.part]
                gp = gradient_penalty(self.D_train, real_in, fake_in, y_real, eps)
                loss = loss + v.gp_lambda * gp
        loss.backward()
        self.opt_d.step()
        if v.clip is not None:   # after every critic update (Arjovsky et al., Algorithm 1, line 8)
            with torch.no_grad():
                for p in self.d_params:
                    p.clamp_(-v.clip, v.clip)
        with torch.no_grad():
            wasserstein = s_real.mean() - s_fake.mean()
            if v.sigmoid:
                s_real, s_fake = torch.sigmoid(s_real), torch.sigmoid(s_fake)
            return [loss.detach(), s_real.mean(), s_fake.mean(), wasserstein, gp.detach()]

    def generator_update(self, fake, y_fake) -> list[torch.Tensor]:
        """One G update through D (frozen); returns detached (loss_g, D(G(z)))."""
        v = self.variant
        for p in self.d_params:      # only D's input gradient is needed: skip its weight gradients
            p.requires_grad_(False)
        try:
            self.opt_g.zero_grad(set_to_none=not self._static_grads)
            with self.autocast():
                scores = self.D(self._augment(fake), y_fake).float()
                loss = v.loss(scores, True)
            loss.backward()
            self.opt_g.step()
        finally:
            for p in self.d_params:
                p.requires_grad_(True)
        with torch.no_grad():
            return [loss.detach(), (torch.sigmoid(scores) if v.sigmoid else scores).mean()]

    def _eager_step(self) -> None:
        reuse = self.n_critic == 1   # DCGAN: G trains on the same fakes D just saw (pytorch/examples)
        for _ in range(self.n_critic):
            real, y = self.sample_real()
            z, y = self.sample_noise(y)   # fakes share the real batch's labels (needed by a conditional penalty)
            with (nullcontext() if reuse else torch.no_grad()), self.autocast():
                fake = self.G_train(z, y)
            loss_d, d_real, d_fake, wasserstein, gp = self.critic_update(real, y, fake, y)
        if not reuse:
            z, y = self.sample_noise()
            with self.autocast():
                fake = self.G_train(z, y)
        loss_g, d_fake_g = self.generator_update(fake, y)
        self._stats.add_(torch.stack([loss_d, loss_g, d_real, d_fake, d_fake_g, wasserstein, gp]))

    def _side_stream_step(self) -> None:
        """An eager warm-up step on a side stream, as CUDA graph capture requires."""
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self._eager_step()
        torch.cuda.current_stream(self.device).wait_stream(side)

    def _capture(self) -> None:
        """Record one whole step (nothing runs while recording); fall back to eager on failure."""
        self._graph_pending = False
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._eager_step()
            self.graph = graph
        except Exception as e:  # an op that cannot be captured: train eagerly instead, and say so
            self.graph = None
            torch.cuda.synchronize(self.device)
            self.notes.append(f"CUDA graph capture failed ({type(e).__name__}: {str(e)[:300]}); trained eagerly.")

    def train_step(self) -> None:
        """One generator step (with its n_critic critic steps). Never syncs with the host.

        With ``cuda_graph``, the first CUDA_GRAPH_WARMUP steps run eagerly on a side stream (they
        create the optimiser state and gradients that the graph then updates in place), the next
        call records the step once, and every call from then on replays it."""
        if self._graph_pending and self._warmup_left > 0:
            self._side_stream_step()
            self._warmup_left -= 1
        else:
            if self._graph_pending:
                self._capture()
            if self.graph is not None:
                self.graph.replay()
            else:
                self._eager_step()
        self.step += 1
        self._stats_steps += 1

    def read_stats(self) -> dict[str, float]:
        """Averages since the last read (one host sync); resets the device accumulator."""
        if self._stats_steps == 0:
            return {}
        values = distributed.mean_over_ranks(self._stats / self._stats_steps, self.ctx).tolist()
        self._stats.zero_()
        self._stats_steps = 0
        stats = dict(zip(STAT_NAMES, values))
        if self.variant.sigmoid:       # the Wasserstein estimate means nothing for a logit D
            stats.pop("wasserstein")
        if self.variant.gp_lambda is None:
            stats.pop("gp")
        return stats

    @torch.inference_mode()
    def generate(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [-1, 1] from G in eval mode (batch-norm running statistics), so each image
        depends on its own z only; the training stream and BN buffers are untouched."""
        was_training = self.G.training
        self.G.eval()
        try:
            with self.autocast():
                return self.G(z.to(self.device), None if labels is None else labels.to(self.device)).float()
        finally:
            self.G.train(was_training)

    def sample_grid(self) -> np.ndarray:
        return to_grid(self.generate(self.fixed_z, self.fixed_labels), self.grid_nrow)

    def sample_uint8(self, n: int, label: int | None = None, seed: int = 0, batch: int = 256) -> np.ndarray:
        """``n`` uint8 images (n, R, R) from G in eval mode, as :func:`core.generators.generate_images`
        makes them. The noise comes from its own seeded CPU generator, so every fidelity check sees the
        same z (checks compare like with like) and the training RNG stream is untouched (resume stays
        exact). ``label``: the class index of a conditional G (ignored otherwise)."""
        if self.labels is not None and label is None:
            raise ValueError("a conditional generator needs a class index to sample.")
        z = torch.randn(n, self.config.nz, generator=torch.Generator().manual_seed(FIDELITY_NOISE_SEED + seed))
        y = torch.full((n,), int(label), dtype=torch.long) if self.labels is not None else None
        out = np.empty((n, self.config.resolution, self.config.resolution), dtype=np.uint8)
        for i in range(0, n, batch):
            x = self.generate(z[i:i + batch], None if y is None else y[i:i + batch])
            out[i:i + batch] = ((x[:, 0] + 1) * 127.5).nan_to_num(0.0).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        return out

    # -- state ------------------------------------------------------------------------------

    def state_dict(self, epoch: int, meta: Mapping | None = None, metrics: Mapping | None = None) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "step": self.step, "epoch": epoch, "steps_per_epoch": self.steps_per_epoch,
            "n_images": self.n_images, "data_fingerprint": self.data_fingerprint,
            "generator": self.G.state_dict(), "discriminator": self.D.state_dict(),
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            "rng": checkpoints.rng_state(self.device),
            "meta": dict(meta or {}), "metrics": dict(metrics or {}), "saved": checkpoints.saved_at(),
        }

    def load_state_dict(self, state: dict, where: str = "checkpoint") -> int:
        """Restore weights, optimisers, RNG and step from a checkpoint; returns its epoch."""
        check_resume(state, self.config, self.data_fingerprint, self.n_images, where)
        checkpoints.load_weights({"generator": self.G, "discriminator": self.D, "opt_g": self.opt_g,
                                  "opt_d": self.opt_d}, state, where)
        checkpoints.restore_rng(state["rng"], self.device)
        self.step = int(state["step"])
        return int(state.get("epoch", 0))


# --- the loop ----------------------------------------------------------------------------

GanResult = TrainResult


def train_gan(images, labels=None, config: GanConfig = GanConfig(), out_dir: str | Path = ".", *,
              on_step: StepCallback | None = None, on_epoch: EpochCallback | None = None,
              resume: bool = False, meta: Mapping | None = None, trainer: GanTrainer | None = None,
              fidelity_fn: FidelityFn | None = None, on_fidelity: FidelityCallback | None = None) -> TrainResult:
    """Train ``config.variant`` on uint8 ``images`` (N, H, W) (+ class indices ``labels`` (N,) for a
    conditional model) through :func:`core.trainloop.train_generator`: ``out_dir/checkpoint.pt`` and
    ``out_dir/grids/epoch_XXXX.png`` every epoch, ``best.pt`` with a fidelity check, callbacks, resume
    (same config apart from :data:`RESUMABLE_FIELDS`, same data), divergence and time-budget stops."""
    trainer = trainer or GanTrainer(images, labels, config)
    return train_generator(trainer, out_dir, on_step=on_step, on_epoch=on_epoch, resume=resume, meta=meta,
                           fidelity_fn=fidelity_fn, on_fidelity=on_fidelity)
