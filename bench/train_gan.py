#!/usr/bin/env python3
"""GAN training speed timed from outside: the whole ``python -m core train-gan`` process (DCGAN 64 px,
batch 64, on the phantom's training split, with its MLflow run, status file, epoch checkpoints and
grids) against ``../shared/bench/reference_dcgan.py`` (the pytorch/examples step on data in memory),
each run as its own process at two step counts, in the same run of this script.

The per-step time of each is (wall time at the high count - wall time at the low count) / (high - low),
so start-up (imports, pixel cache, MLflow run, model build) cancels and what remains is what a user
waits for per step, including the product's logging and checkpoints. The four runs of a round are
interleaved, and their order alternates between rounds, so a machine shared with other work slows both
alike. Figures: per-step seconds per round, and the median over rounds of reference / ours.

    python bench/train_gan.py                          # steps 10 and 40, 3 rounds, precision auto
    python bench/train_gan.py --precision fp32         # what a CPU without native bf16 runs
    python bench/train_gan.py --steps 5,20 --rounds 3  # shorter, while developing
Last line: ``train_gan: ratio=<x> target=1.5``.
"""
from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TARGET = 1.5
print = functools.partial(print, flush=True)   # progress shows while a long run goes on


def timed(cmd: list[str], env: dict) -> float:
    """Wall seconds of one process; its output is kept only to explain a failure."""
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return seconds


def main() -> None:
    from bench.gan import REFERENCE_CANDIDATES

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", default="10,40", help="the two step counts, LOW,HIGH (default 10,40)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the four runs (default 3)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="train-gan --precision (the reference is always fp32)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for both (OMP_NUM_THREADS and train-gan --threads; default: one per core)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--reference", type=Path, default=None, help="reference_dcgan.py (default: ../shared/bench/)")
    a = p.parse_args()
    lo, hi = (int(s) for s in a.steps.split(","))
    if not 1 <= lo < hi:
        raise SystemExit(f"--steps {a.steps}: give LOW,HIGH with 1 <= LOW < HIGH.")
    reference = a.reference or next((c for c in REFERENCE_CANDIDATES if c.is_file()), None)
    if reference is None or not reference.is_file():
        raise SystemExit("reference_dcgan.py not found; pass --reference PATH.")

    import torch

    from core.data.datasets import DEFAULT_PHANTOM, build_phantom_dataset
    from core.device import machine_line

    if a.threads:
        torch.set_num_threads(a.threads)
    print(machine_line())
    with tempfile.TemporaryDirectory(prefix="bench-train-gan-") as tmp:
        tmp = Path(tmp)
        ds = build_phantom_dataset(tmp / "phantom", **DEFAULT_PHANTOM)
        env = {**os.environ, "MEDAUG_HOME": str(tmp / "ws"), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db",
               "PYTHONPATH": str(ROOT)}
        if a.threads:
            env["OMP_NUM_THREADS"] = str(a.threads)
        runs = [0]

        def ours(steps: int) -> float:
            runs[0] += 1
            cmd = [sys.executable, "-m", "core", "train-gan", "--data", str(ds.root), "--out", str(tmp / f"run{runs[0]}"),
                   "--variant", "dcgan", "--resolution", "64", "--batch", str(a.batch), "--max-steps", str(steps),
                   "--device", "cpu", "--precision", a.precision]
            return timed(cmd + (["--threads", str(a.threads)] if a.threads else []), env)

        def ref(steps: int) -> float:
            return timed([sys.executable, str(reference), "--channels", "1", "--batch", str(a.batch), "--iters",
                          str(steps), "--device", "cpu"], env)

        t = ours(1)   # builds the pixel cache and the MLflow store: the first run's costs, not a step's
        print(f"phantom {ds.root.name}: {len(ds.manifest)} images; train-gan dcgan 64 px batch {a.batch} precision "
              f"{a.precision}; steps {lo} and {hi}; {a.rounds} rounds; warm-up run {t:.1f} s; "
              f"load average {os.getloadavg()[0]:.1f}")
        per_step = {"reference": [], "ours": []}
        for r in range(a.rounds):
            order = [("reference", ref), ("ours", ours)]
            if r % 2:
                order.reverse()
            wall = {name: {} for name, _ in order}
            for steps in (lo, hi):
                for name, fn in order:
                    wall[name][steps] = fn(steps)
            for name in per_step:
                per_step[name].append((wall[name][hi] - wall[name][lo]) / (hi - lo))
            print(f"  round {r + 1}: " + " | ".join(
                f"{name} {wall[name][lo]:.1f} s / {wall[name][hi]:.1f} s -> {per_step[name][-1]:.3f} s/step"
                for name in per_step))

    ratios = [rs / os_ for rs, os_ in zip(per_step["reference"], per_step["ours"])]
    for name, values in per_step.items():
        med = statistics.median(values)
        print(f"{name}: median {med:.3f} s/step ({a.batch / med:.1f} img/s), rounds "
              f"{', '.join(f'{v:.3f}' for v in values)}")
    print(f"ratio reference / ours per round: {', '.join(f'{x:.2f}' for x in ratios)}; "
          f"load average at end {os.getloadavg()[0]:.1f}")
    print(f"train_gan: ratio={statistics.median(ratios):.2f} target={TARGET}")


if __name__ == "__main__":
    main()
