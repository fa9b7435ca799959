"""The study's answer: per-image predictions per cell, the paired table (one compare_cells call, Holm),
its CSV and `study-results --csv`, TSTR rows, generator fidelity on GAN rows, the verdict in words,
the shuffled-label null control, a planted effect, and "real means real" everywhere."""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.study.grid import StudyConfig

ROOT = Path(__file__).resolve().parent.parent
TINY = {"networks": ("small_cnn",), "seeds": (0,), "image_size": 16, "epochs": 1, "batch_size": 64, "n_boot": 50,
        "gan_resolution": 32, "gan_width": 8, "gan_batch": 16, "gan_steps": {"dcgan": 5}, "precision": "fp32"}
REQUIRED = ("set", "network", "metric", "mean", "ci_lo", "ci_hi", "delta", "delta_lo", "delta_hi", "p_value", "p_holm",
            "verdict", "seed_sd", "mde", "n_seeds", "n_test")
GEN = ("gen_kid", "gen_fid", "gen_precision", "gen_recall")
QUALITY = {"kid": 0.031, "kid_lo": 0.02, "kid_hi": 0.045, "fid": 88.5, "fid_lo": 80.0, "fid_hi": 97.0,
           "precision": 0.41, "precision_lo": 0.3, "precision_hi": 0.5, "recall": 0.22, "recall_lo": 0.15,
           "recall_hi": 0.3, "usable": True, "reason": "", "best_step": 5}


def quiet(msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def tiny(small_phantom, tmp_path_factory, session_home):
    """real, hflip, DCGAN and TSTR-DCGAN on the small phantom (16 px, 1 epoch, 1 seed), with the GAN's
    quality.json reader answering QUALITY."""
    from core.study import sets
    from core.study.run import run_study

    mp = pytest.MonkeyPatch()
    mp.setenv("MEDAUG_HOME", str(session_home))
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{session_home / 'mlflow.db'}")
    mp.setattr(sets, "gan_quality", lambda variant, splits, config, root: dict(QUALITY), raising=False)
    try:
        out = tmp_path_factory.mktemp("verdict") / "tiny"
        summary = run_study(small_phantom.root, StudyConfig(**TINY, sets=("real", "hflip", "dcgan", "tstr-dcgan")),
                            out, log=quiet)
    finally:
        mp.undo()
    return summary, out


def test_cells_keep_their_test_predictions(tiny, small_phantom):
    from core.study.run import PREDICTIONS_FILE
    from core.study.sets import load_splits
    from core.study.store import collect_cells

    summary, out = tiny
    splits = load_splits(small_phantom, 16)
    files = sorted(out.glob(f"cells/*/{PREDICTIONS_FILE}"))
    assert len(files) == 4
    for f in files:
        data = json.loads(f.read_text())
        assert data["y_true"] == splits.test_y.tolist() and data["test_ids"] == splits.ids["test"]
        assert len(data["y_pred"]) == len(splits.test_y) and data["test_hash"] == splits.test_hash
    local = collect_cells(summary["study_run_id"], out)
    # without the study folder the predictions come from the runs' artifacts, the same numbers
    remote = collect_cells(summary["study_run_id"], out / "nowhere")
    for a, b in zip(local["y_pred"], remote["y_pred"]):
        np.testing.assert_array_equal(a, b)


def test_table_csv_tstr_and_generator_columns(tiny, tmp_path):
    summary, out = tiny
    csv = pd.read_csv(summary["results_csv"])
    assert set(REQUIRED) <= set(csv.columns)
    assert list(csv["set"]) == ["real", "hflip", "dcgan", "tstr-dcgan"]
    rows = csv.set_index("set")
    assert rows.loc["real", "verdict"] == "baseline" and rows.loc["real", "delta"] == 0
    assert rows.loc["hflip", "verdict"] in ("helps", "hurts", "no detectable difference")
    # one compare_cells call over the table: Holm across its 3 comparisons (p_holm >= p, <= 3 p)
    tested = rows.drop(index="real")
    assert tested["p_value"].notna().all() and (tested["p_holm"] >= tested["p_value"] - 1e-12).all()
    assert (tested["p_holm"] <= np.minimum(1, 3 * tested["p_value"]) + 1e-12).all()
    assert (tested["delta_lo"] <= tested["delta"] + 1e-12).all() and (tested["delta"] <= tested["delta_hi"] + 1e-12).all()
    assert (csv["n_test"] == 34).all() and (csv["n_seeds"] == 1).all()
    # TSTR: its own row, read as utility; GAN rows carry the generator's fidelity
    assert rows.loc["tstr-dcgan", "verdict"].startswith("utility: ")
    for s in ("dcgan", "tstr-dcgan"):
        for g in GEN:
            assert rows.loc[s, g] == pytest.approx(QUALITY[g[4:]]) and rows.loc[s, g + "_lo"] == pytest.approx(
                QUALITY[g[4:] + "_lo"])
        assert bool(rows.loc[s, "gen_usable"]) is True
    assert rows[list(GEN)].loc[["real", "hflip"]].isna().all().all()
    sens = pd.read_csv(Path(summary["results_csv"]).with_name("results_sensitivity.csv"))
    assert {"class", "delta", "delta_lo", "delta_hi", "p_holm", "verdict"} <= set(sens.columns)
    # `study-results --csv` writes the same columns (and numbers), from MLflow
    proc = subprocess.run([sys.executable, "-m", "core", "study-results", "--study", summary["study_run_id"], "--csv",
                           str(tmp_path / "again.csv")], cwd=ROOT, capture_output=True, text=True, timeout=180,
                          check=False)
    got = json.loads(proc.stdout.splitlines()[-1])
    assert got["ok"], proc.stdout[-2000:] + proc.stderr[-2000:]
    again = pd.read_csv(tmp_path / "again.csv")
    assert list(again.columns) == list(csv.columns)
    pd.testing.assert_frame_equal(again, csv)
    assert got["verdict"] == summary["verdict"]


def test_unusable_generator_is_not_judged(tiny):
    from core.study.results import results_table
    from core.study.store import collect_cells
    from core.study.verdict import verdict_text

    summary, out = tiny
    cells = collect_cells(summary["study_run_id"], out)
    gan = cells["set"].isin(["dcgan", "tstr-dcgan"])
    cells.loc[gan, "gen_usable"] = False
    cells.loc[gan, "gen_reason"] = "KID 0.31 above the 0.1 limit"
    table = results_table(cells, "macro_f1", order=("real", "hflip", "dcgan", "tstr-dcgan"), n_boot=200, n_perm=200)
    rows = table.set_index("set")
    for s in ("dcgan", "tstr-dcgan"):
        assert rows.loc[s, "verdict"] == "generator unusable: KID 0.31 above the 0.1 limit"
        assert rows.loc[s, "verdict_stat"] in ("helps", "hurts", "no detectable difference")   # still measured
    text = " ".join(verdict_text(table, {"name": "phantom-small", "synthetic": True}))
    assert "unusable (KID 0.31 above the 0.1 limit)" in text


def numbers(text: str) -> list[str]:
    return re.findall(r"[+-]?\d+\.\d+", text)


def test_verdict_quotes_the_tables_numbers(tiny):
    summary, out = tiny
    lines = summary["verdict"]
    assert lines[0].startswith("On phantom-small (synthetic data), 1 seed, 34 test images")
    assert (out / "verdict.txt").read_text().splitlines() == lines
    csv = pd.read_csv(summary["results_csv"])
    sens = pd.read_csv(Path(summary["results_csv"]).with_name("results_sensitivity.csv"))
    values = pd.concat([csv.select_dtypes("number").stack(), sens.select_dtypes("number").stack()])
    quoted = {f"{v:.2f}" for v in values} | {f"{v:+.2f}" for v in values} | {f"{v:.2g}" for v in values}
    for line in lines[1:]:
        for n in numbers(line):
            assert n in quoted, (n, line)
    tstr = [ln for ln in lines if ln.startswith("TSTR")]
    assert len(tstr) == 1 and f"{csv.set_index('set').loc['tstr-dcgan', 'mean']:.2f}" in tstr[0]


def test_report_opens_with_the_answer(tiny, tmp_path):
    import html

    from core.report import build_report

    summary, _ = tiny
    text = html.unescape(build_report([summary["study_run_id"]], grids_per_run=1))
    assert "The study's answer" in text and summary["verdict"][0] in text
    assert text.index("The study's answer") < text.index("<h2>Runs</h2>")


def test_shuffled_label_control_finds_nothing(small_phantom, tmp_path):
    """The null control: every cell trains on shuffled labels, so nothing can truly help or hurt."""
    from core.study.run import run_study

    summary = run_study(small_phantom.root, StudyConfig(**TINY, sets=("real", "hflip"), shuffle_labels=True),
                        tmp_path / "null", log=quiet)
    (row,) = [r for r in summary["table"] if r["set"] == "hflip"]
    assert row["verdict"] == "no detectable difference", row


def planted_cells(rng_seed: int = 0) -> tuple[pd.DataFrame, int]:
    """Real-only cells (3 seeds) with ~70% accuracy on a 400-image imbalanced test split, and a set
    "more" whose classifier finds every image of the minority class 3 that real only missed (the
    planted effect: more real images of that class), elsewhere the same predictions."""
    rng = np.random.default_rng(rng_seed)
    classes = ["No finding", "Osteophytes", "Disc space narrowing", "Vertebral collapse"]
    y = np.repeat(np.arange(4), [200, 120, 50, 30])
    rows = []
    for seed in range(3):
        real = np.where(rng.random(len(y)) < 0.7, y, rng.integers(0, 4, len(y)))
        real[(y == 3) & (rng.random(len(y)) < 0.6)] = 0      # real only misses most collapses
        more = real.copy()
        more[y == 3] = 3
        for s, p in (("real", real), ("more", more)):
            rows.append({"cell": f"{s}|small_cnn|s{seed}", "set": s, "network": "small_cnn", "seed": seed,
                         "macro_f1": math.nan, "macro_f1_ci_low": math.nan, "macro_f1_ci_high": math.nan,
                         "classes": classes, "test_hash": "x", "y_pred": p, "y_true": y})
    return pd.DataFrame(rows), 3


def test_planted_effect_is_found_with_the_right_sign():
    from core.study import stats
    from core.study.results import delta_sensitivity, results_table, sensitivity_table
    from core.study.verdict import verdict_text

    cells, k = planted_cells()
    for i, r in cells.iterrows():   # the cells' own metric values, as MLflow would hold them
        cells.at[i, "macro_f1"] = float(stats.metric_by_seed(r["y_true"], r["y_pred"][None], "macro_f1")[0])
    table = results_table(cells, "macro_f1", order=("real", "more"), n_boot=500, n_perm=500)
    row = table.set_index("set").loc["more"]
    assert row["verdict"] == "helps" and row["delta"] > 0 and row["delta_lo"] > 0 and row["p_holm"] < 0.05
    assert row["n_seeds"] == 3 and row["n_test"] == 400 and math.isfinite(row["seed_sd"]) and row["mde"] > 0
    sens = sensitivity_table(cells, order=("real", "more"), n_boot=500, n_perm=500)
    by_class = sens.set_index("class")
    hit = by_class.loc["Vertebral collapse"]
    assert hit["verdict"] == "helps" and hit["delta"] > 0.4 and hit["delta_lo"] > 0 and hit["mean"] == 1.0
    # the other classes' predictions did not change: no effect there
    assert (by_class.drop(index="Vertebral collapse")["delta"] == 0).all()
    assert set(by_class.drop(index="Vertebral collapse")["verdict"]) == {"no detectable difference"}
    # Holm across classes x sets: p_holm >= p, and the heatmap holds the same paired Δ
    assert (sens["p_holm"] >= sens["p_value"] - 1e-12).all()
    heat = delta_sensitivity(cells, "small_cnn", sensitivity=sens)
    assert heat.loc["more", "Vertebral collapse"] == pytest.approx(hit["delta"])
    text = verdict_text(table, {"name": "planted", "synthetic": True}, sens)
    assert any(f"raised Vertebral collapse sensitivity by {hit['delta']:+.2f}" in ln for ln in text), text
    assert any(f"raised macro-F1 by {row['delta']:+.2f}" in ln for ln in text), text


# --- real means real ------------------------------------------------------------------------------

def test_is_real_source():
    from core.data.manifest import GENERATOR_PREFIXES, is_real_source, real_rows

    assert GENERATOR_PREFIXES == ("classic:", "gan:", "diffusion:")
    assert [is_real_source(s) for s in ("phantom", "real", "vindr", "gan:abc", "classic:9f", "diffusion:x")] == [
        True, True, True, False, False, False]
    mask = real_rows(pd.DataFrame({"source": ["phantom", "gan:1", "classic:2"]}))
    assert mask.tolist() == [True, False, False] and mask.flags.writeable


def test_no_synthetic_row_reaches_real_consumers(small_phantom, tmp_path, monkeypatch):
    """An active dataset holding classic (hflip) copies and hand-made gan: rows: GAN training, the
    quality reference, the domain encoder, the classifier and the study see its real rows only."""
    from core.augment.apply import AugmentConfig, augment_dataset
    from core.augment.pipeline import Pipeline, Step
    from core.classify.data import classifier_splits
    from core.data import manifest as mf
    from core.data.cache import pixel_cache
    from core.data.datasets import load_dataset
    from core.generator_job import training_images
    from core.quality import features
    from core.quality.evaluate import real_train
    from core.study.sets import load_splits

    augment_dataset(small_phantom, AugmentConfig(Pipeline((Step("hflip", {}, 1.0),)), copies=1), tmp_path / "aug",
                    track=False, workers=1)
    m = mf.read_manifest(tmp_path / "aug" / "manifest.parquet")
    fake = m[m["source"].str.startswith("classic:")].head(6).copy()
    fake["image_id"] = [f"gan-{i}" for i in range(len(fake))]
    fake["source"] = "gan:handmade"
    mf.write_manifest(pd.concat([m, fake], ignore_index=True), tmp_path / "aug" / "manifest.parquet")
    ds = load_dataset(tmp_path / "aug")
    synthetic = ~mf.real_rows(ds.manifest)
    assert synthetic.sum() > 6 and set(ds.manifest["split"][synthetic]) == {"train"}

    def real_train_digests(size):
        df, cache = small_phantom.manifest, pixel_cache(small_phantom, size)
        rows = np.flatnonzero((df["split"] == "train").to_numpy() & cache.ok)
        return sorted(np.asarray(cache.array[i]).tobytes() for i in rows)

    want = real_train_digests(16)
    images, labels, _ = training_images(ds, 16, None, True)              # GAN training
    assert sorted(x.tobytes() for x in images) == want and len(labels) == len(want)
    ref, _, ids = real_train(ds, 16)                                     # the quality reference
    assert sorted(x.tobytes() for x in ref) == want and not any(i.startswith("gan-") for i in ids)

    seen = {}

    def fake_train(images, labels, classes, size, epochs, seed, on_progress=None):
        seen["images"] = images
        raise RuntimeError("stop after recording the encoder's training set")

    monkeypatch.setattr(features, "train_domain_encoder", fake_train)
    with pytest.raises(RuntimeError, match="stop after recording"):
        features.domain_encoder(ds, size=16, epochs=1)                   # the domain encoder
    assert sorted(x.tobytes() for x in seen["images"]) == want

    clf = classifier_splits(ds, 16)                                      # the classifier
    assert sorted(x.tobytes() for x in clf.train[0]) == want
    assert any("synthetic/augmented" in n for n in clf.notes)
    splits = load_splits(ds, 16)                                         # the study
    assert sorted(x.tobytes() for x in splits.train_x) == want
    base = load_splits(small_phantom, 16)
    assert splits.test_hash == base.test_hash and splits.train_hash == base.train_hash
