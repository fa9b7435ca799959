#!/usr/bin/env python3
"""GAN training speed: our DCGAN step (core.gan.train) against pytorch/examples' step
(``../shared/bench/reference_dcgan.py``), both DCGAN 64x64, 1 channel, width 64, nz 100,
batch B, on data already in memory, measured in the same run.

Each repeat runs the reference script and our worker as fresh subprocesses, interleaved
(ref, ours, ref, ours, ...), so a busy machine slows both alike; the figure is the median
images/s of each and the ratio of the medians. Both time the same number of steps after
the same warm-up, and our timing includes the periodic loss reads (a host sync every 10
steps) and a final read.

Same maths as the reference: the same networks and init, Adam 2e-4 (0.5, 0.999), BCE on
D's output (as logits), separate real and fake D batches, G trained on the fakes D just
saw. What differs is only how the work is done: channels_last (oneDNN kernels on CPUs),
fused Adam, D's weight gradients skipped in the G step (only its input gradient is used),
losses kept on the device, and on GPUs bf16 autocast and optionally a CUDA graph.

    python bench/gan.py                                # CPU, batch 64, fp32 (target 1.5x on 2 cores)
    python bench/gan.py --device cuda --batch 256      # GPU: eager bf16 and CUDA-graphed bf16
Last line: ``gan: ratio=<x> target=1.5``.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT.parent / "shared" / "bench" / "reference_dcgan.py"
TARGET = 1.5


def worker(a) -> None:
    """Time our trainer in this process; print one JSON line per mode."""
    sys.path.insert(0, str(ROOT))
    import torch

    from core.gan.train import GanConfig, GanTrainer

    torch.manual_seed(0)
    images = torch.randint(0, 256, (1024, 64, 64), dtype=torch.uint8).numpy()
    for mode in a.modes.split(","):
        cfg = GanConfig(variant="dcgan", resolution=64, batch=a.batch, max_steps=10**7, nz=100, width=64,
                        device=a.device, precision=a.precision, cuda_graph=mode == "graph", log_every=10)
        trainer = GanTrainer(images, None, cfg)
        sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
        for _ in range(a.warmup + (4 if mode == "graph" else 0)):   # a graph records after 3 eager steps
            trainer.train_step()
        trainer.read_stats()
        sync()
        t = time.perf_counter()
        for i in range(1, a.iters + 1):
            trainer.train_step()
            if i % cfg.log_every == 0:
                trainer.read_stats()
        stats = trainer.read_stats()
        sync()
        dt = time.perf_counter() - t
        print(json.dumps({"mode": mode, "img_per_s": a.iters * a.batch / dt, "graph": trainer.graph is not None,
                          "bf16": trainer.bf16, "loss_d": stats.get("loss_d"), "notes": trainer.notes,
                          "threads": torch.get_num_threads(), "torch": torch.__version__}), flush=True)


def run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--iters", type=int, default=None, help="timed steps per run (default 20 on CPU, 300 on GPU)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (the reference's default)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--precision", default="auto", help="ours: auto (fp32 on CPU, bf16 on GPU), fp32 or bf16")
    p.add_argument("--modes", default=None, help="ours: eager and/or graph (default: eager on CPU, eager,graph on GPU)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    gpu = a.device.startswith("cuda")
    a.iters = a.iters or (300 if gpu else 20)
    a.modes = a.modes or ("eager,graph" if gpu else "eager")
    if a.worker:
        return worker(a)

    py = sys.executable
    ref_cmd = [py, str(REFERENCE), "--channels", "1", "--batch", str(a.batch), "--iters", str(a.iters),
               "--warmup", str(a.warmup), "--device", a.device]
    ours_cmd = [py, __file__, "--worker", "--device", a.device, "--batch", str(a.batch), "--iters", str(a.iters),
                "--warmup", str(a.warmup), "--precision", a.precision, "--modes", a.modes]
    ref, ours = [], {m: [] for m in a.modes.split(",")}
    info = {}
    print(f"DCGAN 64x64, 1 channel, batch {a.batch}, {a.iters} timed steps after {a.warmup} warm-up, "
          f"device {a.device}, {os.cpu_count()} CPU cores, {a.repeats} interleaved repeats", flush=True)
    for r in range(a.repeats):
        out = run(ref_cmd)
        ref.append(float(re.search(r"img_per_s=([\d.]+)", out).group(1)))
        line = f"  repeat {r + 1}: reference {ref[-1]:8.1f} img/s"
        for row in map(json.loads, run(ours_cmd).strip().splitlines()):
            ours[row["mode"]].append(row["img_per_s"])
            info[row["mode"]] = row
            line += f" | ours[{row['mode']}] {row['img_per_s']:8.1f} img/s"
        print(line, flush=True)
    ref_med = statistics.median(ref)
    print(f"reference (pytorch/examples step, fp32, NCHW): median {ref_med:.1f} img/s  runs {[round(x, 1) for x in ref]}")
    for mode, values in ours.items():
        row = info[mode]
        med = statistics.median(values)
        print(f"ours[{mode}] ({'bf16' if row['bf16'] else 'fp32'}, channels_last, fused Adam"
              f"{', CUDA graph' if row['graph'] else ''}; {row['threads']} threads, torch {row['torch']}): "
              f"median {med:.1f} img/s  runs {[round(x, 1) for x in values]}  ratio {med / ref_med:.2f}x")
        for note in row["notes"]:
            print(f"  note: {note}")
    final = list(ours)[-1]   # on a GPU the last mode (the CUDA graph) is the product's fast path
    print(f"device: {a.device}  batch: {a.batch}  ratio measured with ours[{final}]")
    print(f"gan: ratio={statistics.median(ours[final]) / ref_med:.2f} target={TARGET}")


if __name__ == "__main__":
    main()
