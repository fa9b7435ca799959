#!/usr/bin/env python3
"""Phantom generation speed: the default set (1,000 images at 256 px) on all cores.

Baseline, measured in the same run: the same builder on one worker (images/s), so the
ratio shows what the process pool buys. Target: the default set in under 30 s on 2 cores.
Last line: ``phantom: seconds=<median> target=30``.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from core.data.datasets import DEFAULT_PHANTOM, build_phantom_dataset  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--baseline-n", type=int, default=200, help="images for the one-worker baseline")
    a = p.parse_args()
    from core.device import machine_line

    print(machine_line(), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        def timed(n, workers, tag):
            t0 = time.perf_counter()
            build_phantom_dataset(Path(tmp) / tag, n=n, size=DEFAULT_PHANTOM["size"], seed=DEFAULT_PHANTOM["seed"],
                                  workers=workers)
            return time.perf_counter() - t0

        full = [timed(DEFAULT_PHANTOM["n"], None, f"full{i}") for i in range(a.repeats)]
        serial = [timed(a.baseline_n, 1, f"one{i}") for i in range(a.repeats)]

    n = DEFAULT_PHANTOM["n"]
    med, med1 = statistics.median(full), statistics.median(serial)
    print(f"default set: {n} images at {DEFAULT_PHANTOM['size']} px on {os.cpu_count()} cores, "
          f"runs {[round(t, 2) for t in full]} s -> median {med:.2f} s = {n / med:.1f} images/s")
    print(f"baseline one worker: {a.baseline_n} images, runs {[round(t, 2) for t in serial]} s -> "
          f"{a.baseline_n / med1:.1f} images/s; pool speed-up {(n / med) / (a.baseline_n / med1):.2f}x")
    print(f"phantom: seconds={med:.2f} target=30")


if __name__ == "__main__":  # the pool's spawned workers re-import this file
    main()
