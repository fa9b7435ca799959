#!/usr/bin/env python3
"""GAN training speed: our DCGAN step (core.gan.train) against pytorch/examples' step
(``../shared/bench/reference_dcgan.py``), both DCGAN 64x64, 1 channel, width 64, nz 100,
batch B, on data already in memory, measured in the same process and the same run.

The reference's own code is loaded from its file (everything above its timing loop: its
networks, init, optimisers, data and ``step()``), so it runs exactly as written. The
contenders then take turns in short bursts of steps (reference, ours[mode], ...,
reference, ...), so a machine shared with other work slows each alike; each burst ends
with a sync (the reference reads .item() every step anyway; ours reads its losses once per
burst, never less often than the product's every 10 steps). Figures: median images/s per
contender, and the median over rounds of ours / reference in the same round.

Same maths as the reference: the same networks and init, Adam 2e-4 (0.5, 0.999), BCE on D's
output (as logits), separate real and fake D batches, G trained on the fakes D just saw.
What differs is how the work is done: channels_last (oneDNN / tensor-core layouts), fused
Adam, D's weight gradients skipped in the G step (only its input gradient is used), losses
kept on the device; and precision: mode ``fp32`` is the reference's precision, ``auto`` is
the product's default (bf16 autocast with fp32 weights on GPUs and on CPUs with native bf16,
AMX or AVX512-BF16; fp32 elsewhere); ``+graph`` replays the whole step as one CUDA graph.

    python bench/gan.py                               # CPU, batch 64: modes fp32 and auto
    python bench/gan.py --device cuda --batch 256     # GPU: modes fp32, bf16, bf16+graph
Last line: ``gan: ratio=<x> target=1.5`` for the last mode (the product's fast path).
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the baseline lives beside the repository (../shared/bench); a machine with a copy elsewhere passes --reference
REFERENCE_CANDIDATES = (ROOT.parent / "shared" / "bench" / "reference_dcgan.py",
                        ROOT / "shared" / "bench" / "reference_dcgan.py")
TARGET = 1.5
TIMING_MARKER = "for _ in range(a.warmup):"   # where the reference's own timing loop starts


def load_reference(path: Path, batch: int, device: str) -> dict:
    """Run the reference file up to its timing loop; return its namespace (with ``step``)."""
    source = path.read_text()
    if TIMING_MARKER not in source:
        raise SystemExit(f"{path}: cannot find its timing loop ({TIMING_MARKER!r}); update bench/gan.py.")
    namespace = {"__name__": "reference_dcgan", "__file__": str(path)}
    argv = sys.argv
    sys.argv = [str(path), "--channels", "1", "--batch", str(batch), "--device", device]
    try:
        exec(compile(source[:source.index(TIMING_MARKER)], str(path), "exec"), namespace)
    finally:
        sys.argv = argv
    return namespace


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--modes", default=None,
                   help="ours, comma-separated: PRECISION[+graph], PRECISION auto, fp32 or bf16 "
                        "(default: fp32,auto on CPU; fp32,bf16,bf16+graph on GPU); the ratio line uses the last")
    p.add_argument("--burst", type=int, default=None, help="steps per turn (default 3 on CPU, 50 on GPU)")
    p.add_argument("--rounds", type=int, default=None, help="turns per contender (default 9 on CPU, 7 on GPU)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per contender first (the reference's default)")
    p.add_argument("--reference", type=Path, default=None,
                   help="reference_dcgan.py (default: ../shared/bench/ beside the repository, or ./shared/bench/)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for BOTH contenders (default: torch's, one per core)")
    a = p.parse_args()

    sys.path.insert(0, str(ROOT))
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)

    from core.device import machine_line
    from core.gan.train import GanConfig, GanTrainer

    gpu = a.device.startswith("cuda")
    modes = (a.modes or ("fp32,bf16,bf16+graph" if gpu else "fp32,auto")).split(",")
    burst, rounds = a.burst or (50 if gpu else 3), a.rounds or (7 if gpu else 9)
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    load0 = os.getloadavg()[0]

    reference = a.reference or next((c for c in REFERENCE_CANDIDATES if c.is_file()), None)
    if reference is None or not reference.is_file():
        raise SystemExit(f"reference_dcgan.py not found (looked in {', '.join(map(str, REFERENCE_CANDIDATES))}); "
                         f"pass --reference PATH.")
    ref = load_reference(reference, a.batch, a.device)
    contenders = {"reference": ref["step"]}
    trainers = {}
    torch.manual_seed(0)
    images = torch.randint(0, 256, (1024, 64, 64), dtype=torch.uint8).numpy()
    for mode in modes:
        precision, _, graph = mode.partition("+")
        cfg = GanConfig(variant="dcgan", resolution=64, batch=a.batch, max_steps=10**7, nz=100, width=64,
                        device=a.device, precision=precision, cuda_graph=graph == "graph", log_every=10)
        trainers[mode] = GanTrainer(images, None, cfg)

        def ours(t=trainers[mode]):
            t.train_step()
            if t._stats_steps >= t.config.log_every:   # the product's periodic read
                t.read_stats()
        contenders[mode] = ours

    print(machine_line(a.device))
    print(f"DCGAN 64x64, 1 channel, batch {a.batch}, device {a.device}"
          f"{' (' + torch.cuda.get_device_name() + ')' if gpu else ''}, {os.cpu_count()} CPU cores, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; {rounds} rounds of {burst}-step turns "
          f"after {a.warmup} warm-up steps each; load average at start {load0:.1f}", flush=True)
    for name, step in contenders.items():
        for _ in range(a.warmup + (4 if name.endswith("+graph") else 0)):   # a graph records after 3 eager steps
            step()
    for t in trainers.values():
        t.read_stats()
    sync()

    speed = {name: [] for name in contenders}
    for r in range(rounds):
        for name, step in contenders.items():
            t0 = time.perf_counter()
            for _ in range(burst):
                step()
            if name in trainers:
                trainers[name].read_stats()   # the burst's final sync
            sync()
            speed[name].append(burst * a.batch / (time.perf_counter() - t0))
        print(f"  round {r + 1}: " + " | ".join(f"{n} {v[-1]:7.1f}" for n, v in speed.items()) + "  img/s", flush=True)

    ref_med = statistics.median(speed["reference"])
    print(f"reference (pytorch/examples step as written: fp32, NCHW, Sigmoid + BCELoss, 4 .item() per step): "
          f"median {ref_med:.1f} img/s")
    ratios = {}
    for mode, t in trainers.items():
        paired = [o / r for o, r in zip(speed[mode], speed["reference"])]
        ratios[mode] = statistics.median(paired)
        print(f"ours[{mode}] ({'bf16 autocast' if t.bf16 else 'fp32'}, channels_last, fused Adam"
              f"{', CUDA graph' if t.graph is not None else ''}): median {statistics.median(speed[mode]):.1f} img/s, "
              f"ratio of medians {statistics.median(speed[mode]) / ref_med:.2f}x, median paired ratio {ratios[mode]:.2f}x")
        for note in t.notes:
            print(f"  note: {note}")
    final = modes[-1]
    print(f"device: {a.device}  batch: {a.batch}  ratio: ours[{final}] / reference, median of paired rounds; "
          f"load average at end {os.getloadavg()[0]:.1f}")
    print(f"gan: ratio={ratios[final]:.2f} target={TARGET}")


if __name__ == "__main__":
    main()
