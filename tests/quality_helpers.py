"""Shared set-up of the quality tests: two tiny GAN runs on the small phantom, trained once per
session through the real train-gan command (so they are MLflow runs the Quality page lists)."""
from __future__ import annotations

import json
import os
from pathlib import Path

ENCODER_EPOCHS = 2   # the tests' domain encoder: tiny, cached in the session workspace


def tiny_gan_runs(data_root: Path) -> list[Path]:
    """Two finished train-gan folders (a per-class DCGAN and a conditional WGAN-GP, 32 px) in the
    session workspace; trained on first use, reused afterwards."""
    from core.cli import main
    from core.workspace import workspace_dir

    runs = []
    for name, extra in (("q-dcgan-osteo", ["--class", "Osteophytes", "--variant", "dcgan", "--epochs", "3"]),
                        ("q-wgangp-cond", ["--conditional", "--variant", "wgan-gp", "--epochs", "2"])):
        out = workspace_dir("quality-test-gans") / name
        status = out / "status.json"
        if not (status.is_file() and json.loads(status.read_text()).get("state") == "finished"):
            code = main(["train-gan", "--data", str(data_root), "--out", str(out), "--resolution", "32",
                         "--batch", "16", "--width", "16", "--steps-per-epoch", "6", "--threads",
                         str(min(2, os.cpu_count() or 1)), *extra])
            assert code == 0, f"train-gan {name} failed"
        runs.append(out)
    return runs
