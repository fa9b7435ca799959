"""A study's wall time on 1..k workers (GPUs or CPU slots), projected from measured rates: an ESTIMATE.

What goes in is measured on the device in question (``bench/study_estimate.py`` measures it with the
study's own trainers): each network's training and evaluation images per second at the study's batch
and size, each generator's seconds per training step, and its sampling rate. What comes out:

- **tasks** as the executors run them: one per generator the grid needs (its training steps, or its
  time budget if that is shorter, plus the synthetic images it samples: the planner's top-up and,
  for a TSTR set, a whole training split; the diffusion model also samples its quality-check images),
  and one per cell: ``epochs x (training images x train s/img + validation images x eval s/img)`` plus
  the test split once. A cell's training images follow :func:`core.study.sets.training_set` (the real
  split, plus one classic copy per image, plus the planner's synthetic top-up; a TSTR set holds as
  many synthetic images as the real split), its epochs :func:`core.study.run.cell_epochs`.
- **the wall time on k workers** by replaying the Ray executor's schedule
  (:func:`core.study.ray_executor.run_cells_ray`): generators are submitted first, then the cells in
  grid order; a cell can start once its generator has finished; a free worker takes the
  earliest-submitted task that is ready. One worker is the in-process executor (the sum of all tasks).

It is an estimate, and says what it leaves out: early stopping (the paper preset stops a cell after 8
epochs without a better validation score, so every epoch counted is an upper bound), a GAN's fidelity
checks and early stop, data loading at the start of a task, and MLflow traffic. No torch here.
"""
from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from core.study.grid import AUG_SETS, DIFFUSION, Cell, StudyConfig, cells


@dataclass(frozen=True)
class Rates:
    """Measured on one device: images per second (training, evaluation) per network, seconds per
    training step and synthetic images per second per generator variant, and a fixed cost per task
    (start-up: building the network, loading data; 0 when not measured)."""
    device: str
    train_img_s: Mapping[str, float]
    eval_img_s: Mapping[str, float]
    gen_step_s: Mapping[str, float] = field(default_factory=dict)
    sample_img_s: Mapping[str, float] = field(default_factory=dict)
    task_overhead_s: float = 0.0

    def need(self, what: str, table: Mapping[str, float], key: str) -> float:
        value = table.get(key)
        if value is None or not value > 0 or not math.isfinite(value):
            raise ValueError(f"no measured {what} for {key!r} on {self.device}: measure it first "
                             f"(bench/study_estimate.py).")
        return float(value)


@dataclass(frozen=True)
class Task:
    name: str
    seconds: float
    after: str | None = None      # the generator task this one waits for


@dataclass(frozen=True)
class Sizes:
    """Images per class in the training split, and the validation and test split sizes."""
    train_counts: Mapping[str, int]
    n_val: int
    n_test: int

    @property
    def n_train(self) -> int:
        return sum(self.train_counts.values())

    def scaled(self, n_train: int, n_val: int, n_test: int) -> Sizes:
        """The same class proportions at another training-split size (e.g. the phantom's imbalance at
        VinDr-SpineXR's size)."""
        k = n_train / max(self.n_train, 1)
        return Sizes({c: max(1, round(n * k)) for c, n in self.train_counts.items()}, n_val, n_test)


def planned_synthetic(config: StudyConfig, counts: Mapping[str, int]) -> int:
    """Synthetic images the balancing planner adds for a generator set (the study's target and cap)."""
    from core.balance import class_balance_plan

    return int(class_balance_plan(dict(counts), config.gan_target, None, config.gan_cap)["synthetic"].sum())


def set_train_images(config: StudyConfig, set_key: str, sizes: Sizes) -> int:
    """Training images of one cell of ``set_key`` (as :func:`core.study.sets.training_set` builds them)."""
    aug = AUG_SETS[set_key]
    n = sizes.n_train
    if aug.kind == "tstr":
        return n
    total = n
    if aug.kind in ("classic", "classic+gan"):
        total += n * config.copies
    if aug.variant or aug.kind == "classic+gan":
        total += planned_synthetic(config, sizes.train_counts)
    return total


def generator_seconds(config: StudyConfig, variant: str, modes: set[str], sizes: Sizes, rates: Rates) -> float:
    """Training (steps x s/step, capped by the time budget) plus sampling what the cells take."""
    if variant == DIFFUSION:
        steps, budget = config.diffusion_steps, config.diffusion_max_seconds
    else:
        steps, budget = config.gan_steps.get(variant, 200), config.gan_max_seconds
    train = steps * rates.need("seconds per step", rates.gen_step_s, variant)
    if budget is not None:
        train = min(train, budget)
    n_sample = (planned_synthetic(config, sizes.train_counts) if "plan" in modes else 0) \
        + (sizes.n_train if "tstr" in modes else 0) \
        + (config.diffusion_quality_real if variant == DIFFUSION else 0)
    return rates.task_overhead_s + train + n_sample / rates.need("sampling rate", rates.sample_img_s, variant)


def cell_seconds(config: StudyConfig, cell: Cell, sizes: Sizes, rates: Rates) -> float:
    from core.study.run import cell_epochs

    n_img = set_train_images(config, cell.set, sizes)
    epochs = cell_epochs(config, sizes.n_train, n_img)
    train = rates.need("training rate", rates.train_img_s, cell.network)
    ev = rates.need("evaluation rate", rates.eval_img_s, cell.network)
    return rates.task_overhead_s + epochs * (n_img / train + sizes.n_val / ev) + sizes.n_test / ev


def study_tasks(config: StudyConfig, sizes: Sizes, rates: Rates) -> list[Task]:
    """Generators first, then the cells in grid order: the order the Ray executor submits them."""
    from core.study.ray_executor import cell_generator, generator_needs

    grid = cells(config)
    tasks = [Task(f"generator {v}", generator_seconds(config, v, modes, sizes, rates))
             for v, modes in generator_needs(config, grid).items()]
    for cell in grid:
        variant, _ = cell_generator(config, cell)
        tasks.append(Task(f"cell {cell.key}", cell_seconds(config, cell, sizes, rates),
                          f"generator {variant}" if variant else None))
    return tasks


def wall_seconds(tasks: list[Task], workers: int) -> float:
    """Makespan of ``tasks`` on ``workers`` identical workers: a free worker takes the earliest-
    submitted task whose generator has finished (Ray's FIFO among ready tasks)."""
    if workers < 1:
        raise ValueError(f"workers={workers}: give 1 or more.")
    names = {t.name for t in tasks}
    for t in tasks:
        if t.after is not None and t.after not in names:
            raise ValueError(f"task {t.name!r} waits for {t.after!r}, which is not in the plan.")
    done_at: dict[str, float] = {}
    waiting = list(range(len(tasks)))          # submission order
    running: list[tuple[float, int]] = []      # (end time, task index)
    now, free = 0.0, workers
    while waiting or running:
        ready = [i for i in waiting if tasks[i].after is None or tasks[i].after in done_at]
        for i in ready[:free]:
            waiting.remove(i)
            heapq.heappush(running, (now + tasks[i].seconds, i))
            free -= 1
        if not running:
            raise ValueError("tasks wait for each other in a cycle.")
        now, i = heapq.heappop(running)
        done_at[tasks[i].name] = now
        free += 1
    return now


def projection(config: StudyConfig, sizes: Sizes, rates: Rates, workers: tuple[int, ...] = (1, 8)) -> dict:
    """Per-task seconds and the wall time on each worker count, with the critical path's lower bound
    (the longest generator plus the longest cell that waits for it)."""
    tasks = study_tasks(config, sizes, rates)
    by_name = {t.name: t for t in tasks}
    path = max((t.seconds + (by_name[t.after].seconds if t.after else 0.0)) for t in tasks)
    return {"device": rates.device, "tasks": tasks, "n_cells": sum(t.name.startswith("cell ") for t in tasks),
            "n_generators": sum(t.name.startswith("generator ") for t in tasks),
            "total_s": sum(t.seconds for t in tasks), "critical_path_s": path,
            "wall_s": {k: wall_seconds(tasks, k) for k in workers}}


def duration_text(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min"
