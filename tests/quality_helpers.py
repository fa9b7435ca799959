"""Shared set-up of the quality tests: two tiny GAN runs on the small phantom, trained once per
session through the real train-gan command (so they are MLflow runs the Quality page lists)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

ENCODER_EPOCHS = 2   # the tests' domain encoder: tiny, cached in the session workspace


def tiny_gan_runs(data_root: Path) -> list[Path]:
    """Two finished train-gan folders (a per-class DCGAN and a conditional WGAN-GP, 32 px) in the
    session workspace; trained on first use, reused afterwards."""
    from core.cli import main
    from core.workspace import workspace_dir

    runs = []
    for name, extra in (("q-dcgan-osteo", ["--class", "Osteophytes", "--variant", "dcgan", "--epochs", "3",
                                           "--steps-per-epoch", "5"]),
                        ("q-wgangp-cond", ["--conditional", "--variant", "wgan-gp", "--epochs", "2",
                                           "--steps-per-epoch", "2"])):
        out = workspace_dir("quality-test-gans") / name
        status = out / "status.json"
        if not (status.is_file() and json.loads(status.read_text()).get("state") == "finished"):
            code = main(["train-gan", "--data", str(data_root), "--out", str(out), "--resolution", "32",
                         "--batch", "16", "--width", "16", "--threads", "1", *extra])
            assert code == 0, f"train-gan {name} failed"
        runs.append(out)
    return runs


def planted_set(ds, folder: Path) -> tuple[Path, str]:
    """A synthetic-marked folder of 8 Osteophytes images from the TEST split (other studies: ordinary
    samples) plus one TRAINING image with +-2 grey levels of noise (a planted near-copy, id ``s8``).
    Returns (folder, image id of the copied training image)."""
    import pandas as pd
    from PIL import Image

    from core.data.cache import pixel_cache
    from core.data.datasets import write_dataset

    df = ds.manifest
    cache = pixel_cache(ds, 64)
    ordinary = df.index[(df["split"] == "test") & (df["label"] == "Osteophytes")].tolist()[:8]
    copied = int(df.index[(df["split"] == "train") & (df["label"] == "Osteophytes")][0])
    if not (folder / "dataset.json").is_file():
        (folder / "images").mkdir(parents=True, exist_ok=True)
        rows = []
        for k, i in enumerate([*ordinary, copied]):
            px = np.asarray(cache.array[i]).astype(int)
            if i == copied:
                px = np.clip(px + np.random.default_rng(0).integers(-2, 3, px.shape), 0, 255)
            Image.fromarray(px.astype(np.uint8)).save(folder / "images" / f"s{k}.png")
            rows.append({"image_id": f"s{k}", "path": f"images/s{k}.png", "split": "train", "label": "Osteophytes",
                         "labels": ["Osteophytes"], "boxes": [], "study_id": f"s{k}", "source": "test-planted",
                         "width": 64, "height": 64, "sha256": "0"})
        write_dataset(folder, pd.DataFrame(rows), {"name": "planted copy (test)", "kind": "synthetic",
                                                   "synthetic": True})
    return folder, str(df.loc[copied, "image_id"])


def quality_report(ds) -> tuple[Path, list[Path], str]:
    """One quality run per session through the real CLI (in this process): the two tiny GAN runs, the
    planted set, and the epochs of the first run. Returns (report folder, GAN run folders, copied id)."""
    from core.cli import main
    from core.workspace import workspace_dir

    runs = tiny_gan_runs(ds.root)
    planted, copied = planted_set(ds, workspace_dir("quality-test-gans") / "planted")
    out = workspace_dir("quality-test-gans") / "report"
    if not (out / "report.json").is_file():
        code = main(["quality", "--real", str(ds.root), "--synthetic", str(runs[0]), "--synthetic",
                     str(runs[1] / "checkpoint.pt"), "--synthetic", str(planted), "--epochs-of", str(runs[0]),
                     "--size", "64", "--n-per-class", "6", "--boot", "10", "--kid-subsets", "10",
                     "--diversity-pairs", "20", "--encoder-epochs", str(ENCODER_EPOCHS), "--out", str(out)])
        assert code == 0, "the quality command failed"
    return out, runs, copied
