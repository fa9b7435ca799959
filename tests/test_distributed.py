"""torchrun + DDP (issue 9): a 2-process gloo run on the CPU is the same training as one
process with the same global batch and seed; only rank 0 tracks; resume across world sizes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests import ddp_worker

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(ddp_worker.__file__)


def torchrun(*args: str, nproc: int = 2, env: dict | None = None, timeout: int = 180) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONFAULTHANDLER": "1", **(env or {})}
    p = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def assert_same_weights(a: dict, b: dict, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    for net in ("G", "D"):
        assert a[net].keys() == b[net].keys()
        for k in a[net]:
            torch.testing.assert_close(b[net][k].float(), a[net][k].float(), rtol=rtol, atol=atol, msg=f"{net}.{k}")


@pytest.mark.parametrize("variant, flags", [("dcgan", ()), ("wgan", ()), ("wgan-gp", ("diffaug",))])
def test_ddp_run_equals_single_process_with_the_same_global_batch(tmp_path, variant, flags):
    steps = 3
    single = ddp_worker.run_gan(variant, steps, diffaug="diffaug" in flags)
    torchrun(str(WORKER), "gan", variant, str(steps), str(tmp_path / "ddp.pt"), *flags)
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    assert ddp["world_size"] == 2
    assert_same_weights(single, ddp)
    # the weights moved: the comparison is not between two untouched initialisations
    from core.gan.train import GanConfig, GanTrainer
    x, _ = ddp_worker.images()
    fresh = GanTrainer(x, None, GanConfig(variant=variant, resolution=32, batch=8, epochs=None, max_steps=1, width=8,
                                          nz=16, device="cpu", precision="fp32", seed=3))
    moved = max((fresh.G.state_dict()[k].float() - ddp["G"][k].float()).abs().max().item()
                for k in ddp["G"] if ddp["G"][k].is_floating_point())
    assert moved > 1e-4
    for k, v in single["stats"].items():
        assert ddp["stats"][k] == pytest.approx(v, rel=1e-4, abs=1e-5), k


@pytest.mark.parametrize("balance", ["weighted_loss", "none"])
def test_ddp_classifier_matches_single_process_with_the_same_global_batch(tmp_path, balance):
    """ResNet-18 (batch norm, no dropout): the first step's gradients after DDP's average, with
    synchronised batch norm and the loss normalised by the global batch, equal one process's,
    and so does the loss of that step; an epoch (4 steps, the last one 6 images) counts every image. Weights are checked through the
    gradients: AdamW's first steps move each weight by about lr * sign(gradient), so a gradient
    that is zero up to rounding steps either way in two summation orders. (Networks with dropout
    draw independent masks per rank, so they match in distribution, not bit for bit.)"""
    single = ddp_worker.run_classifier("resnet18", 1, balance)
    torchrun(str(WORKER), "classifier", "resnet18", "1", str(tmp_path / "ddp.pt"), balance)
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    assert ddp["world_size"] == 2 and ddp["stats"]["n"] == single["stats"]["n"] == 30
    for k, g in single["grads"].items():
        rel = ((ddp["grads"][k] - g).norm() / g.norm().clamp_min(1e-12)).item()
        assert rel < 1e-4, (k, rel)
    assert ddp["stats"]["first_loss"] == pytest.approx(single["stats"]["first_loss"], rel=1e-5)


def test_torchrun_train_gan_makes_one_mlflow_run_and_resumes_with_another_world_size(tmp_path, small_phantom):
    from core import tracking

    out = tmp_path / "job"
    before = {r.info.run_id for r in tracking.search_runs("train-gan", max_results=1000)}
    env = {"MEDAUG_HOME": os.environ["MEDAUG_HOME"], "MLFLOW_TRACKING_URI": tracking.tracking_uri()}
    p = torchrun("-m", "core", "train-gan", "--data", str(small_phantom.root), "--out", str(out), "--resolution", "32",
                 "--batch", "8", "--width", "8", "--max-steps", "20", "--steps-per-epoch", "10", "--device", "cpu",
                 env=env)
    runs = [r for r in tracking.search_runs("train-gan", max_results=1000) if r.info.run_id not in before]
    assert len(runs) == 1, p.stdout[-2000:]
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.params["world_size"] == "2"
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "finished" and status["step"] == 20 and status["run_id"] == run.info.run_id
    assert sorted(p.name for p in (out / "grids").glob("*.png")) == ["epoch_0001.png", "epoch_0002.png"]
    # resume the 2-process checkpoint in one process: it continues from step 20
    from core.cli import main
    assert main(["train-gan", "--data", str(small_phantom.root), "--out", str(out), "--resolution", "32", "--batch", "8",
                 "--width", "8", "--max-steps", "30", "--steps-per-epoch", "10", "--device", "cpu", "--resume"]) == 0
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "finished" and status["step"] == 30


def test_a_global_batch_that_does_not_split_is_refused():
    from core import distributed

    ctx = distributed.Context(rank=1, world_size=3, backend="gloo")
    assert distributed.local_part(12, ctx) == slice(4, 8)
    with pytest.raises(ValueError, match="batch=8 cannot be split evenly over 3 processes"):
        distributed.local_part(8, ctx)


def test_torchrun_train_classifier_makes_one_mlflow_run(tmp_path, small_phantom):
    from core import tracking

    before = {r.info.run_id for r in tracking.search_runs("classifier", max_results=1000)}
    env = {"MEDAUG_HOME": os.environ["MEDAUG_HOME"], "MLFLOW_TRACKING_URI": tracking.tracking_uri()}
    torchrun("-m", "core", "train-classifier", "--data", str(small_phantom.root), "--out", str(tmp_path / "clf"),
             "--image-size", "32", "--epochs", "2", "--batch-size", "16", "--device", "cpu", "--n-boot", "50", env=env)
    runs = [r for r in tracking.search_runs("classifier", max_results=1000) if r.info.run_id not in before]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED" and runs[0].data.params["world_size"] == "2"
    assert "test_macro_f1" in runs[0].data.metrics
    assert json.loads((tmp_path / "clf" / "status.json").read_text())["epoch"] == 2
