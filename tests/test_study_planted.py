"""A planted effect, found end to end: real training, per-image predictions, the paired table, Holm
and the verdict in words.

The real training split holds only a handful of images of one class; the planted set adds many more
real images of that class, rendered from a larger phantom (seeds no split uses). They stand in for a
perfect generator in the DCGAN slot, so the whole GAN path of the study (added images, generator
columns, the usable check) runs too. The study must call that set ``helps`` for the class's
sensitivity, with a positive Δ and an interval above zero, and say so in its verdict."""
from __future__ import annotations

import json

import numpy as np
import pytest

from core.study.grid import StudyConfig

CLASSES = ["No finding", "Osteophytes", "Vertebral collapse"]
TARGET = "Vertebral collapse"
SIZE = 32
# train: the target is the scarce class; val and test hold enough of it for a paired test to see a change
COUNTS = {"train": (60, 60, 3), "val": (10, 10, 10), "test": (30, 30, 40)}
PLANTED = 150   # extra real images of TARGET in the planted set
QUALITY = {"kid": 0.0, "kid_lo": 0.0, "kid_hi": 0.0, "fid": 0.0, "fid_lo": 0.0, "fid_hi": 0.0, "precision": 1.0,
           "precision_lo": 1.0, "precision_hi": 1.0, "recall": 1.0, "recall_lo": 1.0, "recall_hi": 1.0,
           "usable": True, "reason": "", "best_step": 0}


def render(label: str, seeds) -> np.ndarray:
    from core.data.phantom import render_phantom

    return np.stack([np.round(render_phantom(label, SIZE, int(s)).image * 255).astype(np.uint8) for s in seeds])


def planted_splits():
    """Splits over CLASSES with disjoint phantom seeds per split, and the planted images."""
    from core.study.sets import Splits

    parts, seed = {}, 0
    for split, counts in COUNTS.items():
        xs, ys = [], []
        for k, (label, n) in enumerate(zip(CLASSES, counts)):
            xs.append(render(label, range(seed, seed + n)))
            ys.append(np.full(n, k, np.int64))
            seed += n
        parts[split] = (np.concatenate(xs), np.concatenate(ys))
    ids = {split: [f"{split}-{i}" for i in range(len(parts[split][1]))] for split in parts}
    splits = Splits(*parts["train"], *parts["val"], *parts["test"], list(CLASSES), ids)
    extra = render(TARGET, range(seed, seed + PLANTED))
    return splits, (extra, np.full(PLANTED, CLASSES.index(TARGET), np.int64))


@pytest.fixture(scope="module")
def planted_study(small_phantom, tmp_path_factory, session_home):
    from core.study import run, sets
    from core.study.run import Study, run_study

    splits, extra = planted_splits()
    mp = pytest.MonkeyPatch()
    mp.setenv("MEDAUG_HOME", str(session_home))
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{session_home / 'mlflow.db'}")
    mp.setattr(run, "open_splits", lambda ds, config, log: splits)
    mp.setattr(Study, "gan_source", lambda self, variant, mode="plan", on_step=None: extra)
    mp.setattr(sets, "gan_quality", lambda variant, splits, config, root: dict(QUALITY), raising=False)
    # 16 epochs of ~4 steps: at 32 px the small CNN needs that many to tell the class apart at all
    config = StudyConfig(sets=("real", "dcgan"), seeds=(0, 1, 2), image_size=SIZE, epochs=16, patience=16,
                         batch_size=32, n_boot=200, precision="fp32")
    try:
        out = tmp_path_factory.mktemp("planted") / "study"
        summary = run_study(small_phantom.root, config, out, log=lambda msg: None)
    finally:
        mp.undo()
    return summary, out


def test_more_real_images_of_a_scarce_class_are_found_to_help_it(planted_study):
    import pandas as pd

    summary, out = planted_study
    sens = pd.read_csv(out / "results_sensitivity.csv")
    row = sens[(sens["set"] == "dcgan") & (sens["class"] == TARGET)].iloc[0]
    assert row["verdict"] == "helps", {k: row[k] for k in ("mean", "delta", "delta_lo", "p_value", "p_holm")}
    assert row["delta"] > 0.2 and row["delta_lo"] > 0 and row["p_holm"] < 0.05, row.to_dict()
    assert row["n_seeds"] == 3 and row["n_test"] == sum(COUNTS["test"]), row.to_dict()
    # the planted set added exactly the planted images, all of the target class
    added = json.loads((out / "cells" / "dcgan__small_cnn__s0" / "metrics.json").read_text())["added"]
    assert added == {c: (PLANTED if c == TARGET else 0) for c in CLASSES}
    # the verdict in words names the class and quotes the table's Δ
    text = "\n".join(summary["verdict"])
    assert f"raised {TARGET} sensitivity by {row['delta']:+.2f}" in text, text
