"""core.gan: networks, variants table, the one loop's correctness pitfalls, checkpoints and
resume, divergence, sampling into a synthetic set, the CLI, and the torch-only boundary.

Everything is tiny (32 px, width 4-8, a few steps) so the file runs in seconds on 2 cores."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from core.checkpoints import CheckpointError
from core.gan.diffaug import cutout, diff_augment, translate
from core.gan.models import Discriminator, Generator, channel_multipliers
from core.gan.train import (CHECKPOINT_FILE, GanConfig, GanTrainer, load_checkpoint,
                            train_gan)
from core.gan.variants import VARIANTS, Variant, gradient_penalty, wasserstein_loss

ROOT = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tiny tensors (tests/conftest.py)


def tiny(**kw) -> GanConfig:
    base = dict(resolution=32, batch=8, width=8, nz=16, max_steps=6, steps_per_epoch=3, log_every=1,
                grid_size=9, device="cpu", precision="fp32")
    return GanConfig(**{**base, **kw})


def blobs(n: int = 24, size: int = 32, seed: int = 0) -> np.ndarray:
    """uint8 images with a bright disc at a random place: something to learn, made here."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        cy, cx, r = rng.integers(8, size - 8), rng.integers(8, size - 8), rng.integers(3, 7)
        out[i][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 200
    return out


# --- networks ----------------------------------------------------------------------------

@pytest.mark.parametrize("resolution", [32, 64, 128, 256])
def test_networks_output_shapes_and_grow_with_resolution(resolution):
    G, D = Generator(nz=8, resolution=resolution, width=4), Discriminator(resolution, width=4)
    x = G(torch.randn(2, 8))
    assert x.shape == (2, 1, resolution, resolution) and x.min() >= -1 and x.max() <= 1
    assert D(x).shape == (2,)
    ups = [m for m in G.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    downs = [m for m in D.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(ups) == len(downs) == int(math.log2(resolution)) - 1   # one stride-2 stage per doubling
    assert all(m.stride == (2, 2) for m in ups[1:]) and all(m.stride == (2, 2) for m in downs[:-1])
    banned = (torch.nn.Linear, torch.nn.MaxPool2d, torch.nn.AvgPool2d, torch.nn.AdaptiveAvgPool2d)
    assert not any(isinstance(m, banned) for m in [*G.modules(), *D.modules()])
    assert max(channel_multipliers(resolution)) <= 8


def test_dcgan_layers_init_and_conditioning():
    G, D = Generator(nz=8, resolution=64, width=16), Discriminator(64, width=16)
    acts_g = {type(m) for m in G.modules()}
    acts_d = [m for m in D.modules() if isinstance(m, torch.nn.LeakyReLU)]
    assert torch.nn.ReLU in acts_g and torch.nn.Tanh in acts_g and torch.nn.BatchNorm2d in acts_g
    assert acts_d and all(m.negative_slope == 0.2 for m in acts_d)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in D.modules())
    w = torch.cat([m.weight.flatten() for m in G.modules() if isinstance(m, torch.nn.ConvTranspose2d)])
    assert abs(w.std().item() - 0.02) < 0.002 and abs(w.mean().item()) < 0.002
    critic = Discriminator(64, width=16, norm="none")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in critic.modules())

    Gc, Dc = Generator(nz=8, resolution=32, width=4, n_classes=3), Discriminator(32, width=4, n_classes=3)
    y = torch.tensor([0, 1, 2])
    z = torch.randn(1, 8).repeat(3, 1)
    imgs = Gc(z, y)
    assert imgs.shape == (3, 1, 32, 32) and not torch.allclose(imgs[0], imgs[1])   # the label changes the image
    same = Dc(imgs[:1].repeat(3, 1, 1, 1), y)
    assert same.shape == (3,) and not torch.allclose(same[0], same[1])              # projection: score depends on y
    with pytest.raises(ValueError, match="labels"):
        Gc(z)


# --- variants table and the loop's pitfalls ------------------------------------------------

def test_wgan_generator_loss_sign_is_minus_mean_critic_of_fakes():
    scores = torch.tensor([0.5, -1.0, 2.0])
    assert VARIANTS["wgan"].loss(scores, True).item() == pytest.approx(-scores.mean().item())
    assert VARIANTS["wgan"].loss(scores, False).item() == pytest.approx(scores.mean().item())
    assert VARIANTS["wgan-gp"].loss is wasserstein_loss

    # behaviour: one generator update with the critic fixed must RAISE the critic's score of the fakes
    trainer = GanTrainer(blobs(), None, tiny(variant="wgan", lr=1e-5))   # small: a first-order step
    z, _ = trainer.sample_noise()
    with torch.no_grad():
        before = trainer.D(trainer.G(z)).mean().item()
    loss_g, _ = trainer.generator_update(trainer.G(z), None)
    with torch.no_grad():
        fake = trainer.G(z)
        after = trainer.D(fake).mean().item()
    assert after > before
    assert loss_g.item() == pytest.approx(-before, abs=1e-6)


def test_clipping_applies_after_every_critic_step():
    trainer = GanTrainer(blobs(), None, tiny(variant="wgan"))
    c = VARIANTS["wgan"].clip
    assert max(p.abs().max().item() for p in trainer.D.parameters()) > c   # N(0, 0.02) init exceeds c
    updates, seen = [0], []
    trainer.opt_d.register_step_post_hook(lambda opt, args, kwargs: updates.__setitem__(0, updates[0] + 1))
    trainer.D.register_forward_pre_hook(
        lambda mod, args: seen.append((updates[0], max(p.abs().max().item() for p in mod.parameters()))))
    trainer.train_step()
    trainer.train_step()
    assert updates[0] == 2 * VARIANTS["wgan"].n_critic
    after_first = [m for n, m in seen if n >= 1]
    # every D call after the first critic update (later critic updates AND the generator step) sees clipped weights
    assert len(after_first) >= 2 * (2 * 5 - 1) and max(after_first) <= c + 1e-9


def test_gradient_penalty_uses_interpolates_and_reaches_critic_weights():
    # with D(x) = |x|^2 / 2 the gradient at x is x, so the penalty is known on every interpolate
    real, fake = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    eps = torch.tensor([0.0, 0.25, 0.5, 1.0])
    gp = gradient_penalty(lambda x: 0.5 * (x ** 2).sum((1, 2, 3)), real, fake, eps=eps)
    x_hat = eps.view(4, 1, 1, 1) * real + (1 - eps.view(4, 1, 1, 1)) * fake
    assert gp.item() == pytest.approx(((x_hat.flatten(1).norm(dim=1) - 1) ** 2).mean().item(), rel=1e-5)

    torch.manual_seed(0)
    critic = Discriminator(32, width=4, norm="none")
    gp = gradient_penalty(critic, torch.rand(4, 1, 32, 32) * 2 - 1, torch.rand(4, 1, 32, 32) * 2 - 1)
    assert gp.requires_grad   # create_graph=True: the penalty is differentiable w.r.t. the weights
    gp.backward()
    grads = [p.grad for p in critic.parameters() if p.dim() > 1]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def count_optimizer_steps(trainer):
    counts = {"d": 0, "g": 0}
    trainer.opt_d.register_step_post_hook(lambda *a: counts.__setitem__("d", counts["d"] + 1))
    trainer.opt_g.register_step_post_hook(lambda *a: counts.__setitem__("g", counts["g"] + 1))
    return counts


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_variant_entry_configures_the_loop(name):
    v = VARIANTS[name]
    trainer = GanTrainer(blobs(), None, tiny(variant=name))
    counts = count_optimizer_steps(trainer)
    trainer.train_step()
    assert counts == {"d": v.n_critic, "g": 1}
    kind = torch.optim.Adam if v.optimizer == "adam" else torch.optim.RMSprop
    assert isinstance(trainer.opt_d, kind) and isinstance(trainer.opt_g, kind)
    group = trainer.opt_d.param_groups[0]
    assert group["lr"] == v.lr and (v.optimizer != "adam" or tuple(group["betas"]) == v.betas)
    has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in trainer.D.modules())
    assert has_bn == (v.critic_norm == "batch")
    stats = trainer.read_stats()
    assert ("wasserstein" in stats) == (not v.sigmoid) and ("gp" in stats) == (v.gp_lambda is not None)
    assert all(math.isfinite(x) for x in stats.values())


def test_papers_settings_are_in_the_table():
    assert (VARIANTS["dcgan"].lr, VARIANTS["dcgan"].betas) == (2e-4, (0.5, 0.999))
    w = VARIANTS["wgan"]
    assert (w.optimizer, w.lr, w.clip, w.n_critic, w.default_batch) == ("rmsprop", 5e-5, 0.01, 5, 64)
    gp = VARIANTS["wgan-gp"]
    assert (gp.optimizer, gp.lr, gp.betas, gp.gp_lambda, gp.n_critic, gp.critic_norm) == \
        ("adam", 1e-4, (0.0, 0.9), 10.0, 5, "none")


def test_a_new_variant_is_one_loss_and_one_entry(monkeypatch):
    calls = []

    def least_squares(scores, as_real):   # LSGAN
        calls.append(as_real)
        return ((scores - (1.0 if as_real else 0.0)) ** 2).mean()

    monkeypatch.setitem(VARIANTS, "lsgan", Variant("lsgan", least_squares, n_critic=2, optimizer="adam", lr=1e-3,
                                                   betas=(0.5, 0.9)))
    trainer = GanTrainer(blobs(), None, tiny(variant="lsgan"))
    counts = count_optimizer_steps(trainer)
    trainer.train_step()
    assert counts == {"d": 2, "g": 1}
    assert calls == [True, False, True, False, True]   # 2 critic updates (real, fake), then G (fakes as real)
    assert trainer.opt_g.param_groups[0]["lr"] == 1e-3


# --- DiffAugment ---------------------------------------------------------------------------

def test_diffaugment_translation_and_cutout():
    torch.manual_seed(0)
    x = -torch.ones(16, 1, 32, 32)
    x[:, :, 16, 16] = 1.0
    moved = translate(x)
    ys, xs = torch.nonzero(moved[:, 0] > 0, as_tuple=True)[1:]
    assert len(ys) == 16 and (ys - 16).abs().max() <= 4 and (xs - 16).abs().max() <= 4   # 1/8 of 32
    assert (ys != 16).any() or (xs != 16).any()

    ones = torch.ones(16, 1, 32, 32)
    holes = (cutout(ones) == -1).flatten(1).sum(1)
    assert (holes > 0).all() and (holes <= 16 * 16).all() and (holes == 256).any()

    fake = torch.rand(4, 1, 32, 32, requires_grad=True)
    diff_augment(fake).sum().backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0   # differentiable, so G learns through it
    torch.manual_seed(3)
    a = diff_augment(ones)
    torch.manual_seed(3)
    assert torch.equal(a, diff_augment(ones))


# --- the loop: checkpoints, resume, divergence -------------------------------------------

def state_of(path: Path) -> dict:
    return load_checkpoint(path)


@pytest.mark.parametrize("kw", [dict(variant="dcgan", diffaug=True, conditional=True, classes=("a", "b", "c")),
                                dict(variant="wgan"), dict(variant="wgan-gp", precision="bf16")],
                         ids=["dcgan-cond-diffaug", "wgan", "wgan-gp-bf16"])
def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path, kw):
    images, labels = blobs(30), np.arange(30) % 3
    cfg = tiny(epochs=3, max_steps=None, **kw)   # 3 epochs of 3 steps
    full = train_gan(images, labels, cfg, tmp_path / "full")
    assert full.state == "finished" and full.step == 9 and full.epoch == 3

    class Killed(Exception):
        pass

    def kill_mid_epoch_3(step, metrics):
        if step == 8:
            raise Killed   # as if the process died: epoch 3's first two steps are lost
    with pytest.raises(Killed):
        train_gan(images, labels, cfg, tmp_path / "cut", on_step=kill_mid_epoch_3)
    assert state_of(tmp_path / "cut" / CHECKPOINT_FILE)["step"] == 6
    resumed = train_gan(images, labels, cfg, tmp_path / "cut", resume=True)
    assert resumed.state == "finished" and resumed.step == 9 and resumed.epoch == 3

    a, b = state_of(tmp_path / "full" / CHECKPOINT_FILE), state_of(tmp_path / "cut" / CHECKPOINT_FILE)
    for part in ("generator", "discriminator"):
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs after resume"
    for part in ("opt_g", "opt_d"):
        for i, s in a[part]["state"].items():
            for key, value in s.items():
                assert torch.equal(value, b[part]["state"][i][key]), f"{part} state {i}.{key} differs"
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert sorted(p.name for p in (tmp_path / "cut" / "grids").iterdir()) == \
        ["epoch_0001.png", "epoch_0002.png", "epoch_0003.png"]


def test_resume_refuses_other_settings_or_data(tmp_path):
    train_gan(blobs(), None, tiny(max_steps=3), tmp_path)
    with pytest.raises(CheckpointError, match=r"width: 8 -> 16"):
        train_gan(blobs(), None, tiny(max_steps=6, width=16), tmp_path, resume=True)
    with pytest.raises(CheckpointError, match="training images differ"):
        train_gan(blobs(seed=1), None, tiny(max_steps=6), tmp_path, resume=True)
    more = train_gan(blobs(), None, tiny(max_steps=6), tmp_path, resume=True)   # a longer run is fine
    assert more.step == 6


def test_corrupt_or_foreign_checkpoint_gives_a_clear_error(tmp_path):
    train_gan(blobs(), None, tiny(max_steps=3), tmp_path / "ok")
    good = (tmp_path / "ok" / CHECKPOINT_FILE).read_bytes()
    truncated = tmp_path / "truncated" / CHECKPOINT_FILE
    truncated.parent.mkdir()
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match=r"truncated.*corrupt or truncated.*Delete it"):
        load_checkpoint(truncated)
    with pytest.raises(CheckpointError, match="corrupt"):   # the trainer reports it the same way
        train_gan(blobs(), None, tiny(max_steps=6), truncated.parent, resume=True)

    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="not a MedAug GAN checkpoint"):
        load_checkpoint(foreign)

    class Payload:   # a pickle that would run code: weights_only=True refuses it
        def __reduce__(self):
            return (print, ("pwned",))
    evil = tmp_path / "evil.pt"
    torch.save({"format": "medaug-gan-checkpoint/1", "x": Payload()}, evil)
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(evil)


def test_divergence_stops_with_a_clear_status(tmp_path, monkeypatch):
    calls = [0]

    def goes_nan(scores, as_real):
        calls[0] += 1
        loss = wasserstein_loss(scores, as_real)
        return loss * float("nan") if calls[0] > 15 else loss   # fine for the first epoch, then NaN

    monkeypatch.setitem(VARIANTS, "unstable", Variant("unstable", goes_nan, n_critic=1, optimizer="adam", lr=1e-4))
    result = train_gan(blobs(), None, tiny(variant="unstable", max_steps=30), tmp_path)
    assert result.state == "diverged" and "nan" in result.message and "step" in result.message
    assert 3 <= result.step < 30
    last = load_checkpoint(result.checkpoint)   # the last good checkpoint, with finite weights
    assert last["step"] == 3 and all(torch.isfinite(t).all() for t in last["generator"].values() if t.is_floating_point())

    runaway = train_gan(blobs(), None, tiny(max_abs_loss=1e-3), tmp_path / "runaway")
    assert runaway.state == "diverged" and "exceeds max_abs_loss" in runaway.message and runaway.step == 1
    assert runaway.checkpoint is None


def test_a_time_budget_stops_training_and_saves_the_last_epoch(tmp_path):
    result = train_gan(blobs(), None, tiny(epochs=None, max_steps=None, max_seconds=1.0, steps_per_epoch=1000),
                       tmp_path)
    assert result.state == "finished" and "time budget" in result.message and 1.0 <= result.seconds < 5
    assert result.epoch == 1 and load_checkpoint(result.checkpoint)["step"] == result.step > 0
    assert (tmp_path / "grids" / "epoch_0001.png").is_file()


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="variant='gan'"):
        GanConfig(variant="gan")
    with pytest.raises(ValueError, match="resolution=100"):
        GanConfig(resolution=100)
    with pytest.raises(ValueError, match="are all unset"):
        GanConfig(epochs=None)
    with pytest.raises(ValueError, match="conditional=True needs at least 2"):
        GanConfig(conditional=True, classes=("a",))
    with pytest.raises(ValueError, match="unknown GAN config field"):
        GanConfig.from_dict({"variant": "dcgan", "learning_rate": 1})
    cfg = GanConfig(conditional=True, classes=("a", "b"))
    assert GanConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


# --- sampling into a synthetic set --------------------------------------------------------

def test_generate_writes_a_valid_synthetic_dataset_with_dicom(tmp_path):
    import pydicom
    from PIL import Image

    from core.data.datasets import load_dataset, verify_dataset
    from core.generators import generate_images
    from core.synthetic import write_synthetic_set

    run_id = "0123456789abcdef"
    per_class = train_gan(blobs(), None, tiny(class_name="Vertebral collapse"), tmp_path / "pc",
                          meta={"run_id": run_id})
    ds = write_synthetic_set(per_class.checkpoint, 5, tmp_path / "syn", seed=7, dicom=True)
    again = load_dataset(tmp_path / "syn")
    assert again.synthetic and len(again.manifest) == 5 and verify_dataset(again) == []
    m = again.manifest
    assert set(m["source"]) == {f"gan:{run_id}"} and set(m["split"]) == {"train"}
    assert set(m["label"]) == {"Vertebral collapse"}
    assert all(p.startswith("images/synthetic-gan-") and "-s7-" in p for p in m["path"])
    assert ds.meta["generator"][0]["seed"] == 7 and ds.meta["generator"][0]["run_id"] == run_id
    png = np.asarray(Image.open(again.path_of(m.iloc[0])))
    assert png.shape == (32, 32) and png.dtype == np.uint8

    dcm = pydicom.dcmread(tmp_path / "syn" / "dicom" / f"{m.iloc[0]['image_id']}.dcm")
    assert list(dcm.ImageType) == ["DERIVED", "SECONDARY"] and dcm.ConversionType == "SYN"
    assert run_id in dcm.DerivationDescription and "dcgan" in dcm.DerivationDescription
    assert dcm.PatientIdentityRemoved == "YES" and "SYNTHETIC" in str(dcm.PatientName)
    assert np.array_equal(dcm.pixel_array, png)

    same = generate_images(per_class.checkpoint, 5, seed=7)
    assert np.array_equal(same.images[0], png)   # same checkpoint + seed, same images
    with pytest.raises(ValueError, match="trained on class 'Vertebral collapse' only"):
        generate_images(per_class.checkpoint, 2, class_name="No finding")
    with pytest.raises(ValueError, match="already exists"):
        write_synthetic_set(per_class.checkpoint, 2, tmp_path / "syn")

    cond = train_gan(blobs(), np.arange(24) % 3, tiny(conditional=True, classes=("a", "b", "c")), tmp_path / "cond")
    grown = write_synthetic_set(cond.checkpoint, 4, tmp_path / "syn", class_name="b", append=True)
    assert len(grown.manifest) == 9 and grown.class_counts()["b"] == 4 and len(grown.meta["generator"]) == 2
    assert set(generate_images(cond.checkpoint, 6).labels) == {"a", "b", "c"}


# --- the CLI ----------------------------------------------------------------------------

def test_cli_train_gan_and_generate_on_the_phantom(small_phantom, tmp_path, capsys):
    from core.cli import main
    from core.tracking import client

    out = tmp_path / "job"
    args = ["train-gan", "--data", str(small_phantom.root), "--variant", "dcgan", "--resolution", "32",
            "--batch", "8", "--width", "8", "--nz", "16", "--class", "No finding", "--max-steps", "4",
            "--steps-per-epoch", "2", "--log-every", "2", "--device", "cpu", "--out", str(out)]
    assert main(args) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["ok"] and summary["steps"] == 4 and summary["img_per_s"] > 0
    from core.device import precision_line

    ran = precision_line(torch.device("cpu"), "auto")   # what auto chose on this machine, and why
    assert ran.startswith(("fp32 (precision auto: ", "bf16 autocast (precision auto: ")) and "native bf16" in ran
    assert ran in captured.out + captured.err
    assert Path(summary["checkpoint"]).is_file() and summary["checkpoint"] == str(out / CHECKPOINT_FILE)
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "finished" and status["step"] == 4 and status["run_id"] == summary["run_id"]
    assert status["epoch"] == 2 and Path(status["grid"]).is_file() and status["losses"]["loss_d"] > 0

    c = client()
    runs = c.search_runs([r.info.experiment_id for r in [c.get_run(summary["run_id"])]],
                         filter_string=f"tags.`medaug.out` = '{out}'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.params["variant"] == "dcgan"
    assert run.data.tags["medaug.dataset_hash"] == small_phantom.content_hash
    assert run.data.tags["medaug.precision"] == ran
    assert sorted(m.step for m in c.get_metric_history(run.info.run_id, "loss_d")) == [2, 4]
    assert {f.path for f in c.list_artifacts(run.info.run_id, "grids")} == {"grids/epoch_0001.png", "grids/epoch_0002.png"}
    ckpt = load_checkpoint(out / CHECKPOINT_FILE)
    assert ckpt["meta"]["run_id"] == summary["run_id"] and ckpt["config"]["class_name"] == "No finding"

    # a job file with the same fields; a diverging run says so in its status and fails
    job = tmp_path / "job2.json"
    job.write_text(json.dumps({"data": str(small_phantom.root), "out": str(tmp_path / "job2"), "variant": "wgan",
                               "resolution": 32, "batch": 8, "width": 8, "nz": 16, "class": "No finding",
                               "max_steps": 2, "max_abs_loss": 1e-9, "device": "cpu"}))
    assert main(["train-gan", "--config", str(job)]) == 2
    failed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert not failed["ok"] and "diverged" in failed["error"]
    status2 = json.loads((tmp_path / "job2" / "status.json").read_text())
    assert status2["state"] == "diverged" and "max_abs_loss" in status2["message"]
    assert c.get_run(status2["run_id"]).info.status == "FAILED"

    assert main(["generate", "--checkpoint", summary["checkpoint"], "--n", "3", "--out", str(tmp_path / "syn")]) == 0
    gen = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert gen["ok"] and gen["source"] == f"gan:{summary['run_id']}" and gen["classes"] == {"No finding": 3}


def test_cli_sigterm_cancels_with_status_and_a_killed_run(small_phantom, tmp_path):
    import os
    import signal
    import time

    from core.tracking import client

    out = tmp_path / "job"
    proc = subprocess.Popen([sys.executable, "-m", "core", "train-gan", "--data", str(small_phantom.root),
                             "--resolution", "32", "--batch", "8", "--width", "8", "--nz", "16", "--class",
                             "No finding", "--max-steps", "100000", "--log-every", "1", "--threads", "1",
                             "--device", "cpu", "--out", str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ})
    deadline = time.monotonic() + 90
    status = {}
    while time.monotonic() < deadline and not (status.get("state") == "running" and status.get("step", 0) > 0):
        time.sleep(0.2)
        try:
            status = json.loads((out / "status.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            pass
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2, stdout
    assert "cancelled" in json.loads(stdout.strip().splitlines()[-1])["error"]
    final = json.loads((out / "status.json").read_text())
    assert final["state"] == "cancelled" and final["step"] > 0
    assert client().get_run(final["run_id"]).info.status == "KILLED"


def test_cli_rejects_unknown_class(small_phantom, tmp_path, capsys):
    from core.cli import main

    assert main(["train-gan", "--data", str(small_phantom.root), "--class", "Fractures", "--max-steps", "1",
                 "--out", str(tmp_path)]) == 2
    err = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["error"]
    assert "Fractures" in err and "No finding" in err


# --- the boundary: torch, torchvision, numpy and pillow only ----------------------------

def test_core_gan_trains_and_samples_without_pandas_mlflow_streamlit(tmp_path):
    code = f"""
import sys
for banned in ("pandas", "mlflow", "streamlit", "scipy", "sklearn"):
    sys.modules[banned] = None   # any import of them now fails, as on a bare GPU box
import numpy as np, torch
torch.set_num_threads(1)
import core.gan, core.gan.models, core.gan.variants, core.gan.diffaug, core.gan.train, core.gan.sample, core.gan.commands
from core.gan.train import GanConfig, train_gan
from core.generators import generate_images
cfg = GanConfig(resolution=32, batch=4, width=4, nz=8, max_steps=2, steps_per_epoch=1, device="cpu",
                class_name="x", grid_size=4)
r = train_gan((np.random.rand(8, 32, 32) * 255).astype(np.uint8), None, cfg, {str(tmp_path)!r})
g = generate_images(r.checkpoint, 3)
print(r.state, g.images.shape, sorted(k for k in ("pandas", "mlflow", "streamlit") if sys.modules.get(k)))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "finished (3, 32, 32) []"
