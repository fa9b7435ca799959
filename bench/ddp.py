#!/usr/bin/env python3
"""Scaling of DDP training (core.distributed) on CPUs: 2 gloo processes against 1.

The same GAN training step (core.gan.train, DCGAN 64x64, width 64, fp32, global batch B)
is timed in three set-ups, in the same run, each in a fresh process tree:

- ``1 proc x 1 thread``  : the unit of work one core does alone;
- ``1 proc x N threads`` : what one process gets from all N cores (torch's intra-op threads);
- ``N procs x 1 thread`` : ``torchrun --nproc_per_node=N``, DDP, each rank B/N images.

Scaling efficiency = (N-process throughput) / (N x 1-process-1-thread throughput); 1.0 is
perfect. The three set-ups take turns for ``--rounds`` rounds, so background load slows each
alike; figures are medians over rounds. Everything runs on this machine's cores, which may
be shared: the load average is printed with the figures.

    python bench/ddp.py                    # N = 2, batch 64
Last line: ``ddp: ratio=<efficiency> target=0.8``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = 0.8


def worker(args) -> None:
    """One timing, alone or as a torchrun rank: images/s of the global batch after warm-up."""
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import torch

    from core import distributed
    from core.gan.train import GanConfig, GanTrainer

    ctx = distributed.init("cpu")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (512, 64, 64), dtype=np.uint8)
    config = GanConfig(resolution=64, batch=args.batch, epochs=None, max_steps=10**6, device="cpu",
                       precision="fp32", threads=args.threads, seed=0)
    trainer = GanTrainer(images, None, config, ctx)
    for _ in range(args.warmup):
        trainer.train_step()
    trainer.read_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        trainer.train_step()
    trainer.read_stats()                  # syncs every rank
    seconds = time.perf_counter() - t0
    if ctx.is_main:
        Path(args.out).write_text(json.dumps({"img_per_s": args.steps * args.batch / seconds,
                                              "world_size": ctx.world_size, "threads": torch.get_num_threads()}))
    distributed.shutdown()


def timed(setup: str, nproc: int, threads: int, a, tmp: Path) -> float:
    out = tmp / f"{setup.replace(' ', '')}.json"
    common = ["--worker", "--batch", str(a.batch), "--threads", str(threads), "--steps", str(a.steps),
              "--warmup", str(a.warmup), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    if nproc == 1:
        cmd = [sys.executable, __file__, *common]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", __file__,
               *common]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if p.returncode:
        raise SystemExit(f"{setup} failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return json.loads(out.read_text())["img_per_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--batch", type=int, default=64, help="global batch (default 64)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--out", default="", help=argparse.SUPPRESS)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(a)
    sys.path.insert(0, str(ROOT))
    from core.device import machine_line

    print(machine_line(), flush=True)
    n = a.nproc
    setups = {"1 proc x 1 thread": (1, 1), f"1 proc x {n} threads": (1, n), f"{n} procs x 1 thread": (n, 1)}
    results: dict[str, list[float]] = {k: [] for k in setups}
    print(f"DCGAN 64x64 fp32, global batch {a.batch}, {a.steps} timed steps; cores: {os.cpu_count()}; "
          f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for name, (nproc, threads) in setups.items():
                results[name].append(timed(name, nproc, threads, a, Path(tmp)))
            print(f"  round {r + 1}: " + "  ".join(f"{k} {v[-1]:.1f} img/s" for k, v in results.items()), flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    for k, v in med.items():
        print(f"{k:>22}: {v:8.1f} img/s (median of {a.rounds})")
    efficiency = med[f"{n} procs x 1 thread"] / (n * med["1 proc x 1 thread"])
    vs_threads = med[f"{n} procs x 1 thread"] / med[f"1 proc x {n} threads"]
    print(f"{n} DDP processes vs 1 process with {n} threads: {vs_threads:.2f}x; load average after: "
          f"{os.getloadavg()[0]:.2f}")
    print(f"scaling efficiency ({n} processes vs {n} x one): {efficiency:.2f}")
    print(f"ddp: ratio={efficiency:.2f} target={TARGET}")


if __name__ == "__main__":
    main()
