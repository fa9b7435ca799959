#!/usr/bin/env python3
"""Classic augmentation speed on 512 x 512 uint8 phantom radiographs.

1. Preview latency: every registry operation on one image (what a slider change costs),
   median over repeats; target < 50 ms each on 2 cores.
2. Batch throughput of the original study's seven operations (rotate 45, rotate 270, both
   flips, crop, zoom, shear 30), in augmented images per second, against two baselines
   measured in the same run, interleaved:
   - a per-image Pillow loop, the original study's method;
   - torchvision.transforms.v2.functional on an (N, 1, H, W) uint8 tensor.
   Ratio = ours / the faster baseline; target >= 1.0.
``--device cuda`` runs our batch and torchvision on the GPU (Pillow stays on the CPU).
Last line: ``augment: ratio=<x> target=1.0``.
"""
import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from core.augment import OPS, STUDY_OPERATIONS, Pipeline, Step  # noqa: E402
from core.augment.ops import box_pixels  # noqa: E402
from core.data.io import to_uint8  # noqa: E402
from core.data.phantom import CLASS_NAMES, render_phantom  # noqa: E402

SIZE = 512


def phantoms(n: int, distinct: int = 8) -> np.ndarray:
    base = [to_uint8(render_phantom(CLASS_NAMES[k % len(CLASS_NAMES)], SIZE, k).image) for k in range(distinct)]
    return np.stack([base[k % distinct] for k in range(n)])


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def preview_latency(image: np.ndarray, repeats: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    return {name: median_ms(lambda op=op: op.run(image, rng), repeats) for name, op in OPS.items()}


def pillow_ops(box):
    """The study's seven, as PIL calls on one image (its method: one image at a time)."""
    from PIL import Image

    t = math.tan(math.radians(30))
    return {
        "rotate 45": lambda im: im.rotate(45),
        "rotate 270": lambda im: im.rotate(270),
        "horizontal flip": lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        "vertical flip": lambda im: im.transpose(Image.Transpose.FLIP_TOP_BOTTOM),
        "crop (2, 5, 500, 1000)": lambda im: im.crop(box),
        "zoom (crop + resize)": lambda im: im.crop(box).resize(im.size),
        "shear 30 degrees": lambda im: im.transform(im.size, Image.Transform.AFFINE, (1, -t, t * im.size[1] / 2, 0, 1, 0)),
    }


def torchvision_ops(box):
    from torchvision.transforms.v2 import functional as F

    x0, y0, x1, y1 = box
    return {
        "rotate 45": lambda x: F.rotate(x, 45.0),
        "rotate 270": lambda x: F.rotate(x, 270.0),
        "horizontal flip": F.horizontal_flip,
        "vertical flip": F.vertical_flip,
        "crop (2, 5, 500, 1000)": lambda x: F.crop(x, y0, x0, y1 - y0, x1 - x0).contiguous(),
        "zoom (crop + resize)": lambda x: F.resized_crop(x, y0, x0, y1 - y0, x1 - x0, [SIZE, SIZE], antialias=True),
        "shear 30 degrees": lambda x: F.affine(x, angle=0.0, translate=[0, 0], scale=1.0, shear=[30.0, 0.0]),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=64, help="images per batch (default 64)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats, medians reported (default 5)")
    p.add_argument("--device", default="cpu", help="cpu or cuda: where our batch and torchvision run")
    a = p.parse_args()
    from core.device import machine_line

    print(machine_line(), flush=True)

    import torch

    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    batch = phantoms(a.batch)
    print(f"augment bench: {a.batch} x {SIZE}x{SIZE} uint8 phantoms, {os.cpu_count()} CPU cores, "
          f"torch threads {torch.get_num_threads()}, device {a.device}")

    latency = preview_latency(batch[0], max(7, a.repeats * 3))
    print("\npreview latency, one image (median ms; target < 50):")
    for name, ms in latency.items():
        print(f"  {name:<22} {ms:8.2f}  {'ok' if ms < 50 else 'SLOW'}")
    print(f"  slowest: {max(latency, key=latency.get)} {max(latency.values()):.2f} ms")

    from PIL import Image

    box = box_pixels(OPS["crop"].validate({}), (SIZE, SIZE))
    pil, tv = pillow_ops(box), torchvision_ops(box)
    ours = {label: Pipeline((Step(op, params),)) for label, op, params in STUDY_OPERATIONS}
    x_dev = torch.from_numpy(batch).to(a.device)
    x_tv = x_dev.unsqueeze(1)
    ours_input = batch if a.device == "cpu" else x_dev

    def run_ours(label):
        ours[label].apply_batch(ours_input, np.random.default_rng(0))
        sync()

    def run_pillow(label):
        f = pil[label]
        for img in batch:
            np.asarray(f(Image.fromarray(img)))

    def run_tv(label):
        tv[label](x_tv)
        sync()

    methods = {"ours": run_ours, "pillow loop": run_pillow, "torchvision v2": run_tv}
    times = {m: {label: [] for label in ours} for m in methods}
    for fn in methods.values():  # warm-up: caches, index maps, CUDA kernels
        for label in ours:
            fn(label)
    for _ in range(a.repeats):  # interleaved, so load on the machine hits every method alike
        for m, fn in methods.items():
            for label in ours:
                t0 = time.perf_counter()
                fn(label)
                times[m][label].append(time.perf_counter() - t0)

    med = {m: {label: statistics.median(v) for label, v in per.items()} for m, per in times.items()}
    rate = {m: {label: a.batch / t for label, t in per.items()} for m, per in med.items()}
    total = {m: len(ours) * a.batch / sum(per.values()) for m, per in med.items()}
    print(f"\nbatch throughput, augmented images/s (median of {a.repeats}):")
    print(f"  {'operation':<24}{'ours':>10}{'pillow loop':>13}{'torchvision':>13}{'vs pillow':>11}{'vs tv':>8}")
    for label in ours:
        r = {m: rate[m][label] for m in methods}
        print(f"  {label:<24}{r['ours']:>10.0f}{r['pillow loop']:>13.0f}{r['torchvision v2']:>13.0f}"
              f"{r['ours'] / r['pillow loop']:>10.2f}x{r['ours'] / r['torchvision v2']:>7.2f}x")
    print(f"  {'all seven':<24}{total['ours']:>10.0f}{total['pillow loop']:>13.0f}{total['torchvision v2']:>13.0f}"
          f"{total['ours'] / total['pillow loop']:>10.2f}x{total['ours'] / total['torchvision v2']:>7.2f}x")
    faster = max(total["pillow loop"], total["torchvision v2"])
    name = "pillow loop" if total["pillow loop"] >= total["torchvision v2"] else "torchvision v2"
    ratio = total["ours"] / faster
    print(f"ours {total['ours']:.0f} images/s vs the faster baseline ({name}) {faster:.0f} images/s -> {ratio:.2f}x")
    print(f"augment: ratio={ratio:.2f} target=1.0")


if __name__ == "__main__":
    main()
