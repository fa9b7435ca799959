"""SSIM + PSNR of 1,000 image pairs at 256x256: core.quality.metrics (batched) against a per-pair
scikit-image loop, in the same run, turns interleaved so both see the same machine load.

    python bench/quality.py [--pairs 1000] [--size 256] [--repeats 5] [--threads N] [--device cpu]

Pairs: phantom radiographs and degraded copies (noise, shifts, contrast). The values must agree to 1e-3.
The batched side is ``metrics.ssim_psnr`` (one pass gives both). ``--threads`` (default: every core,
``os.cpu_count()``) is how many workers its separable engine runs, each single-threaded and pulling chunks of
pairs from one queue; the scikit-image loop is single-threaded by nature. Every core is the default because
that is what wins: on the 2-core AMD EPYC, 2 workers took 0.58x the time of 1 (300 pairs, medians). Torch's
intra-op threads were no faster and once 15x slower while another process held a core: they meet at a barrier
after every operation, where independent workers only lose that core's share.
Prints the machine line, medians over the repeats and, last, ``quality: ratio=<baseline / batched> target=5``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def make_pairs(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from core.data.io import to_uint8
    from core.data.phantom import CLASS_NAMES, render_phantom

    rng = np.random.default_rng(seed)
    base = np.stack([to_uint8(render_phantom(CLASS_NAMES[i % len(CLASS_NAMES)], size=size, seed=i).image)
                     for i in range(min(n, 40))])
    ref = base[rng.integers(0, len(base), n)]
    noisy = ref.astype(np.float32) * rng.uniform(0.7, 1.1, (n, 1, 1)) + rng.normal(0, 12, ref.shape)
    shifts = rng.integers(-4, 5, (n, 2))
    test = np.stack([np.roll(t, tuple(s), axis=(0, 1)) for t, s in zip(noisy, shifts)])
    return ref, np.clip(test, 0, 255).astype(np.uint8)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=1000)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="workers of the batched side (default: every core; see the docstring)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (the batched side; scikit-image is CPU only)")
    args = p.parse_args()

    import torch
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from core.device import machine_line
    from core.quality import metrics

    torch.set_num_threads(1)   # the workers are the parallelism; nothing else in this process needs more
    ref, test = make_pairs(args.pairs, args.size)
    print(machine_line(args.device))
    print(f"{args.pairs} pairs at {args.size}x{args.size}, batched side: {args.threads} worker thread(s) on "
          f"{os.cpu_count()} cores, device {args.device}; scikit-image: 1 thread; {args.repeats} repeats (interleaved)")

    def batched():
        x, y = torch.from_numpy(ref), torch.from_numpy(test)
        return metrics.ssim_psnr(x, y, 255.0, device=args.device, threads=args.threads)

    def skimage_loop():
        s = np.array([structural_similarity(a, b, data_range=255, gaussian_weights=True, sigma=1.5,
                                            use_sample_covariance=False) for a, b in zip(ref, test)])
        return s, np.array([peak_signal_noise_ratio(a, b, data_range=255) for a, b in zip(ref, test)])

    batched()   # warm-up (allocator, oneDNN / cuDNN plans)
    t_ours, t_ref = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ours = batched()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        want = skimage_loop()
        t_ref.append(time.perf_counter() - t0)
    d_ssim = float(np.max(np.abs(ours[0] - want[0])))
    d_psnr = float(np.max(np.abs(ours[1] - want[1])))
    m_ours, m_ref = statistics.median(t_ours), statistics.median(t_ref)
    print(f"batched core.quality.ssim_psnr (engine auto):    median {m_ours:.3f} s  ({args.pairs / m_ours:.0f} pairs/s)"
          f"  runs {[round(t, 3) for t in t_ours]}")
    print(f"scikit-image per-pair loop:                     median {m_ref:.3f} s  ({args.pairs / m_ref:.0f} pairs/s)"
          f"  runs {[round(t, 3) for t in t_ref]}")
    print(f"max |difference|: SSIM {d_ssim:.2e}, PSNR {d_psnr:.2e} dB (must be <= 1e-3)")
    t0 = time.perf_counter()
    tm = metrics.ssim(ref, test, engine="torchmetrics", device=args.device)
    t_tm = time.perf_counter() - t0
    print(f"for reference, torchmetrics engine (SSIM only, one run): {t_tm:.3f} s, "
          f"max |difference| {float(np.max(np.abs(tm - want[0]))):.2e}")
    if max(d_ssim, d_psnr) > 1e-3:
        raise SystemExit(f"values disagree: SSIM {d_ssim:.3g}, PSNR {d_psnr:.3g}")
    print(f"quality: ratio={m_ref / m_ours:.2f} target=5")


if __name__ == "__main__":
    main()
