"""core.classify: every network builds and trains a step, local weights, evaluate() against hand
computations, the sanity controls (learnable phantom vs shuffled labels), determinism, resume,
bad input, the CLI with MLflow, and the torch-only boundary.

Training runs on phantom images rendered here (64 px, one thread) and take a few seconds each."""
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
from core.classify.evaluate import evaluate, flat_metrics, macro_f1
from core.classify.models import MODELS, build_model, features, input_size
from core.classify.train import (
    CHECKPOINT_FILE,
    ClassifierConfig,
    batches,
    class_weights,
    epoch_indices,
    epoch_lr,
    load_checkpoint,
    load_trained,
    train_classifier,
)

ROOT = Path(__file__).resolve().parent.parent


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tiny tensors (tests/conftest.py)


# --- data rendered here ------------------------------------------------------------------

LEARN_CLASSES = ("No finding", "Surgical implant", "Vertebral collapse")


def render(classes, per_class: int, seed0: int, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    from core.data.io import to_uint8
    from core.data.phantom import render_phantom

    x = np.stack([to_uint8(render_phantom(c, size=size, seed=seed0 + i).image)
                  for c in classes for i in range(per_class)])
    y = np.repeat(np.arange(len(classes)), per_class)
    return x, y


@pytest.fixture(scope="module")
def phantom3():
    """Balanced 3-class phantom splits at 64 px: 40 / 12 / 20 images per class (disjoint seeds)."""
    return {"train": render(LEARN_CLASSES, 40, 10_000), "val": render(LEARN_CLASSES, 12, 20_000),
            "test": render(LEARN_CLASSES, 20, 30_000)}


def tiny_splits(n_train=24, seed=0):
    """Random 2-class images for the mechanics tests (nothing to learn, fast)."""
    rng = np.random.default_rng(seed)
    def split(n):
        return rng.integers(0, 256, (n, 32, 32), dtype=np.uint8), np.arange(n) % 2
    return split(n_train), split(8), split(10)


def tiny(**kw) -> ClassifierConfig:
    base = {"image_size": 32, "epochs": 3, "batch_size": 8, "device": "cpu", "patience": None, "n_boot": 50}
    return ClassifierConfig(**{**base, **kw})


def same(a: dict, b: dict) -> bool:
    """Equal, with NaN equal to NaN (undefined metrics are NaN)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def permutation_null(y: np.ndarray, pred: np.ndarray, k: int, n: int = 2000, seed: int = 0) -> np.ndarray:
    """Macro-F1 of ``pred`` against randomly permuted labels: the chance distribution for
    predictions that carry no information about the labels (same prediction and class counts)."""
    rng = np.random.default_rng(seed)
    return np.array([macro_f1(rng.permutation(y), pred, k) for _ in range(n)])


# --- networks ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(MODELS))
def test_every_network_builds_trains_a_step_and_gives_embeddings(name):
    torch.manual_seed(0)
    model = build_model(name, 3, aux_logits=True)
    size = input_size(name, MODELS[name].min_size)
    first = dict(model.named_modules())[MODELS[name].first_conv]
    assert first.in_channels == 1                      # grey: the first convolution is adapted
    x, y = torch.randn(2, 1, size, size), torch.tensor([0, 2])
    model.train()
    out = model(x)
    if name in ("inception_v3", "googlenet"):          # auxiliary logits in training
        assert isinstance(out, tuple) and all(o.shape == (2, 3) for o in out if o is not None)
        assert model.aux_weight == MODELS[name].aux_weight > 0
        logits, aux = out[0], [o for o in out[1:] if o is not None]
    else:
        logits, aux = out, []
    loss = torch.nn.functional.cross_entropy(logits, y) + sum(
        model.aux_weight * torch.nn.functional.cross_entropy(a, y) for a in aux)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 3)
        emb = features(model, x)
    assert emb.ndim == 2 and emb.shape[0] == 2
    assert emb.shape[1] == dict(model.named_modules())[MODELS[name].head].in_features


def test_input_size_rules():
    assert input_size("inception_v3", 64) == 299 and input_size("small_cnn", 48) == 48
    with pytest.raises(ValueError, match="resnet18 needs at least 32 px"):
        input_size("resnet18", 16)
    with pytest.raises(ValueError, match="unknown network.*small_cnn"):
        input_size("alexnet", 64)


# --- local pretrained weights ------------------------------------------------------------

def test_rgb_weights_load_into_a_grey_network_with_another_head(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(1)
    rgb = resnet18(weights=None, num_classes=10).eval()   # an RGB "pretrained" net with 10 classes
    with torch.no_grad():   # non-trivial batch-norm statistics, so a wrong mapping would show
        for m in rgb.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "rgb.pt"
    torch.save(rgb.state_dict(), path)

    grey = build_model("resnet18", 3, weights_path=path).eval()
    report = grey.load_report
    assert report["adapted"] == ["conv1.weight"]
    assert sorted(report["skipped_head"]) == ["fc.bias", "fc.weight"]
    assert torch.equal(grey.conv1.weight, rgb.conv1.weight.sum(dim=1, keepdim=True))
    assert torch.equal(grey.layer3[1].conv2.weight, rgb.layer3[1].conv2.weight)
    assert grey.fc.weight.shape == (3, 512)
    # summed kernels on grey == RGB kernels on the grey image replicated to R = G = B
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(features(grey, x), features(rgb_with_arch(rgb), x.repeat(1, 3, 1, 1)),
                                   rtol=1e-4, atol=1e-5)

    # a DDP-saved file ("module." prefix) under a "state_dict" key loads too
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in rgb.state_dict().items()}}, wrapped)
    assert build_model("resnet18", 10, weights_path=wrapped).load_report["skipped_head"] == []


def rgb_with_arch(model):
    model.arch = "resnet18"
    return model


def test_weights_path_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        build_model("small_cnn", 2, weights_path=tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="weights_path=.*no such file"):
        ClassifierConfig(weights_path=str(tmp_path / "missing.pt"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="cannot be read as a state dict"):
        build_model("small_cnn", 2, weights_path=junk)
    other = tmp_path / "small.pt"
    torch.save(build_model("small_cnn", 2).state_dict(), other)
    with pytest.raises(ValueError, match="not resnet18 weights"):
        build_model("resnet18", 2, weights_path=other)


# --- evaluate() against hand computations ------------------------------------------------

def test_evaluate_matches_hand_computed_metrics():
    # 3 classes; class 2 never predicted; a tie in class 0's scores
    y = np.array([0, 0, 0, 1, 1, 2])
    p = np.array([[.7, .2, .1], [.5, .4, .1], [.3, .6, .1], [.5, .4, .1], [.1, .8, .1], [.2, .5, .3]])
    r = evaluate(y, p, ["a", "b", "c"], n_boot=0)
    # predictions: 0, 0, 1, 0, 1, 1
    assert r["confusion_matrix"] == [[2, 1, 0], [1, 1, 0], [0, 1, 0]]
    assert r["accuracy"] == pytest.approx(3 / 6)
    a, b, c = (r["per_class"][k] for k in "abc")
    assert (a["sensitivity"], a["specificity"], a["precision"]) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
    assert (b["sensitivity"], b["specificity"], b["precision"]) == pytest.approx((1 / 2, 2 / 4, 1 / 3))
    assert (c["sensitivity"], c["specificity"], c["f1"]) == pytest.approx((0.0, 1.0, 0.0))
    assert math.isnan(c["precision"])               # never predicted: precision undefined
    assert a["f1"] == pytest.approx(2 / 3) and b["f1"] == pytest.approx(2 * 1 / (2 * 1 + 2 + 1))
    assert r["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    assert r["macro_f1"] == pytest.approx((2 / 3 + 2 / 5 + 0) / 3)
    # AUROC of a: positives .7 .5 .3 vs negatives .5 .1 .2 -> pairs won 3 + (2 + 0.5 tie) + 2 = 7.5 of 9
    assert a["auroc"] == pytest.approx(7.5 / 9)
    # b: positives .4 .8 vs negatives .2 .4 .6 .5 -> (1 + 0.5) + 4 = 5.5 of 8
    assert b["auroc"] == pytest.approx(5.5 / 8)
    # c: positive .3 vs five negatives at .1 -> 1
    assert c["auroc"] == 1.0 and r["macro_auroc"] == pytest.approx((7.5 / 9 + 5.5 / 8 + 1) / 3)
    assert r["ci"] == {} and r["notes"] == []


def test_evaluate_absent_class_is_nan_with_a_note_and_left_out_of_macro():
    y = np.array([0, 0, 1, 1])
    p = np.array([[.9, .05, .05], [.2, .1, .7], [.1, .8, .1], [.3, .6, .1]])
    r = evaluate(y, p, ["a", "b", "c"], n_boot=100)
    c = r["per_class"]["c"]
    assert c["support"] == 0 and math.isnan(c["sensitivity"]) and math.isnan(c["auroc"]) and math.isnan(c["f1"])
    assert c["specificity"] == pytest.approx(3 / 4)   # one image wrongly called c
    assert any("'c' is absent" in n for n in r["notes"])
    assert r["macro_f1"] == pytest.approx((2 / 3 + 1.0) / 2)   # a: tp 1, fn 1 -> 2/3; b: 1
    assert r["balanced_accuracy"] == pytest.approx((0.5 + 1.0) / 2)
    flat = flat_metrics(r)
    assert "test_sensitivity.c" not in flat and "test_sensitivity.a" in flat   # NaN never reaches MLflow


def test_bootstrap_intervals_are_stratified_deterministic_and_bracket_the_estimate():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], [50, 30, 20])
    p = rng.random((100, 3))
    p[np.arange(100), y] += rng.random(100)                # informative but imperfect
    r1 = evaluate(y, p, ["a", "b", "c"], n_boot=400, seed=3)
    r2 = evaluate(y, p, ["a", "b", "c"], n_boot=400, seed=3)
    assert r1["ci"] == r2["ci"] and "stratified" in r1["ci_method"]
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auroc"):
        lo, hi = r1["ci"][key]
        assert lo <= r1[key] <= hi and hi - lo > 0.02
    # stratified: every replicate keeps the class supports, so a perfect classifier has a zero-width CI
    perfect = evaluate(y, np.eye(3)[y], ["a", "b", "c"], n_boot=200)
    assert perfect["ci"]["balanced_accuracy"] == [1.0, 1.0] and perfect["ci"]["per_class"]["c"]["auroc"] == [1.0, 1.0]
    # more test images, narrower interval
    big_y = np.tile(y, 8)
    big_p = np.tile(p, (8, 1))
    narrow = evaluate(big_y, big_p, ["a", "b", "c"], n_boot=400)["ci"]["macro_f1"]
    assert narrow[1] - narrow[0] < 0.6 * (r1["ci"]["macro_f1"][1] - r1["ci"]["macro_f1"][0])


def test_evaluate_rejects_bad_input():
    p = np.full((3, 2), 0.5)
    with pytest.raises(ValueError, match=r"probs: expected shape \(N, 3\)"):
        evaluate([0, 1, 0], p, ["a", "b", "c"])
    with pytest.raises(ValueError, match="y_true: expected 3 labels"):
        evaluate([0, 1], p, ["a", "b"])
    with pytest.raises(ValueError, match=r"class indices in \[0, 1\]"):
        evaluate([0, 1, 2], p, ["a", "b"])
    with pytest.raises(ValueError, match="NaN"):
        evaluate([0, 1, 0], np.array([[0.5, np.nan]] * 3), ["a", "b"])
    with pytest.raises(ValueError, match="empty"):
        evaluate([], np.zeros((0, 2)), ["a", "b"])


# --- configuration and small rules ---------------------------------------------------------

@pytest.mark.parametrize("fields, message", [
    ({"model": "alexnet"}, "model='alexnet': unknown network"),
    ({"epochs": 0}, "epochs=0"), ({"epochs": 10**6}, "epochs=1000000"),
    ({"lr": -1.0}, "lr=-1.0"), ({"lr": 5.0}, "lr=5.0"), ({"lr": float("nan")}, "lr=nan"),
    ({"batch_size": 1}, "batch_size=1"), ({"batch_size": 10**6}, "batch_size=1000000"),
    ({"balance": "oversample"}, "balance='oversample'"), ({"patience": 0}, "patience=0"),
    ({"image_size": 8}, "image_size=8"), ({"precision": "fp8"}, "precision='fp8'"),
    ({"device": "tpu"}, "device='tpu'"), ({"weight_decay": -0.1}, "weight_decay=-0.1"),
])
def test_config_rejects_absurd_values(fields, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ClassifierConfig(**fields)


def test_config_round_trip_and_unknown_fields():
    cfg = ClassifierConfig(model="resnet18", balance="sampler", seed=3)
    assert ClassifierConfig.from_dict(cfg.to_dict()) == cfg
    assert ClassifierConfig(model="inception_v3").input_size == 299
    with pytest.raises(ValueError, match=r"unknown classifier config field\(s\) \['lr_max'\]"):
        ClassifierConfig.from_dict({"lr_max": 1})


def test_shuffled_labels_keep_counts_and_carry_no_information():
    from core.classify.train import shuffled_labels

    y = torch.tensor([0] * 60 + [1] * 30 + [2] * 9 + [3] * 3)
    s = shuffled_labels(y, seed=7)
    assert torch.equal(torch.bincount(s), torch.bincount(y))
    table = np.zeros((4, 4))
    np.add.at(table, (y.numpy(), s.numpy()), 1)
    expected = np.outer(np.bincount(y), np.bincount(y)) / len(y)   # independence: product of the marginals
    assert np.abs(table - expected).max() < 2.0                    # within two images, per cell
    assert not torch.equal(shuffled_labels(y, seed=8), s)


def test_balancing_rules():
    labels = np.array([0] * 30 + [1] * 10 + [2] * 2)
    w = class_weights(labels, 4)
    assert w[3] == 0 and np.allclose(w[:3], [42 / (3 * 30), 42 / (3 * 10), 42 / (3 * 2)])
    assert np.isclose((w[labels]).sum(), len(labels))      # a weighted mean keeps the loss scale
    cfg = ClassifierConfig(balance="sampler", seed=1)
    t = torch.as_tensor(labels)
    drawn = torch.cat([t[epoch_indices(len(t), t, e, cfg)] for e in range(1, 101)])
    share = torch.bincount(drawn, minlength=3).double() / len(drawn)
    assert torch.allclose(share, torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.02)
    perm = epoch_indices(len(t), t, 5, ClassifierConfig(seed=1))
    assert sorted(perm.tolist()) == list(range(len(t)))                 # "none": a permutation
    assert torch.equal(perm, epoch_indices(len(t), t, 5, ClassifierConfig(seed=1)))
    assert [len(b) for b in batches(torch.arange(17), 8)] == [8, 8]     # a lone last image is dropped
    cos = ClassifierConfig(lr=0.1, epochs=5)
    assert epoch_lr(cos, 1) == pytest.approx(0.1) and epoch_lr(cos, 5) == pytest.approx(0.001)
    assert epoch_lr(cos, 2) > epoch_lr(cos, 3) > epoch_lr(cos, 4)


def test_training_data_errors_are_clear():
    train, val, test = tiny_splits()
    with pytest.raises(ValueError, match="uint8"):
        train_classifier(tiny(), (train[0].astype(np.float32), train[1]), val, test, ["a", "b"])
    with pytest.raises(ValueError, match=r"train labels: class indices must lie in \[0, 1\]"):
        train_classifier(tiny(), (train[0], train[1] + 1), val, test, ["a", "b"])
    with pytest.raises(ValueError, match="val: the val split is empty; early stopping"):
        train_classifier(tiny(), train, (val[0][:0], val[1][:0]), test, ["a", "b"])
    with pytest.raises(ValueError, match="at least 2 distinct names"):
        train_classifier(tiny(), train, val, test, ["a", "a"])
    with pytest.raises(ValueError, match="train: 5 labels for 24 images"):
        train_classifier(tiny(), (train[0], train[1][:5]), val, test, ["a", "b"])


# --- mechanics: determinism, resume, early stopping, the trained model file -------------------

def test_same_seed_same_metrics_different_seed_different():
    train, val, test = tiny_splits()
    steps = []
    a = train_classifier(tiny(seed=4, log_every=2), train, val, test, ["a", "b"],
                         on_step=lambda step, m: steps.append((step, m["train_loss_step"])))
    b = train_classifier(tiny(seed=4), train, val, test, ["a", "b"])
    c = train_classifier(tiny(seed=5), train, val, test, ["a", "b"])
    strip = lambda h: [{k: v for k, v in e.items() if k not in ("epoch_seconds", "img_per_s")} for e in h]
    assert strip(a.history) == strip(b.history) and same(a.metrics, b.metrics)
    assert np.array_equal(a.test_probs, b.test_probs)
    assert strip(a.history) != strip(c.history)
    assert [s for s, _ in steps] == [2, 4, 6, 8] and all(v > 0 for _, v in steps)


def test_resume_after_interruption_equals_uninterrupted(tmp_path):
    train, val, test = tiny_splits(seed=2)
    cfg = tiny(epochs=4, model="small_cnn")
    full = train_classifier(cfg, train, val, test, ["a", "b"], checkpoint_dir=tmp_path / "full")

    seen = []
    stopped = train_classifier(cfg, train, val, test, ["a", "b"], checkpoint_dir=tmp_path / "cut",
                               on_epoch=lambda e, m: seen.append(e), should_stop=lambda: len(seen) >= 2)
    assert stopped.state == "stopped" and [h["epoch"] for h in stopped.history] == [1, 2]
    assert load_checkpoint(tmp_path / "cut" / CHECKPOINT_FILE)["loop"]["epoch"] == 2
    resumed = train_classifier(cfg, train, val, test, ["a", "b"], checkpoint_dir=tmp_path / "cut", resume=True)
    assert resumed.state == "finished" and any("resumed" in n for n in resumed.notes)
    strip = lambda h: [{k: v for k, v in e.items() if k not in ("epoch_seconds", "img_per_s")} for e in h]
    assert strip(resumed.history) == strip(full.history)
    assert same(resumed.metrics, full.metrics) and resumed.best_epoch == full.best_epoch
    assert np.array_equal(resumed.test_probs, full.test_probs)

    # the tested weights come back from model.pt and give the same probabilities
    net, info = load_trained(resumed.model_path)
    x = torch.as_tensor(test[0][:, None]).float().div(255).sub(info["mean"]).div(info["std"])
    with torch.no_grad():
        probs = torch.softmax(net(x), 1).numpy()
    assert info["best_epoch"] == full.best_epoch and np.allclose(probs, full.test_probs, atol=2e-2)

    # a changed configuration or damaged file is refused with a clear message
    with pytest.raises(CheckpointError, match=r"different configuration \(lr"):
        train_classifier(tiny(epochs=4, lr=0.5), train, val, test, ["a", "b"], checkpoint_dir=tmp_path / "cut",
                         resume=True)
    (tmp_path / "cut" / CHECKPOINT_FILE).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        train_classifier(cfg, train, val, test, ["a", "b"], checkpoint_dir=tmp_path / "cut", resume=True)


def test_early_stopping_keeps_the_best_validation_epoch():
    train, val, test = tiny_splits(seed=3)
    r = train_classifier(tiny(epochs=12, patience=2, lr=0.01), train, val, test, ["a", "b"])
    f1 = [h["val_macro_f1"] for h in r.history]
    assert r.best_epoch == 1 + int(np.argmax(f1))          # first epoch with the best val macro-F1
    if r.state == "early_stopped":
        assert len(f1) - r.best_epoch == 2 and len(f1) < 12
    else:
        assert r.state == "finished" and len(f1) == 12
    assert all(f1[i] <= f1[r.best_epoch - 1] for i in range(len(f1)))


# --- the sanity controls on the phantom --------------------------------------------------

@pytest.fixture(scope="module")
def learned_and_control(phantom3):
    classes = list(LEARN_CLASSES)
    cfg = ClassifierConfig(epochs=10, batch_size=16, patience=None, device="cpu", n_boot=500, seed=0)
    real = train_classifier(cfg, phantom3["train"], phantom3["val"], phantom3["test"], classes)
    control = train_classifier(ClassifierConfig(**{**cfg.to_dict(), "shuffle_labels": True}), phantom3["train"],
                               phantom3["val"], phantom3["test"], classes)
    return real, control


def test_small_cnn_learns_the_phantom_classes_well_above_chance(learned_and_control):
    real, _ = learned_and_control
    y, pred = real.test_labels, real.test_probs.argmax(1)
    null = permutation_null(y, pred, 3)
    m = real.metrics
    assert m["macro_f1"] > null.max() + 0.1                   # far outside the chance distribution
    assert m["ci"]["macro_f1"][0] > np.percentile(null, 99)   # even the CI's lower end
    assert m["per_class"]["Surgical implant"]["sensitivity"] >= 0.9
    assert m["macro_auroc"] > 0.75
    assert real.history[-1]["train_acc"] > real.history[0]["train_acc"]


def test_label_shuffled_control_stays_at_chance(learned_and_control):
    real, control = learned_and_control
    y, pred = control.test_labels, control.test_probs.argmax(1)
    null = permutation_null(y, pred, 3)
    f1 = control.metrics["macro_f1"]
    assert f1 <= np.percentile(null, 99)                      # indistinguishable from chance
    assert f1 < 1 / 3 + 0.15
    assert f1 < real.metrics["macro_f1"] - 0.2
    assert control.metrics["ci"]["macro_f1"][1] < real.metrics["ci"]["macro_f1"][1]


# --- the CLI ---------------------------------------------------------------------------

def test_cli_train_classifier_logs_to_mlflow_and_writes_status(small_phantom, tmp_path, capsys):
    from core import tracking
    from core.cli import main

    out = tmp_path / "job"
    code = main(["train-classifier", "--data", str(small_phantom.root), "--out", str(out), "--epochs", "2",
                 "--batch-size", "16", "--threads", "1", "--n-boot", "50", "--classes",
                 "No finding,Osteophytes,Surgical implant"])
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert code == 0 and summary["ok"] and summary["state"] == "finished", lines[-5:]
    assert summary["classes"] == ["No finding", "Osteophytes", "Surgical implant"]
    assert 0 <= summary["test"]["macro_f1"] <= 1 and len(summary["ci"]["macro_f1"]) == 2
    status = json.loads((out / "status.json").read_text())
    assert status["kind"] == "train-classifier" and status["state"] == "finished" and status["epoch"] == 2
    assert status["run_id"] == summary["run_id"] and Path(status["model"]).is_file()
    run = tracking.client().get_run(summary["run_id"])
    assert run.data.tags[tracking.TAG_KIND] == "classifier" and run.info.status == "FINISHED"
    hist = tracking.metric_history(summary["run_id"], ["val_macro_f1", "train_loss", "val_acc"])
    assert sorted(hist[hist["key"] == "val_macro_f1"]["step"]) == [1, 2]
    assert "test_macro_f1" in run.data.metrics and "test_sensitivity.Surgical_implant" in run.data.metrics
    arts = tracking.list_artifacts(summary["run_id"])
    assert {"confusion_matrix.html", "per_class_metrics.json", "metrics.json"} <= set(arts)
    assert run.data.params["model"] == "small_cnn" and run.data.params["n_test"] == str(
        sum(small_phantom.manifest["split"].eq("test") & small_phantom.manifest["label"].isin(summary["classes"])))


def test_cli_bad_input_gives_ok_false(small_phantom, tmp_path, capsys):
    from core.cli import main

    cases = [(["--model", "alexnet"], "unknown network"), (["--epochs", "0"], "epochs=0"),
             (["--lr", "7"], "lr=7.0"), (["--classes", "Fractures,No finding"], "Fractures"),
             (["--weights", str(tmp_path / "none.pt")], "no such file")]
    for extra, message in cases:
        assert main(["train-classifier", "--data", str(small_phantom.root), "--out", str(tmp_path / "o"), *extra]) == 2
        err = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert err["ok"] is False and message in err["error"], (extra, err)
    assert main(["train-classifier", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "no such folder" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["error"]


# --- the boundary: torch, torchvision, numpy and pillow only ----------------------------

def test_core_classify_trains_without_pandas_mlflow_streamlit():
    code = """
import sys
for banned in ("pandas", "mlflow", "streamlit", "scipy", "sklearn", "plotly"):
    sys.modules[banned] = None   # any import of them now fails, as on a bare GPU box
import numpy as np, torch
torch.set_num_threads(1)
import core.classify, core.classify.models, core.classify.train, core.classify.evaluate, core.classify.data
import core.classify.commands
from core.classify.train import ClassifierConfig, train_classifier
rng = np.random.default_rng(0)
split = lambda n: (rng.integers(0, 256, (n, 32, 32), dtype=np.uint8), np.arange(n) % 2)
r = train_classifier(ClassifierConfig(image_size=32, epochs=1, batch_size=4, device="cpu", n_boot=10),
                     split(8), split(4), split(4), ["a", "b"])
print(r.state, len(r.history), sorted(r.metrics)[:2])
"""
    proc = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "finished 1 ['accuracy', 'balanced_accuracy']"
