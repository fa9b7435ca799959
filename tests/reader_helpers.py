"""Shared set-up of the reader-study tests: synthetic sets written the way `python -m core generate`
writes them (source "gan:<run id>", ``generator`` records in dataset.json, ids and file names that
say "synthetic-gan"), with images drawn by the phantom renderer at 32 px (no GAN training: seconds)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def fake_gan_set(folder: Path, run_id: str, classes: list[str], per_class: int, variant: str = "dcgan",
                 size: int = 32, seed: int = 0):
    """A synthetic dataset folder as ``core.gan.sample.write_synthetic_set`` writes it (one generator)."""
    from PIL import Image

    from core.data.datasets import load_dataset, write_dataset
    from core.data.io import to_uint8
    from core.data.manifest import file_sha256
    from core.data.phantom import render_phantom

    if (folder / "dataset.json").is_file():
        return load_dataset(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    rng = np.random.default_rng(seed)
    for c in classes:
        for i in range(per_class):
            px = to_uint8(render_phantom(c, size=size, seed=10_000 + seed * 1000 + i).image)
            px = np.clip(px.astype(int) + rng.integers(-12, 13, px.shape), 0, 255).astype(np.uint8)   # "GAN noise"
            image_id = f"synthetic-gan-{run_id[:8]}-{c.lower().replace(' ', '-')}-s{seed}-{i:05d}"
            Image.fromarray(px).save(folder / "images" / f"{image_id}.png")
            rows.append({"image_id": image_id, "path": f"images/{image_id}.png", "split": "train", "label": c,
                         "labels": [c], "boxes": [], "study_id": image_id, "source": f"gan:{run_id}",
                         "width": size, "height": size, "sha256": file_sha256(folder / "images" / f"{image_id}.png")})
    record = {"run_id": run_id, "variant": variant, "class": classes[0] if len(classes) == 1 else None, "seed": seed}
    return write_dataset(folder, pd.DataFrame(rows), {"name": folder.name, "kind": "synthetic", "synthetic": True,
                                                      "generator": [record]})


CLASSES = ["No finding", "Osteophytes"]


def two_generator_sets(root: Path):
    """A conditional 'dcgan' over CLASSES and a per-class 'wgan-gp' of Osteophytes."""
    a = fake_gan_set(root / "syn-dcgan", "aaaa1111bbbb2222", CLASSES, 6, "dcgan", seed=1)
    b = fake_gan_set(root / "syn-wgan", "cccc3333dddd4444", ["Osteophytes"], 8, "wgan-gp", seed=2)
    return a, b
