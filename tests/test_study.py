"""core.study: no leakage, one test split, resume, fan-out through run-cell, determinism, the
results table's maths, and clear errors. A tiny grid (32 px, 1 epoch, a 5-step GAN) keeps it fast."""
from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.study.grid import AUG_SETS, CLASSIC_OPS, Cell, StudyConfig, cells, preset
from core.study.results import delta_sensitivity, results_table, t_interval, wide_table
from core.study.store import collect_cells

ROOT = Path(__file__).resolve().parent.parent
TINY = {"sets": ("real", "crop", "dcgan"), "networks": ("small_cnn",), "seeds": (0,), "image_size": 16, "epochs": 1,
        "batch_size": 64, "n_boot": 50, "gan_resolution": 32, "gan_width": 8, "gan_batch": 16, "gan_steps": {"dcgan": 5, "wgan": 5},
        "precision": "fp32", "gan_max_seconds": None, "gan_fidelity_every": 5}   # every field the quick preset sets


def digest(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest()


def quiet(msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def spied_study(small_phantom, tmp_path_factory, session_home):
    """The tiny study (16 px) run in-process once, with every input of augmentation, GAN training and
    classifier training recorded."""
    import core.classify.train as ctrain
    import core.gan.train as gtrain
    from core.augment.pipeline import Pipeline
    from core.study.run import run_study

    seen = {"augment": [], "gan": [], "classifier": []}
    real_apply, real_gan, real_clf = Pipeline.apply, gtrain.train_gan, ctrain.train_classifier

    def apply(self, image, rng, boxes=None):
        seen["augment"].append(digest(image))
        return real_apply(self, image, rng, boxes)

    def train_gan(images, labels=None, *a, **k):
        seen["gan"].append((np.array(images), np.array(labels)))
        return real_gan(images, labels, *a, **k)

    def train_classifier(config, train, val, test, class_names, **k):
        seen["classifier"].append({"train": digest(train[0]), "n_train": len(train[0]), "val": digest(val[0]),
                                   "test": digest(test[0]) + digest(test[1])})
        return real_clf(config, train, val, test, class_names, **k)

    mp = pytest.MonkeyPatch()
    mp.setenv("MEDAUG_HOME", str(session_home))   # module scope: the autouse workspace fixture is not active yet
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{session_home / 'mlflow.db'}")
    mp.setattr(Pipeline, "apply", apply)
    mp.setattr(gtrain, "train_gan", train_gan)
    mp.setattr(ctrain, "train_classifier", train_classifier)
    import torch

    seen["threads"] = torch.get_num_threads()   # earlier tests in this process may have changed it
    try:
        out = tmp_path_factory.mktemp("study") / "tiny"
        summary = run_study(small_phantom.root, StudyConfig(**TINY), out, log=quiet)
    finally:
        mp.undo()
    return summary, seen, out


def test_no_leakage_and_one_test_split(spied_study, small_phantom):
    from core.study.sets import load_splits

    summary, seen, out = spied_study
    splits = load_splits(small_phantom, 16)
    train = {digest(x) for x in splits.train_x}
    held_out = {digest(x) for x in np.concatenate([splits.val_x, splits.test_x])}
    assert train.isdisjoint(held_out)
    # the classic operation saw training images only (crop: one copy of each)
    assert seen["augment"] and set(seen["augment"]) <= train
    assert len(seen["augment"]) == len(splits.train_x)
    # the GAN saw exactly the training split, whose ids are all train rows of the manifest
    (gan_x, _), = seen["gan"]
    np.testing.assert_array_equal(gan_x, splits.train_x)
    m = small_phantom.manifest.set_index("image_id")
    assert set(m.loc[splits.ids["train"], "split"]) == {"train"}
    assert set(splits.ids["train"]).isdisjoint(splits.ids["test"] + splits.ids["val"])
    # its synthetic images went to the train split only, and only into the dcgan cell
    from core.data.datasets import load_dataset

    syn = [load_dataset(p.parent) for p in (out / "gans").glob("dcgan-*/synthetic-*/dataset.json")]
    assert len(syn) == 1 and set(syn[0].manifest["split"]) == {"train"}
    sizes = {c["n_train"] for c in seen["classifier"]}
    n = len(splits.train_x)
    assert sizes == {n, 2 * n, n + len(syn[0].manifest)}
    # every cell was validated and tested on the same bytes
    assert len(seen["classifier"]) == 3
    assert len({c["test"] for c in seen["classifier"]}) == 1
    assert len({c["val"] for c in seen["classifier"]}) == 1
    cells_df = collect_cells(summary["study_run_id"])
    assert set(cells_df["test_hash"]) == {splits.test_hash} == {summary["test_hash"]}
    assert sorted(cells_df["cell"]) == sorted(c.key for c in cells(StudyConfig(**TINY)))


def test_in_process_study_summary_and_csv(spied_study):
    summary, _, out = spied_study
    assert summary["cells"] == 3 and summary["ran"] == 3 and summary["skipped"] == 0
    csv = pd.read_csv(summary["results_wide_csv"], index_col=0)
    assert list(csv.index) == [AUG_SETS[s].label for s in TINY["sets"]] and list(csv.columns) == ["small_cnn"]
    assert csv.loc["real only", "small_cnn"].endswith("(baseline)") and "Δ" in csv.loc["crop (2, 5, 500, 1000)", "small_cnn"]
    status = json.loads((out / "status.json").read_text()) if (out / "status.json").exists() else None
    assert status is None  # the in-process API writes no status file; the CLI does (tested below)


def test_fan_out_through_run_cell_rebuilds_the_same_table(spied_study, small_phantom, tmp_path):
    """`study --plan-only` writes one spec per cell; a plain shell loop of `run-cell` and then
    `study-results` give the table of the in-process study: the same seed gives the same table
    (determinism on the CPU, across processes)."""
    from core.study.run import run_cell_spec

    summary, seen, _ = spied_study
    # CPU results are reproducible for the same thread count (it sets the order of float sums)
    threads = {**os.environ, "OMP_NUM_THREADS": str(seen["threads"])}
    config = tmp_path / "study.json"
    config.write_text(json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()}))
    out = tmp_path / "fan"
    proc = subprocess.run(check=False, args=[sys.executable, "-m", "core", "study", "--data", str(small_phantom.root), "--config",
                           str(config), "--plan-only", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=threads)
    plan = json.loads(proc.stdout.splitlines()[-1])
    assert plan["ok"] and plan["cells"] == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert plan["study_key"] == summary["study_key"]   # the CLI (preset + --config) built the same study
    specs = sorted(str(p) for p in (out / "specs").glob("*.json"))
    assert specs == sorted(plan["specs"]) and len(specs) == 3
    assert {json.loads(Path(p).read_text())["cell"]["set"] for p in specs} == set(TINY["sets"])
    status = json.loads((out / "status.json").read_text())
    assert status["kind"] == "study" and status["state"] == "finished" and status["cells_total"] == 3
    assert status["run_id"] == plan["study_run_id"]

    loop = f"for s in {out}/specs/*.json; do {sys.executable} -m core run-cell \"$s\" || exit 1; done"
    proc = subprocess.run(check=False, args=["bash", "-c", loop], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=threads)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 3 and all(x["ok"] and not x["skipped"] for x in lines)
    assert run_cell_spec(specs[0], log=quiet)["skipped"] is True   # a finished cell is never run twice

    rebuilt = subprocess.run(check=False, args=[sys.executable, "-m", "core", "study-results", "--study", plan["study_run_id"],
                              "--csv", str(tmp_path / "fan.csv")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    got = json.loads(rebuilt.stdout.splitlines()[-1])
    assert got["ok"], got
    want = {r["set"]: r for r in summary["table"]}
    assert len(got["table"]) == 3
    for row in got["table"]:
        for k in ("mean", "ci_lo", "ci_hi", "delta", "delta_lo", "delta_hi", "p_holm"):
            if want[row["set"]][k] is None:   # NaN in JSON (the baseline's Δ interval)
                assert row[k] is None, (k, row)
            else:
                assert row[k] == pytest.approx(want[row["set"]][k], abs=1e-12), (row, want[row["set"]])
        assert row["verdict"] == want[row["set"]]["verdict"]
    # the generator's KID interval comes from matrix products whose rounding depends on the BLAS thread count
    # of the process that measured it (1e-16 apart between this process and the subprocess on an AMD EPYC)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "fan.csv", index_col=0),
                                  pd.read_csv(summary["results_csv"], index_col=0), check_exact=False, rtol=1e-9)


def test_resume_skips_finished_cells(small_phantom, tmp_path, monkeypatch):
    import core.classify.train as ctrain
    from core.study import sets
    from core.study.run import finished_cells, run_study

    config = StudyConfig(**{**TINY, "sets": ("real", "rotate45"), "seeds": (3,)})
    real_set = sets.training_set

    def failing(set_key, *a, **k):
        if set_key == "rotate45":
            raise RuntimeError("simulated crash in the second cell")
        return real_set(set_key, *a, **k)

    monkeypatch.setattr(sets, "training_set", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_study(small_phantom.root, config, tmp_path / "s", log=quiet)
    monkeypatch.setattr(sets, "training_set", real_set)
    with pytest.raises(ValueError, match="pass --resume"):
        run_study(small_phantom.root, config, tmp_path / "s", log=quiet)

    trained = []
    real_clf = ctrain.train_classifier
    monkeypatch.setattr(ctrain, "train_classifier", lambda cfg, *a, **k: trained.append(cfg) or real_clf(cfg, *a, **k))
    summary = run_study(small_phantom.root, config, tmp_path / "s", resume=True, log=quiet)
    assert len(trained) == 1 and summary["skipped"] == 1 and summary["ran"] == 1
    assert sorted(finished_cells(summary["study_run_id"])) == sorted(c.key for c in cells(config))
    assert {r["set"] for r in summary["table"]} == {"real", "rotate45"}
    # resuming a finished study trains nothing and rebuilds the same table
    trained.clear()
    again = run_study(small_phantom.root, config, tmp_path / "s", resume=True, log=quiet)
    assert trained == [] and again["ran"] == 0 and again["table"] == summary["table"]


# --- the table's maths on a table built here ---------------------------------------------------------

def made_cells() -> pd.DataFrame:
    rows = []
    values = {("real", "small_cnn"): [0.50, 0.60, 0.55], ("hflip", "small_cnn"): [0.56, 0.64, 0.63],
              ("real", "resnet18"): [0.70], ("hflip", "resnet18"): [0.65]}
    for (s, net), vs in values.items():
        for seed, v in enumerate(vs):
            rows.append({"cell": f"{s}|{net}|s{seed}", "set": s, "network": net, "seed": seed, "macro_f1": v,
                         "macro_f1_ci_low": v - 0.1, "macro_f1_ci_high": v + 0.05, "classes": ["a", "b"],
                         "sens:a": v, "sens:b": 1 - v, "test_hash": "x"})
    return pd.DataFrame(rows)


def test_results_table_maths():
    table = results_table(made_cells(), "macro_f1", order=("real", "hflip"))
    r = table.set_index(["set", "network"])
    # 3 seeds: mean ± t(0.975, 2) sd / sqrt(3), with t = 4.302653
    v = np.array([0.56, 0.64, 0.63])
    half = 4.302653 * v.std(ddof=1) / math.sqrt(3)
    row = r.loc[("hflip", "small_cnn")]
    assert row["n_seeds"] == 3 and row["mean"] == pytest.approx(v.mean())
    assert row["ci_lo"] == pytest.approx(v.mean() - half, abs=1e-6) and row["ci_hi"] == pytest.approx(v.mean() + half, abs=1e-6)
    # Δ against real only: without per-image predictions (these cells have none) it is the mean of the
    # per-seed differences, NOT tested and without an interval (the paired test: tests/test_study_verdict.py)
    d = v - np.array([0.50, 0.60, 0.55])
    assert row["delta"] == pytest.approx(d.mean())
    assert math.isnan(row["delta_lo"]) and math.isnan(row["p_holm"]) and row["verdict"].startswith("not tested")
    assert r.loc[("real", "small_cnn"), "delta"] == 0.0 and r.loc[("real", "small_cnn"), "verdict"] == "baseline"
    # 1 seed: the bootstrap interval of the cell itself, Δ without an interval
    one = r.loc[("hflip", "resnet18")]
    assert (one["mean"], one["ci_lo"], one["ci_hi"]) == pytest.approx((0.65, 0.55, 0.70))
    assert one["delta"] == pytest.approx(-0.05) and math.isnan(one["delta_lo"])
    assert "bootstrap" in one["ci_method"] and "t interval over 3 seeds" in row["ci_method"]
    wide = wide_table(table)
    assert list(wide.index) == ["real only", "horizontal flip"] and list(wide.columns) == ["small_cnn", "resnet18"]
    assert wide.loc["horizontal flip", "resnet18"] == "0.650 [0.550, 0.700] Δ -0.050"
    heat = delta_sensitivity(made_cells(), "small_cnn")
    assert list(heat.index) == ["horizontal flip"] and list(heat.columns) == ["a", "b"]
    assert heat.loc["horizontal flip", "a"] == pytest.approx(d.mean())
    assert heat.loc["horizontal flip", "b"] == pytest.approx(-d.mean())
    assert t_interval([0.4])[0] == 0.4 and math.isnan(t_interval([0.4])[2])


# --- the grid and bad input -------------------------------------------------------------------------

def test_grid_and_presets():
    quick = preset("quick")
    assert quick.sets == ("real", *CLASSIC_OPS, "dcgan", "wgan") and quick.networks == ("small_cnn",)
    assert quick.seeds == (0,) and quick.image_size == 64 and len(cells(quick)) == 10
    assert len(CLASSIC_OPS) == 7
    paper = preset("paper")
    assert set(paper.networks) == {"vgg16", "inception_v3"} and len(paper.seeds) == 3
    assert set(paper.sets) == set(AUG_SETS) and len(cells(paper)) == len(AUG_SETS) * 2 * 3 == 18 * 2 * 3
    assert {"diffusion", "tstr-diffusion"} <= set(paper.sets) and paper.diffusion_width == 64
    assert paper.gan_variants() == ("dcgan", "wgan", "wgan-gp", "diffusion")
    standard = preset("standard")
    assert standard.seeds == (0, 1, 2) and standard.networks == ("small_cnn",) and standard.image_size == 64
    assert set(CLASSIC_OPS) <= set(standard.sets) and {"dcgan", "wgan", "tstr-dcgan", "tstr-wgan"} <= set(standard.sets)
    assert len(cells(standard)) == 13 * 3 and standard.gan_variants() == ("dcgan", "wgan")
    assert Cell("classic+gan", "vgg16", 2).key == "classic+gan|vgg16|s2"
    from core.study.run import cell_epochs

    # equal budget: a set twice the real split's size gets half the epochs (at least one)
    assert (cell_epochs(quick, 700, 700), cell_epochs(quick, 700, 1400), cell_epochs(quick, 700, 1086)) == (4, 2, 3)
    assert cell_epochs(quick, 10, 10_000) == 1 and cell_epochs(paper, 700, 1400) == paper.epochs
    assert StudyConfig(**TINY).key() == StudyConfig(**{**TINY, "device": "cpu"}).key()
    assert StudyConfig(**TINY).key() != StudyConfig(**{**TINY, "seeds": (1,)}).key()


def test_bad_input_gets_clear_errors(small_phantom, tmp_path):
    from core.study.run import check_networks, run_cell_spec, run_study

    with pytest.raises(ValueError, match="unknown preset 'nope'; choose quick, standard or paper"):
        preset("nope")
    with pytest.raises(ValueError, match="unknown augmentation set 'mixup'"):
        StudyConfig(sets=("real", "mixup"))
    with pytest.raises(ValueError, match="include 'real'"):
        StudyConfig(sets=("hflip",))
    with pytest.raises(ValueError, match="seeds: -1"):
        StudyConfig(seeds=(-1,))
    with pytest.raises(ValueError, match="unknown network 'alexnet'"):
        check_networks(StudyConfig(networks=("alexnet",)))
    with pytest.raises(ValueError, match="unknown study config field"):
        StudyConfig.from_dict({"set": ["real"]})
    with pytest.raises(ValueError, match="no such folder"):
        run_study(tmp_path / "missing", StudyConfig(**TINY), tmp_path / "o", log=quiet)
    with pytest.raises(ValueError, match="no study to resume"):
        run_study(small_phantom.root, StudyConfig(**TINY), tmp_path / "o2", resume=True, log=quiet)
    with pytest.raises(ValueError, match="no such cell spec"):
        run_cell_spec(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not a study cell spec"):
        run_cell_spec(tmp_path / "bad.json")
    for args, expected in (([" --preset", "nope"], "unknown preset"),
                           (["--sets", "real", "cutmix"], "unknown augmentation set 'cutmix'"),
                           (["--networks", "alexnet"], "unknown network 'alexnet'")):
        proc = subprocess.run(check=False, args=[sys.executable, "-m", "core", "study", "--data", str(tmp_path / "nowhere"),
                               "--out", str(tmp_path / "cli"), *[a.strip() for a in args]],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        line = json.loads(proc.stdout.splitlines()[-1])
        assert proc.returncode == 2 and line["ok"] is False and expected in line["error"], line
    proc = subprocess.run(check=False, args=[sys.executable, "-m", "core", "study", "--data", str(tmp_path / "nowhere"),
                           "--out", str(tmp_path / "cli")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    line = json.loads(proc.stdout.splitlines()[-1])
    assert line["ok"] is False and "no such folder" in line["error"] and "nowhere" in line["error"]


def test_gan_sets_from_a_given_checkpoint_train_no_gan(spied_study, small_phantom, tmp_path, monkeypatch):
    import core.gan.train as gtrain
    from core.study.run import run_study

    _, _, out = spied_study
    (ckpt,) = (out / "gans").glob("dcgan-*/checkpoint.pt")
    monkeypatch.setattr(gtrain, "train_gan", lambda *a, **k: pytest.fail("a given checkpoint must not be retrained"))
    config = StudyConfig(**{**TINY, "sets": ("real", "dcgan"), "seeds": (1,), "gan_checkpoints": {"dcgan": str(ckpt)}})
    summary = run_study(small_phantom.root, config, tmp_path / "given", log=quiet)
    assert summary["ran"] == 2 and not list((tmp_path / "given" / "gans").glob("*/checkpoint.pt"))
    with pytest.raises(ValueError, match="neither a checkpoint file nor an MLflow run id"):
        run_study(small_phantom.root, StudyConfig(**{**config.to_dict(), "gan_checkpoints": {"dcgan": "nope"}}),
                  tmp_path / "bad", log=quiet)
