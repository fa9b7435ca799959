"""The one training loop of every generator family (GANs in :mod:`core.gan`, diffusion in :mod:`core.diffusion`).

:func:`train_generator` drives a trainer object step by step. It writes an atomic checkpoint and a
fixed-noise sample grid every epoch, runs the fidelity check every ``fidelity_every`` steps (keeping
the lowest-KID checkpoint as ``best.pt`` and stopping on a plateau), stops on a time budget or a
diverged loss, and reports through callbacks. It needs only torch, numpy and pillow.

A trainer provides (see :class:`core.gan.train.GanTrainer`, :class:`core.diffusion.train.DiffusionTrainer`):
``config`` (``batch``, ``resolution``, ``log_every``, ``max_seconds``, ``max_abs_loss``, ``fidelity_every``,
``fidelity_patience``), ``ctx`` (:class:`core.distributed.Context`), ``device``, ``step``, ``steps_per_epoch``,
``total_steps``, ``notes``, ``what`` (e.g. "dcgan at 64 px"), ``divergence_hint``; and the methods
``train_step()``, ``read_stats()``, ``sample_uint8(n, label=None, seed=0)``, ``sample_grid()``,
``state_dict(epoch, meta, metrics)``, ``load_state_dict(state, where)`` and ``load_checkpoint(path)``.
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core import checkpoints, distributed
from core.files import atomic_path

CHECKPOINT_FILE = "checkpoint.pt"
BEST_FILE = "best.pt"        # the checkpoint with the lowest fidelity KID so far (when a fidelity check runs)
GRIDS_DIR = "grids"


@dataclass
class EpochReport:
    """What ``on_epoch`` receives after each epoch's checkpoint is on disk."""
    epoch: int                      # 1-based epoch just finished
    step: int                       # generator steps done
    total_steps: int                # steps the run will do in all
    grid: np.ndarray                # fixed-noise sample grid, uint8 (H, W)
    grid_path: Path                 # the same grid as PNG under out_dir/grids/
    checkpoint: Path                # the checkpoint just written
    metrics: dict[str, float]       # the latest averaged metrics


@dataclass
class TrainResult:
    state: str                      # "finished" or "diverged"
    message: str                    # one readable sentence
    step: int                       # generator steps done (resumed runs count from 0 of the first run)
    epoch: int                      # epochs done
    total_steps: int                # the planned total
    checkpoint: Path | None         # the last good checkpoint (None if none was written)
    img_per_s: float                # training images per second in this run's loop
    seconds: float                  # wall time of this run's loop
    metrics: dict[str, float] = field(default_factory=dict)   # the last averaged metrics
    cuda_graph: bool = False        # whether the step ran as a CUDA graph
    notes: list[str] = field(default_factory=list)             # e.g. why a CUDA graph was not used
    best_checkpoint: Path | None = None   # best.pt: the lowest-KID checkpoint (None without a fidelity check)
    fidelity: dict = field(default_factory=dict)   # FidelityState.to_dict(): best_kid, best_step, checks, curve


@dataclass
class FidelityState:
    """The fidelity check's record. It is stored in every checkpoint, so a resumed run keeps its best
    KID, its count of checks and its curve."""
    best_kid: float = math.inf      # lowest KID so far (the criterion: lower is better)
    best_step: int = 0              # the step best.pt holds (0: no check yet)
    checks: int = 0                 # checks done
    since_best: int = 0             # checks in a row without a lower KID (the plateau counter)
    curve: list = field(default_factory=list)   # [[step, kid], ...] of every check

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping | None) -> FidelityState:
        d = dict(d or {})
        return cls(float(d.get("best_kid", math.inf)), int(d.get("best_step", 0)), int(d.get("checks", 0)),
                   int(d.get("since_best", 0)), [list(p) for p in d.get("curve", [])])


StepCallback = Callable[[int, dict], None]
EpochCallback = Callable[[EpochReport], None]
SampleFn = Callable[..., np.ndarray]              # (n, label=None, seed=0) -> uint8 (n, R, R)
FidelityFn = Callable[[SampleFn], Mapping]        # sample -> {"kid": float, ...}; lower kid is better
FidelityCallback = Callable[[int, dict], None]    # (step, the check's dict + best_kid, best_step, improved)


def check_loop_fields(c) -> None:
    """Validate the fields every generator config shares with this loop (device, threads, precision,
    log_every, grid_size, max_abs_loss, fidelity_every, fidelity_patience); a ValueError names the field."""
    from core.device import PRECISIONS, check_device_name

    check_device_name(c.device)
    if c.threads is not None and not 1 <= c.threads <= 1024:
        raise ValueError(f"threads={c.threads}: choose between 1 and 1024, or None for torch's default.")
    if c.precision not in PRECISIONS:
        raise ValueError(f"precision={c.precision!r}: choose one of {', '.join(PRECISIONS)}.")
    if not 1 <= c.log_every <= 10_000:
        raise ValueError(f"log_every={c.log_every}: choose between 1 and 10000 steps.")
    if not 1 <= c.grid_size <= 256:
        raise ValueError(f"grid_size={c.grid_size}: choose between 1 and 256 images.")
    if not c.max_abs_loss > 0:
        raise ValueError(f"max_abs_loss={c.max_abs_loss}: must be positive.")
    if c.fidelity_every is not None and not 1 <= c.fidelity_every <= 1_000_000:
        raise ValueError(f"fidelity_every={c.fidelity_every}: choose between 1 and 1000000 steps, or None.")
    if c.fidelity_patience is not None and not 1 <= c.fidelity_patience <= 10_000:
        raise ValueError(f"fidelity_patience={c.fidelity_patience}: choose between 1 and 10000 checks, or None.")
    if c.fidelity_patience is not None and c.fidelity_every is None:
        raise ValueError("fidelity_patience needs fidelity_every: a plateau is counted in fidelity checks.")


def diverged(metrics: Mapping[str, float], limit: float) -> str | None:
    """A sentence naming the first bad metric, or None when every value is finite and in range."""
    for name, value in metrics.items():
        if not math.isfinite(value):
            return f"{name} is {value}"
        if name.startswith("loss") and abs(value) > limit:
            return f"|{name}| = {abs(value):.3g} exceeds max_abs_loss = {limit:g}"
    return None


def save_png(array: np.ndarray, path: Path) -> None:
    """Atomically, so a page polling the folder never reads half a file."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def to_grid(images, nrow: int) -> np.ndarray:
    """(B, 1, R, R) in [-1, 1] -> one uint8 (H, W) grid image with 2 px gaps."""
    import torch
    from torchvision.utils import make_grid

    g = make_grid(images.float().cpu(), nrow=nrow, padding=2, pad_value=-1.0)[0]
    return ((g + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()


def train_generator(trainer, out_dir: str | Path, *, on_step: StepCallback | None = None,
                    on_epoch: EpochCallback | None = None, resume: bool = False, meta: Mapping | None = None,
                    fidelity_fn: FidelityFn | None = None, on_fidelity: FidelityCallback | None = None) -> TrainResult:
    """Train ``trainer`` to its planned total (or its time budget, or a fidelity plateau), writing
    ``out_dir/checkpoint.pt`` and ``out_dir/grids/epoch_XXXX.png`` every epoch.

    - ``on_step(step, metrics)`` every ``log_every`` steps with averaged losses and ``img_per_s``
      (the signature of :meth:`core.tracking.Run.on_step`).
    - ``on_epoch(EpochReport)`` after each epoch's checkpoint and grid are on disk.
    - ``resume=True`` continues from ``out_dir/checkpoint.pt`` if it exists (the trainer refuses another
      config or other data); the result equals an uninterrupted run on the CPU.
    - ``meta`` (e.g. run id, dataset hash) is stored in each checkpoint for sampling later.
    - ``fidelity_fn(sample)`` every ``config.fidelity_every`` steps and at the last step: ``sample(n,
      label=None, seed=0)`` gives uint8 images (fixed noise); it returns ``{"kid": ..., ...}`` (e.g. KID on
      domain features, built by core.quality.fidelity so trainers need no quality code). A lower KID than
      every earlier check writes ``out_dir/best.pt`` (atomically, the same format as checkpoint.pt);
      ``config.fidelity_patience`` checks in a row without one stop training. ``on_fidelity(step, result)``
      gets each check's dict plus best_kid, best_step and improved. The record (best KID, checks, curve)
      lives in every checkpoint, so ``resume`` keeps it.
    A NaN or runaway loss stops training and returns ``state="diverged"``; the last checkpoint is the
    last good one.
    """
    out = Path(out_dir)
    (out / GRIDS_DIR).mkdir(parents=True, exist_ok=True)
    ckpt, best = out / CHECKPOINT_FILE, out / BEST_FILE
    config = trainer.config
    epoch = 0
    main = trainer.ctx.is_main   # under torchrun only rank 0 writes grids and checkpoints and reports
    fid = FidelityState()
    if resume and ckpt.is_file():
        state = trainer.load_checkpoint(ckpt)
        epoch = trainer.load_state_dict(state, str(ckpt))
        fid = FidelityState.from_dict(state.get("fidelity"))
        del state
    elif main:
        best.unlink(missing_ok=True)   # a fresh run: an older run's best.pt must not pass for this one's
    # under torchrun only rank 0 has a fidelity_fn; the others still join its plateau decision
    checking = config.fidelity_every is not None and (fidelity_fn is not None or not main)
    spe, total = trainer.steps_per_epoch, trainer.total_steps
    metrics: dict[str, float] = {}
    last_ckpt = ckpt if ckpt.is_file() and resume else None
    start_step, t0 = trainer.step, time.perf_counter()
    aside = [0.0]   # seconds in fidelity checks, grids and checkpoints: not training, so left out of img/s

    def rate() -> float:
        busy = time.perf_counter() - t0 - aside[0]
        return (trainer.step - start_step) * config.batch / max(busy, 1e-9)

    def finish(state: str, message: str) -> TrainResult:
        return TrainResult(state, message, trainer.step, epoch, total, last_ckpt, round(rate(), 2),
                           round(time.perf_counter() - t0, 3), metrics, getattr(trainer, "graph", None) is not None,
                           trainer.notes, best if fid.best_step > 0 and best.is_file() else None, fid.to_dict())

    def fidelity_check(step: int) -> bool:
        """Run the check, keep best.pt, report; True when KID has plateaued (patience used up)."""
        t = time.perf_counter()
        result = dict(fidelity_fn(trainer.sample_uint8))
        kid = float(result["kid"])
        fid.checks += 1
        fid.curve.append([step, kid])
        improved = math.isfinite(kid) and kid < fid.best_kid
        if improved:
            fid.best_kid, fid.best_step, fid.since_best = kid, step, 0
            checkpoints.save(best, {**trainer.state_dict(math.ceil(step / spe), meta, metrics),
                                    "fidelity": fid.to_dict()})
        else:
            fid.since_best += 1
        aside[0] += time.perf_counter() - t
        if on_fidelity:
            on_fidelity(step, {**result, "best_kid": fid.best_kid, "best_step": fid.best_step, "improved": improved,
                               "checks": fid.checks, "seconds": round(time.perf_counter() - t, 3)})
        return config.fidelity_patience is not None and fid.since_best >= config.fidelity_patience

    deadline = t0 + config.max_seconds if config.max_seconds else math.inf
    while trainer.step < total:
        trainer.train_step()
        step = trainer.step
        out_of_time = time.perf_counter() >= deadline
        if config.max_seconds and trainer.ctx.active:
            out_of_time = distributed.agree(out_of_time, trainer.ctx)   # every rank stops at the same step
        end_of_epoch = step % spe == 0 or step >= total or out_of_time
        due = checking and (step % config.fidelity_every == 0 or step >= total or out_of_time)
        if step % config.log_every == 0 or end_of_epoch or due:
            fresh = trainer.read_stats()
            if fresh:
                metrics = {**fresh, "img_per_s": rate()}
                problem = diverged(fresh, config.max_abs_loss)
                if problem:
                    return finish("diverged", f"diverged at step {step}: {problem}. The last good checkpoint is "
                                              f"{last_ckpt or 'none'}; {trainer.divergence_hint}.")
                if on_step and main:
                    on_step(step, metrics)
        plateau = False
        if due:
            plateau = fidelity_check(step) if main else False
            if trainer.ctx.active:
                plateau = distributed.agree(plateau, trainer.ctx)
            end_of_epoch = end_of_epoch or plateau   # save where it stops, so a resume starts there
        if end_of_epoch:
            epoch = math.ceil(step / spe)
        if end_of_epoch and main:
            t_aside = time.perf_counter()
            grid = trainer.sample_grid()
            grid_path = out / GRIDS_DIR / f"epoch_{epoch:04d}.png"
            save_png(grid, grid_path)
            checkpoints.save(ckpt, {**trainer.state_dict(epoch, meta, metrics), "fidelity": fid.to_dict()})
            last_ckpt = ckpt
            aside[0] += time.perf_counter() - t_aside
            if on_epoch:
                on_epoch(EpochReport(epoch, step, total, grid, grid_path, ckpt, metrics))
        if plateau:
            return finish("finished", f"trained {trainer.step} steps ({epoch} epochs) of {trainer.what}: KID has not "
                                      f"improved for {fid.since_best} checks (best {fid.best_kid:.4g} at step "
                                      f"{fid.best_step}).")
        if out_of_time:
            return finish("finished", f"trained {trainer.step} steps ({epoch} epochs) of {trainer.what}: the time "
                                      f"budget of {config.max_seconds:g} s ran out.")
    return finish("finished", f"trained {trainer.step} steps ({epoch} epochs) of {trainer.what}.")
