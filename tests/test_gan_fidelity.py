"""Generators trained to a measured quality: the fidelity check inside train_gan (best.pt, plateau
stop, resume), the final quality of the chosen checkpoint (quality.json, the usable floor), and the
train-gan CLI logging it all (MLflow curve, gen_* metrics, status.json). Tiny sizes: 32 px, width 8."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from core.gan.train import BEST_FILE, CHECKPOINT_FILE, GanConfig, GanTrainer, load_checkpoint, train_gan

pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tiny tensors (tests/conftest.py)


def tiny(**kw) -> GanConfig:
    base = dict(resolution=32, batch=8, width=8, nz=16, epochs=None, max_steps=24, steps_per_epoch=4, log_every=2,
                grid_size=4, device="cpu", precision="fp32", conditional=True, classes=("a", "b", "c"))
    return GanConfig(**{**base, **kw})


def images_and_labels(n: int = 24):
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (n, 32, 32), dtype=np.uint8), np.arange(n) % 3


def scripted(kids):
    """A fake fidelity_fn returning KIDs in order; it also checks what the sampler gives it."""
    calls = []

    def check(sample):
        x = sample(3, label=1)
        assert x.dtype == np.uint8 and x.shape == (3, 32, 32)
        calls.append(len(calls))
        return {"kid": kids[len(calls) - 1], "kid/a": 0.0}
    return check, calls


def test_best_checkpoint_is_the_lowest_kid_and_a_plateau_stops(tmp_path):
    images, labels = images_and_labels()
    kids = [5.0, 3.0, 4.0, 2.0, 6.0, 7.0, 8.0, 9.0]
    check, calls = scripted(kids)
    seen = []
    cfg = tiny(fidelity_every=2, fidelity_patience=3)
    result = train_gan(images, labels, cfg, tmp_path, fidelity_fn=check, on_fidelity=lambda s, r: seen.append((s, r)))
    # checks at steps 2, 4, ..., 14: best at step 8 (KID 2), then 3 checks without improvement
    assert result.state == "finished" and "not improved for 3 checks" in result.message
    assert result.step == 14 and len(calls) == 7
    assert result.best_checkpoint == tmp_path / BEST_FILE
    best = load_checkpoint(tmp_path / BEST_FILE)
    assert best["step"] == 8 and best["fidelity"]["best_kid"] == 2.0
    assert [s for s, _ in seen] == [2, 4, 6, 8, 10, 12, 14]
    assert [r["improved"] for _, r in seen] == [True, True, False, True, False, False, False]
    last = load_checkpoint(tmp_path / CHECKPOINT_FILE)   # saved where it stopped, so --resume starts there
    assert last["step"] == 14 and last["fidelity"]["checks"] == 7 and last["fidelity"]["best_step"] == 8
    assert result.fidelity["curve"] == [[2 * (i + 1), k] for i, k in enumerate(kids[:7])]
    # best.pt is a checkpoint like any other: generate() samples it
    from core.generators import generate_images, generator_checkpoint
    assert generator_checkpoint(tmp_path) == tmp_path / BEST_FILE
    assert generator_checkpoint(tmp_path / CHECKPOINT_FILE) == tmp_path / BEST_FILE
    assert generate_images(tmp_path / BEST_FILE, 2, "b").step == 8


def test_resume_keeps_the_best_kid_and_the_count_of_checks(tmp_path):
    images, labels = images_and_labels()
    kids = [5.0, 3.0, 4.0, 6.0, 1.0, 7.0]
    cfg = tiny(max_steps=12, fidelity_every=2)

    class Killed(Exception):
        pass

    check, _ = scripted(kids)

    def kill_at_10(step, metrics):
        if step == 10:
            raise Killed
    with pytest.raises(Killed):   # checkpoint.pt at step 8 holds the checks of steps 2..8
        train_gan(images, labels, cfg, tmp_path, fidelity_fn=check, on_step=kill_at_10)
    state = load_checkpoint(tmp_path / CHECKPOINT_FILE)
    assert state["step"] == 8 and state["fidelity"]["checks"] == 4 and state["fidelity"]["best_kid"] == 3.0
    rest, _ = scripted(kids[4:])    # the resumed run continues with the checks of steps 10 and 12
    result = train_gan(images, labels, cfg, tmp_path, fidelity_fn=rest, resume=True)
    assert result.fidelity["checks"] == 6 and result.fidelity["best_step"] == 10 and result.fidelity["best_kid"] == 1.0
    assert load_checkpoint(tmp_path / BEST_FILE)["step"] == 10
    # a fresh (not resumed) run into the folder drops the old best.pt before its first check
    train_gan(images, labels, tiny(max_steps=2), tmp_path)
    assert not (tmp_path / BEST_FILE).exists()


def test_fidelity_settings_are_validated():
    with pytest.raises(ValueError, match="fidelity_patience needs fidelity_every"):
        tiny(fidelity_patience=3)
    with pytest.raises(ValueError, match="fidelity_every=0"):
        tiny(fidelity_every=0)
    from core.study.grid import StudyConfig
    with pytest.raises(ValueError, match="gan_max_seconds=0"):
        StudyConfig(gan_max_seconds=0)
    with pytest.raises(ValueError, match="gan_fidelity_patience needs gan_fidelity_every"):
        StudyConfig(gan_fidelity_every=None, gan_fidelity_patience=2)


def test_a_noise_blob_generator_is_marked_unusable_with_complete_quality(small_phantom, tmp_path):
    from core.generator_job import training_images
    from core.quality import fidelity

    images, labels, classes = training_images(small_phantom, 32, None, True)
    ref = fidelity.dataset_reference(small_phantom, classes)
    trainer = GanTrainer(images, labels, tiny(classes=classes))   # untrained: noise-like blobs
    check = fidelity.fidelity_fn(ref, True, n_per_class=16)(trainer.sample_uint8)
    assert check["kid"] > 0 and any(k.startswith("kid/") for k in check)
    q = fidelity.final_quality(ref, lambda n, i: trainer.sample_uint8(int(n), i, seed=1), True, best_step=0, checks=1)
    assert set(fidelity.QUALITY_KEYS) <= set(q)
    assert q["usable"] is False and "below the floor" in q["reason"] and q["precision"] < fidelity.PRECISION_FLOOR
    for name in ("kid", "fid", "precision", "recall"):
        assert q[f"{name}_lo"] <= q[name] <= q[f"{name}_hi"], name
    assert q["n_real"] == q["n_synthetic"] == len(images) and "domain encoder" in q["extractor"]
    path = fidelity.write_quality(tmp_path, q)
    assert json.loads(path.read_text())["usable"] is False and fidelity.read_quality(tmp_path)["checks"] == 1
    # real images against real images pass the floor (the other end of the scale)
    half = np.arange(len(ref.features)) % 2 == 0
    from core.quality.setmetrics import set_metrics
    assert set_metrics(ref.features[half], ref.features[~half], n_boot=0)["precision"] >= fidelity.PRECISION_FLOOR


def test_cli_train_gan_logs_the_fidelity_curve_and_the_quality(small_phantom, tmp_path, capsys):
    from core.cli import main
    from core.quality.fidelity import QUALITY_FILE, QUALITY_KEYS
    from core.tracking import client, metric_history

    out = tmp_path / "job"
    args = ["train-gan", "--data", str(small_phantom.root), "--variant", "dcgan", "--resolution", "32",
            "--batch", "8", "--width", "8", "--nz", "16", "--conditional", "--max-steps", "4",
            "--steps-per-epoch", "2", "--log-every", "2", "--device", "cpu", "--precision", "fp32",
            "--fidelity-every", "2", "--fidelity-patience", "5", "--out", str(out)]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["ok"] and summary["best_checkpoint"] == str(out / BEST_FILE)
    quality = json.loads((out / QUALITY_FILE).read_text())
    assert set(QUALITY_KEYS) <= set(quality) and quality["checks"] == 2 and quality["best_step"] in (2, 4)
    assert summary["quality"]["usable"] is quality["usable"]

    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "finished" and [s for s, _ in status["fidelity"]["curve"]] == [2, 4]
    assert status["quality"]["kid"] == pytest.approx(quality["kid"]) and status["best_checkpoint"] == str(out / BEST_FILE)

    c = client()
    run = c.get_run(summary["run_id"])
    assert sorted(m.step for m in c.get_metric_history(run.info.run_id, "fidelity_kid")) == [2, 4]
    assert any(k.startswith("fidelity_kid/") for k in run.data.metrics)
    for name in ("gen_kid", "gen_fid", "gen_precision", "gen_recall", "gen_precision_lo", "gen_usable"):
        assert name in run.data.metrics, name
    assert run.data.tags["medaug.gan.usable"] == str(quality["usable"])
    assert {a.path for a in c.list_artifacts(run.info.run_id, "checkpoint")} >= {"checkpoint/best.pt"}

    from core.charts import gan_curves_figure
    fig = gan_curves_figure(metric_history(run.info.run_id), 2)
    assert any(t.text.startswith("Fidelity") for t in fig.layout.annotations)
    assert any(tr.name == "best checkpoint" for tr in fig.data)

    # generate from the folder's checkpoint.pt samples best.pt
    assert main(["generate", "--checkpoint", str(out / CHECKPOINT_FILE), "--n", "2", "--out", str(tmp_path / "syn")]) == 0
    gen = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert gen["checkpoint"] == str(out / BEST_FILE)
    assert math.isfinite(quality["kid"])
