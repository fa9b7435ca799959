"""Running planned steps on a batch, shared by the NumPy path (:meth:`core.augment.pipeline.Pipeline.apply_batch`)
and the torch path (:mod:`core.augment.torch_batch`): which images each step runs on, and one
operation's kernel over a NumPy batch. Imports neither of them, so both import it."""
from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from core.augment.ops import get_op


def step_groups(steps, plans: list[dict[int, dict]], shape: tuple[int, int]):
    """Per step of ``steps`` that some image runs: (step index, op, member images, their applied
    params, the output shape)."""
    for s, step in enumerate(steps):
        members = [i for i, plan in enumerate(plans) if s in plan]
        if not members:
            continue
        op = get_op(step.op)
        applied = [plans[i][s] for i in members]
        shapes = {op.output_shape(a, shape) for a in {id(a): a for a in applied}.values()}
        out_shape = shapes.pop()
        if shapes or (out_shape != shape and len(members) != len(plans)):
            raise ValueError(f"step {s + 1} ({op.name}) changes the image size, so in a batch it "
                             f"must run on every image: set its probability to 1 (chain mode).")
        yield s, op, members, applied, out_shape
        shape = out_shape


def run_numpy(steps, batch: np.ndarray, plans, workers: int | None) -> np.ndarray:
    """Run the planned ``steps`` on an (N, H, W) NumPy batch (a new array; ``batch`` is not changed)."""
    out = batch
    for s, op, members, applied, out_shape in step_groups(steps, plans, batch.shape[1:]):
        if len(members) == len(out):      # the whole batch: no gather, no scatter
            out = run_kernel(op, out, applied, workers)
            continue
        result = run_kernel(op, out[members], applied, workers)
        if out is batch:
            out = batch.copy()
        out[members] = result
    return out


def run_kernel(op, batch: np.ndarray, applied: list[dict], workers: int | None = None) -> np.ndarray:
    """Apply one operation to an (n, H, W) batch with per-image params into a new array: the op's
    batch kernel if it has one, else image by image. Large batches are split over threads, each
    writing its slice in place (Pillow, SciPy and NumPy release the GIL in their loops)."""
    n = len(batch)
    out = np.empty((n, *op.output_shape(applied[0], batch.shape[1:])), dtype=batch.dtype)

    def work(lo: int, hi: int) -> None:
        if op.apply_many is not None:
            op.apply_many(batch[lo:hi], applied[lo:hi], out[lo:hi])
        else:
            for i in range(lo, hi):
                out[i] = op.apply(batch[i], applied[i])

    workers = max(1, min(workers or len(os.sched_getaffinity(0)), 8))
    if workers == 1 or n < 4 * workers or not op.threads:
        work(0, n)
        return out
    bounds = np.linspace(0, n, workers + 1).astype(int)
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda ab: work(*ab), itertools.pairwise(bounds)))
    return out
