"""core.diffusion: the class-conditional DDPM (MONAI UNet), DDIM with guidance, checkpoints and resume,
generation through core.generators, the synthetic set and DICOM export, and the train-diffusion command."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from core.diffusion.train import DiffusionConfig, DiffusionTrainer, load_checkpoint, train_diffusion

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def tiny(**kw) -> DiffusionConfig:
    base = dict(resolution=32, batch=4, width=8, max_steps=4, grid_every=2, sample_steps=2, grid_size=4,
                device="cpu", log_every=1)
    return DiffusionConfig(**{**base, **kw})


def blobs(n: int = 12, size: int = 32, seed: int = 0) -> np.ndarray:
    """Bright discs on dark ground, one per image at a random place."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        cy, cx = rng.integers(8, size - 8, 2)
        out[i][(yy - cy) ** 2 + (xx - cx) ** 2 < 30] = 220
    return out


COND = dict(conditional=True, classes=("a", "b", "c"))
LABELS = np.arange(12) % 3


def test_config_validation_names_the_field():
    for bad, field in [({"resolution": 48}, "resolution"), ({"width": 12}, "width"), ({"guidance": -1}, "guidance"),
                       ({"sample_steps": 0}, "sample_steps"), ({"cond_drop": 1.0}, "cond_drop"),
                       ({"prediction": "x0"}, "prediction"), ({"max_steps": None}, "max_steps"),
                       ({"conditional": True, "classes": ("a",)}, "conditional"), ({"ema_decay": 1.0}, "ema_decay")]:
        with pytest.raises(ValueError, match=field):
            DiffusionConfig(**bad)


def test_unet_is_monai_with_a_no_class_token_and_levels_down_to_16_px():
    from monai.networks.nets.diffusion_model_unet import DiffusionModelUNet

    from core.diffusion.models import build_unet, channels_for

    assert channels_for(64, 16) == (16, 32, 64) and channels_for(128, 16) == (16, 32, 64, 64)
    assert len(channels_for(256, 8)) == 5
    net = build_unet(32, 8, n_classes=3)
    assert isinstance(net, DiffusionModelUNet)
    assert net.class_embedding.num_embeddings == 4          # 3 classes + the "no class" token of guidance
    out = net(torch.randn(2, 1, 32, 32), torch.tensor([5, 900]), class_labels=torch.tensor([0, 3]))
    assert out.shape == (2, 1, 32, 32)
    assert build_unet(32, 8, n_classes=0).num_class_embeds is None


def test_training_writes_checkpoints_and_grids_and_the_ema_lags_the_weights(tmp_path):
    result = train_diffusion(blobs(), LABELS, tiny(**COND), tmp_path)
    assert result.state == "finished" and result.step == 4 and np.isfinite(result.metrics["loss"])
    assert sorted(p.name for p in (tmp_path / "grids").iterdir()) == ["epoch_0001.png", "epoch_0002.png"]
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["step"] == 4 and state["format"] == "medaug-diffusion-checkpoint/1"
    differs = [not torch.equal(state["model"][k], state["ema"][k]) for k in state["model"]]
    assert any(differs)                       # EMA weights are their own average, not a copy


def test_condition_dropout_replaces_labels_with_the_no_class_token(monkeypatch):
    tr = DiffusionTrainer(blobs(), LABELS, tiny(**COND, cond_drop=0.5, batch=400))
    seen = {}

    def spy(x, t, class_labels=None):
        seen["y"] = class_labels.clone()
        return torch.zeros_like(x, requires_grad=True)
    monkeypatch.setattr(tr, "model", spy)
    monkeypatch.setattr(tr.opt, "step", lambda: None)
    monkeypatch.setattr(tr, "_update_ema", lambda: None)
    tr.train_step()
    share = (seen["y"] == 3).float().mean().item()
    assert 0.4 < share < 0.6 and set(seen["y"].tolist()) <= {0, 1, 2, 3}


class LabelNet(torch.nn.Module):
    """A stand-in UNet whose prediction is ``f(label)`` everywhere: guidance's arithmetic becomes visible."""

    def __init__(self, f):
        super().__init__()
        self.f, self.calls = f, []

    def forward(self, x, t, class_labels=None):
        self.calls.append(class_labels.clone())
        return self.f(class_labels.float()).view(-1, 1, 1, 1).expand_as(x) * 0.1


def test_guidance_is_e_u_plus_w_times_e_c_minus_e_u_with_the_no_class_token():
    from core.diffusion.ddim import ddim_sample

    cfg, dev = tiny(**COND), torch.device("cpu")
    noise, y, w = torch.randn(3, 1, 32, 32), torch.tensor([0, 1, 2]), 3.0
    net = LabelNet(lambda c: c)                          # e_c = c, and e_u = 3 (the no-class token's index)
    guided = ddim_sample(net, cfg, noise, y, 3, w, dev)
    assert all(torch.equal(c, torch.tensor([0, 1, 2, 3, 3, 3])) for c in net.calls)   # one pass of 2B images
    by_hand = LabelNet(lambda c: 3 + w * (c - 3))        # the guided prediction, computed by hand
    assert torch.allclose(ddim_sample(by_hand, cfg, noise, y, 3, 1.0, dev), guided, atol=1e-6)
    assert all(len(c) == 3 for c in by_hand.calls)       # w = 1: a single conditional pass
    plain = ddim_sample(LabelNet(lambda c: c), cfg, noise, y, 3, 1.0, dev)
    assert (plain - guided).abs().max() > 0.01


def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path):
    cfg = tiny(**COND, max_steps=6)
    whole = train_diffusion(blobs(), LABELS, cfg, tmp_path / "whole")
    train_diffusion(blobs(), LABELS, tiny(**COND, max_steps=4), tmp_path / "cut")
    resumed = train_diffusion(blobs(), LABELS, cfg, tmp_path / "cut", resume=True)
    assert resumed.step == whole.step == 6
    a, b = load_checkpoint(tmp_path / "whole" / "checkpoint.pt"), load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    with pytest.raises(ValueError, match="different configuration"):
        train_diffusion(blobs(), LABELS, tiny(**COND, max_steps=8, width=16), tmp_path / "cut", resume=True)


def test_generate_is_deterministic_and_writes_a_synthetic_diffusion_set_with_dicom(tmp_path):
    import pydicom

    from core.data.datasets import load_dataset, verify_dataset
    from core.generators import checkpoint_family, generate_images, open_generator
    from core.synthetic import write_synthetic_set

    run_id = "fedcba9876543210"
    r = train_diffusion(blobs(), LABELS, tiny(**COND), tmp_path / "m", meta={"run_id": run_id})
    assert checkpoint_family(r.checkpoint) == "diffusion"
    gen = open_generator(r.checkpoint)
    assert gen.family == "diffusion" and gen.classes == ("a", "b", "c") and gen.latent_shape == (1, 32, 32)
    one = generate_images(r.checkpoint, 3, "b", seed=5)
    assert one.images.shape == (3, 32, 32) and one.labels == ["b"] * 3 and one.options == {"steps": 2, "guidance": 2.0}
    assert np.array_equal(generate_images(r.checkpoint, 3, "b", seed=5).images, one.images)
    assert not np.array_equal(generate_images(r.checkpoint, 3, "b", seed=6).images, one.images)
    assert not np.array_equal(generate_images(r.checkpoint, 3, "b", seed=5, steps=4).images, one.images)
    with pytest.raises(ValueError, match="not one of this conditional model's classes"):
        generate_images(r.checkpoint, 1, "zzz")
    with pytest.raises(ValueError, match="guidance"):
        generate_images(r.checkpoint, 1, "a", guidance=50)

    ds = write_synthetic_set(r.checkpoint, 4, tmp_path / "syn", class_name="c", seed=3, dicom=True, steps=3,
                             guidance=1.5)
    again = load_dataset(tmp_path / "syn")
    assert again.synthetic and verify_dataset(again) == []
    m = again.manifest
    assert set(m["source"]) == {f"diffusion:{run_id}"} and set(m["split"]) == {"train"}
    assert all(p.startswith("images/synthetic-diffusion-") for p in m["path"])
    record = ds.meta["generator"][0]
    assert record["family"] == "diffusion" and record["steps"] == 3 and record["guidance"] == 1.5
    dcm = pydicom.dcmread(tmp_path / "syn" / "dicom" / f"{m.iloc[0]['image_id']}.dcm")
    assert "diffusion" in dcm.DerivationDescription and run_id in dcm.DerivationDescription
    assert "steps 3" in dcm.DerivationDescription and "guidance 1.5" in dcm.DerivationDescription
    assert list(dcm.ImageType) == ["DERIVED", "SECONDARY"] and dcm.ConversionType == "SYN"


def test_a_foreign_or_damaged_checkpoint_gets_a_clear_error(tmp_path):
    from core.checkpoints import CheckpointError
    from core.generators import open_generator

    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        open_generator(bad)
    torch.save({"format": "something-else/1"}, bad)
    with pytest.raises(CheckpointError, match="not a MedAug generator checkpoint"):
        open_generator(bad)
    torch.save({"format": "medaug-diffusion-checkpoint/1", "config": {}}, bad)
    with pytest.raises(CheckpointError, match="lacks"):
        open_generator(bad)


def test_cli_train_diffusion_then_generate_on_the_phantom(small_phantom, tmp_path):
    from core import tracking

    out = tmp_path / "run"
    args = [sys.executable, "-m", "core", "train-diffusion", "--data", str(small_phantom.root), "--conditional",
            "--resolution", "32", "--batch", "4", "--width", "8", "--max-steps", "4", "--grid-every", "2",
            "--sample-steps", "2", "--device", "cpu", "--threads", "1", "--out", str(out)]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.splitlines()[-1])
    assert summary["ok"] and summary["state"] == "finished" and summary["steps"] == 4
    status = json.loads((out / "status.json").read_text())
    assert status["kind"] == "train-diffusion" and status["state"] == "finished" and status["grid"]
    run = tracking.client().get_run(summary["run_id"])
    assert run.data.tags["medaug.kind"] == "train-diffusion" and run.data.tags["medaug.generator.family"] == "diffusion"
    gen = subprocess.run([sys.executable, "-m", "core", "generate", "--checkpoint", str(out), "--n", "3", "--steps", "2",
                          "--out", str(tmp_path / "syn")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert gen.returncode == 0, gen.stderr[-2000:]
    g = json.loads(gen.stdout.splitlines()[-1])
    assert g["source"] == f"diffusion:{summary['run_id']}" and g["images"] == 3


def test_submit_refuses_a_bad_diffusion_job_before_queueing(small_phantom, tmp_path):
    from core import jobs

    base = {"data": str(small_phantom.root), "out": str(tmp_path / "o"), "conditional": True}
    for bad, words in [({"width": 10}, "width"), ({"class": "Nope", "conditional": False}, "--class"),
                       ({"conditional": False}, "--conditional"), ({"guidance": 99}, "guidance")]:
        with pytest.raises(ValueError, match=words):
            jobs.validate("train-diffusion", {**base, **bad})
    jobs.validate("train-diffusion", {**base, "resolution": 32, "max_steps": 2})


def test_a_study_with_the_diffusion_set_trains_it_once_measures_it_and_reports_its_row(small_phantom, tmp_path,
                                                                                         monkeypatch):
    """The diffusion set goes through the study like a GAN set: one model (a child run) for the cells, its
    images as `diffusion:` rows of a synthetic folder, a measured quality.json beside it, gen_* columns."""
    from core.study.grid import StudyConfig
    from core.study.run import run_study
    from core.study.sets import gan_dir, load_splits

    monkeypatch.setattr("core.quality.fidelity.FINAL_MAX_REAL", 64)
    config = StudyConfig(sets=("real", "diffusion", "tstr-diffusion"), networks=("small_cnn",), seeds=(0,),
                         image_size=16, epochs=1, batch_size=64, n_boot=50, precision="fp32", gan_resolution=32,
                         diffusion_steps=3, diffusion_width=8, diffusion_batch=8, diffusion_sample_steps=2,
                         diffusion_quality_real=32, gan_cap=0.25, device="cpu")
    run_study(small_phantom.root, config, tmp_path / "study", log=lambda m: None)
    folder = gan_dir(tmp_path / "study" / "gans", config, "diffusion", load_splits(small_phantom, 16))
    done = json.loads((folder / "done.json").read_text())
    assert Path(done["checkpoint"]).is_file() and done["run_id"]
    quality = json.loads((folder / "quality.json").read_text())
    assert quality["n_real"] == 32 and 0 <= quality["precision"] <= 1 and isinstance(quality["usable"], bool)
    from core.data.datasets import load_dataset

    synthetic = [load_dataset(p.parent) for p in folder.glob("synthetic-*/dataset.json")]
    assert synthetic and all(s.manifest["source"].str.startswith("diffusion:").all() for s in synthetic)
    import pandas as pd

    from core.study.run import RESULTS_FILE

    rows = pd.read_csv(tmp_path / "study" / RESULTS_FILE)
    assert {"diffusion", "tstr-diffusion"} <= set(rows["set"])
    row = rows[rows["set"] == "diffusion"].iloc[0]
    assert row["gen_precision"] == pytest.approx(quality["precision"]) and row["gen_usable"] == quality["usable"]


def test_quality_says_in_words_when_a_diffusion_set_copies_training_images(tmp_path):
    """The memorization audit flags a planted copy; for a diffusion set the report row says so in a sentence
    naming the class and its real count, for a GAN set it stays a number; the family comes from dataset.json."""
    import pandas as pd

    from core.data.datasets import write_dataset
    from core.quality import memorization
    from core.quality.evaluate import SyntheticSet, copying_warning, load_source

    rng = np.random.default_rng(0)
    train = rng.normal(size=(40, 16))
    labels = np.array(["Vertebral collapse"] * 6 + ["No finding"] * 34)
    synthetic = np.vstack([train[2] + 1e-4, rng.normal(size=(5, 16)) * 3])   # one near-copy of a VC image
    syn_labels = np.array(["Vertebral collapse"] * 6)
    mem, summary = memorization.audit(train, labels, synthetic, syn_labels)
    assert summary["flagged"] == 1 and bool(mem["flagged"].iloc[0])
    s = SyntheticSet("ddpm conditional", "x", np.zeros((6, 8, 8), np.uint8), syn_labels, [str(i) for i in range(6)],
                     {"family": "diffusion"})
    text = copying_warning(s, mem, labels)
    assert "nearly copies training images" in text and "Vertebral collapse 1 of 6 (from 6 real training" in text
    assert copying_warning(SyntheticSet("dcgan", "x", s.images, syn_labels, s.ids, {"family": "gan"}), mem, labels) == ""
    clean = mem.assign(flagged=False)
    assert copying_warning(s, clean, labels) == ""

    from PIL import Image
    (tmp_path / "syn" / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "syn" / "images" / "a.png")
    row = {"image_id": "a", "path": "images/a.png", "split": "train", "label": "x", "labels": ["x"], "boxes": [],
           "study_id": "a", "source": "diffusion:r1", "width": 8, "height": 8, "sha256": "0"}
    write_dataset(tmp_path / "syn", pd.DataFrame([row]), {"name": "s", "kind": "synthetic", "synthetic": True,
                                                          "generator": [{"family": "diffusion", "run_id": "r1",
                                                                         "variant": "ddpm"}]})
    assert load_source(str(tmp_path / "syn"), 8, 1, 0).info["family"] == "diffusion"
