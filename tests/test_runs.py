"""core.runs on a real (temporary) MLflow store filled through core.tracking: listing, filters,
study grouping, params diff, final/best metrics, curves in epochs, per-epoch image series,
rename / trash / restore, a missing store and an unreachable one."""
from __future__ import annotations

import os
import socket
import uuid
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core import runs as R
from core import tracking
from core.data.io import read_image


def grid_png(ds, path: Path, epoch: int, epochs: int, seed: int, n: int = 16, size: int = 48) -> Path:
    """A fake 4x4 'sample grid' of phantom images: noisy at epoch 1, clean at the last epoch,
    tinted per run so runs differ visibly."""
    rng = np.random.default_rng(seed * 1000 + epoch)
    paths = [ds.path_of(r) for _, r in ds.manifest.iloc[seed: seed + n].iterrows()]
    tiles = []
    for p in paths:
        img = np.asarray(Image.fromarray((read_image(p) * 255).astype(np.uint8)).resize((size, size)),
                         dtype=np.float32)
        noise = rng.normal(0, 255, img.shape) * (1 - epoch / epochs) ** 1.5
        tiles.append(np.clip(img * (0.6 + 0.4 * epoch / epochs) + noise, 0, 255))
    rows = [np.concatenate(tiles[i:i + 4], axis=1) for i in range(0, n, 4)]
    grid = np.concatenate(rows, axis=0).astype(np.uint8)
    tint = [(1.0, 1.0, 1.0), (1.0, 0.93, 0.85), (0.85, 0.93, 1.0), (0.9, 1.0, 0.9)][seed % 4]
    rgb = np.stack([grid * t for t in tint], axis=-1).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path


def fill_runs(experiment: str, ds, tmp: Path, n_gan: int = 3, epochs: int = 4, steps_per_epoch: int = 10,
              images: bool = True) -> dict[str, str]:
    """A study (parent, kind "study") with two classifier children, and ``n_gan`` GAN runs with
    per-epoch grids; returns name -> run id."""
    ids: dict[str, str] = {}
    with tracking.start_run("study", {"grid": {"nets": ["small_cnn"], "seeds": [0, 1]}}, run_name="study-A",
                            dataset=ds, experiment=experiment) as parent:
        ids["study-A"] = parent.run_id
    for seed in (0, 1):
        with tracking.start_run("classifier", {"net": "small_cnn", "seed": seed, "lr": 0.001, "epochs": epochs},
                                run_name=f"cls-seed{seed}", dataset=ds, parent_run_id=parent.run_id,
                                tags={"team": "spine"}, experiment=experiment) as run:
            for e in range(1, epochs + 1):
                run.log_metrics({"val_accuracy": 0.5 + 0.1 * e - 0.15 * seed * (e == epochs),
                                 "train_loss": 1.0 / e + seed * 0.1}, step=e)
            ids[f"cls-seed{seed}"] = run.run_id
    for i in range(n_gan):
        cfg = {"variant": ["dcgan", "wgan", "wgan-gp"][i % 3], "lr": 0.0002, "batch": 16,
               "resolution": 64, "steps_per_epoch": steps_per_epoch, "seed": i}
        with tracking.start_run("train-gan", cfg, run_name=f"gan-{cfg['variant']}", dataset=ds,
                                tags={"team": "gan" if i else "spine"}, experiment=experiment) as run:
            for s in range(1, epochs * steps_per_epoch + 1):
                run.log_metrics({"loss_d": 1.5 / s ** 0.5 + 0.1 * i, "loss_g": 0.5 + 0.02 * s + i * 0.05}, s)
                if s % steps_per_epoch == 0:
                    e = s // steps_per_epoch
                    run.log_metrics({"epoch": e}, s)
                    if images:
                        run.log_artifact(grid_png(ds, tmp / f"g{i}" / f"epoch_{e:04d}.png", e, epochs, i), "grids")
            ids[f"gan-{cfg['variant']}"] = run.run_id
    return ids


@pytest.fixture(scope="module")
def filled(session_home, small_phantom, tmp_path_factory):
    exp = f"test-runs-{uuid.uuid4().hex[:6]}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDAUG_HOME", str(session_home))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{session_home / 'mlflow.db'}")
        ids = fill_runs(exp, small_phantom, tmp_path_factory.mktemp("grids"), n_gan=2, epochs=3, images=True)
    return exp, ids


def test_list_filter_and_group(filled, small_phantom):
    exp, ids = filled
    table = R.list_runs([exp])
    assert set(table["run_id"]) == set(ids.values())
    assert table["start_time"].is_monotonic_decreasing
    assert set(table["kind"]) == {"study", "classifier", "train-gan"}
    assert set(table["dataset_hash"]) == {small_phantom.content_hash}
    # kind, without and with whole studies kept
    only = R.filter_runs(table, R.RunFilter(kinds=("classifier",), keep_family=False))
    assert set(only["name"]) == {"cls-seed0", "cls-seed1"}
    fam = R.filter_runs(table, R.RunFilter(kinds=("classifier",)))
    assert set(fam["name"]) == {"cls-seed0", "cls-seed1", "study-A"}
    # dataset hash by its first characters; an unknown one keeps nothing
    assert len(R.filter_runs(table, R.RunFilter(dataset_hashes=(small_phantom.content_hash[:8],)))) == len(table)
    assert R.filter_runs(table, R.RunFilter(dataset_hashes=("ffffffff0000",))).empty
    # tags: value and presence
    spine = R.filter_runs(table, R.RunFilter(tags=R.parse_tag_filter("team=spine"), keep_family=False))
    assert set(spine["name"]) == {"cls-seed0", "cls-seed1", "gan-dcgan"}
    assert set(R.filter_runs(table, R.RunFilter(tags={"team": ""}, keep_family=False))["name"]) == \
        set(ids) - {"study-A"}
    # dates (UTC days): today keeps all, a range ending yesterday none
    today = pd.Timestamp.now(tz="UTC").date()
    assert len(R.filter_runs(table, R.RunFilter(since=today, until=today))) == len(table)
    assert R.filter_runs(table, R.RunFilter(until=today - timedelta(days=1))).empty
    assert R.filter_runs(table, R.RunFilter(since=date(2999, 1, 1))).empty
    assert list(R.filter_runs(table, R.RunFilter(text="WGAN", keep_family=False))["name"]) == ["gan-wgan"]
    # grouping: the parent, then its children (oldest first); lone runs stand alone
    grouped = R.group_runs(table)
    names = list(grouped["name"])
    i = names.index("study-A")
    assert names[i + 1:i + 3] == ["cls-seed0", "cls-seed1"] and list(grouped["level"])[i:i + 3] == [0, 1, 1]
    assert grouped.iloc[i]["children"] == 2
    shown = R.display_table(grouped)
    assert shown.iloc[i]["run"] == "study-A  (2 runs)" and shown.iloc[i + 1]["run"].strip() == "↳ cls-seed0"
    assert R.with_children(grouped, [ids["study-A"]]) == [ids["study-A"], ids["cls-seed0"], ids["cls-seed1"]]
    assert R.children_of(ids["study-A"]) == [ids["cls-seed0"], ids["cls-seed1"]]
    with pytest.raises(ValueError, match="no tag name"):
        R.parse_tag_filter("=x")


def test_params_diff_metrics_and_curves(filled):
    _, ids = filled
    sel = R.get_runs([ids["gan-dcgan"], ids["gan-wgan"]])
    params = R.params_table(sel)
    diff = R.differing(params)
    assert set(params.index[diff]) == {"variant", "seed"}      # lr, batch... are equal
    assert list(params.index[:2]) == sorted(["variant", "seed"])  # differing first
    assert not diff[["lr", "batch", "resolution"]].any()
    # a param only one run has differs
    mixed = R.params_table(R.get_runs([ids["gan-dcgan"], ids["cls-seed0"]]))
    assert R.differing(mixed)["net"] and R.differing(mixed)["variant"]

    curves = R.curves(sel, ["loss_d"])
    assert set(curves["key"]) == {"loss_d"} and len(curves) == 2 * 30
    last = curves[curves["step"] == 30]
    assert np.allclose(last["epoch"], 3.0)                      # 10 steps per epoch
    summary = R.metrics_summary(sel)
    row = summary[(summary["run_id"] == ids["gan-wgan"]) & (summary["metric"] == "loss_d")].iloc[0]
    assert row["goal"] == "min" and row["best"] == pytest.approx(1.5 / 30 ** 0.5 + 0.1)
    assert row["final_step"] == 30 and row["best_step"] == 30 and "epoch" not in set(summary["metric"])

    cls = R.get_runs([ids["cls-seed0"], ids["cls-seed1"]])
    s = R.metrics_summary(cls)
    acc1 = s[(s["run_id"] == ids["cls-seed1"]) & (s["metric"] == "val_accuracy")].iloc[0]
    assert acc1["goal"] == "max" and acc1["best"] == pytest.approx(0.7) and acc1["best_step"] == 2
    assert acc1["final"] == pytest.approx(0.65)                 # final differs from best
    # no steps_per_epoch and no epoch metric: the step is the epoch
    assert np.allclose(R.curves(cls, ["train_loss"]).eval("epoch - step"), 0)
    wide = R.metrics_wide(s)
    assert wide.shape == (2, 4) and wide.loc["val_accuracy"].iloc[2] == pytest.approx(0.65)


def test_epoch_images_and_shared_slider(filled):
    _, ids = filled
    series = R.epoch_images(ids["gan-dcgan"])
    assert list(series) == ["grids"] and [e for e, _ in series["grids"]] == [1, 2, 3]
    assert series["grids"][0][1] == "grids/epoch_0001.png"
    assert R.epoch_images(ids["cls-seed0"]) == {}
    png = R.artifact_bytes(ids["gan-dcgan"], "grids/epoch_0002.png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # a run with fewer epochs follows the shared slider with its latest earlier image
    short = [(1, "a/epoch_1.png"), (3, "a/epoch_3.png")]
    assert R.shared_epochs([series["grids"], short]) == [1, 2, 3]
    assert R.image_at(short, 2) == (1, "a/epoch_1.png") and R.image_at(short, 3)[0] == 3
    assert R.image_at([(5, "x/epoch_5.png")], 2) == (5, "x/epoch_5.png") and R.image_at([], 1) is None
    found = R.epoch_images("unused", ["samples.png", "q/EPOCH-12.jpg", "q/epoch_3.png", "ckpt/epoch_3.pt"])
    assert found == {"q": [(3, "q/epoch_3.png"), (12, "q/EPOCH-12.jpg")]}
    assert R.other_images(["samples.png", "grids/epoch_1.png", "table.csv"]) == ["samples.png"]


def test_rename_trash_and_restore(small_phantom, tmp_path):
    exp = f"test-manage-{uuid.uuid4().hex[:6]}"
    with tracking.start_run("augment", {"p": 1}, run_name="old", experiment=exp) as run:
        pass
    rid = run.run_id
    R.rename_run(rid, "  new name ")
    assert R.list_runs([exp]).iloc[0]["name"] == "new name"
    with pytest.raises(ValueError, match="cannot be empty"):
        R.rename_run(rid, "   ")
    R.delete_runs([rid])
    assert R.list_runs([exp]).empty
    trash = R.list_runs([exp], deleted=True)
    assert list(trash["run_id"]) == [rid] and trash.iloc[0]["lifecycle"] == "deleted"
    R.restore_runs([rid])
    assert list(R.list_runs([exp])["run_id"]) == [rid] and R.list_runs([exp], deleted=True).empty
    with pytest.raises(ValueError, match="not in the tracking store"):
        R.get_runs(["0" * 32])


def test_missing_store_lists_nothing_and_creates_nothing(tmp_path, monkeypatch):
    db = tmp_path / "none" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    assert not R.store_exists() and R.experiments() == [] and R.list_runs().empty
    assert not db.exists()
    assert R.group_runs(R.list_runs()).empty and R.display_table(R.group_runs(R.list_runs())).empty


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]   # closed again when the socket is


def test_unreachable_server_fails_fast_with_the_uri(monkeypatch, http_calls):
    """Fast because it is one health check bounded by the timeout, never MLflow's client (whose
    retries and back-off wait for minutes)."""
    uri = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(tracking.StoreUnavailable, match=uri.replace(".", r"\.")):
        tracking.check_store(timeout_s=3.0)
    assert http_calls == [("probe", f"{uri}/health", 3.0)]


class CountingClient:
    """An MlflowClient that records the name of every method called on it."""

    def __init__(self, inner, calls: list[str]):
        self._inner, self._calls = inner, calls

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def counted(*args, **kwargs):
            self._calls.append(name)
            return attr(*args, **kwargs)
        return counted


def test_listing_a_small_store_is_one_query(session_home, small_phantom, tmp_path, monkeypatch):
    """30 runs list in one search of the store (no request per run) and filter, group and display
    without touching it: what keeps the page within its budget; bench/runs.py times 500."""
    exp = f"test-scale-{uuid.uuid4().hex[:6]}"
    for i in range(30):
        with tracking.start_run("train-gan", {"lr": i, "batch": 16}, run_name=f"r{i}", experiment=exp) as run:
            run.log_metrics({"loss_d": 1.0 / (i + 1)}, 1)
    calls: list[str] = []
    real_client = tracking.client
    monkeypatch.setattr(tracking, "client", lambda: CountingClient(real_client(), calls))
    table = R.list_runs([exp])
    assert len(table) == 30 and set(table["name"]) == {f"r{i}" for i in range(30)}
    assert sorted(calls) == ["search_experiments", "search_runs"], calls
    assert table["metrics"].map(len).eq(1).all() and table["params"].map(len).eq(2).all()  # all from that search
    calls.clear()
    shown = R.display_table(R.group_runs(R.filter_runs(table, R.RunFilter(kinds=("train-gan",)))))
    assert len(shown) == 30 and calls == []
    assert os.environ["MLFLOW_TRACKING_URI"].startswith("sqlite:")


def test_grouping_nested_and_looping_parents():
    t = pd.Timestamp("2026-01-01", tz="UTC")
    rows = [("a", "", 0), ("b", "a", 1), ("c", "b", 2), ("d", "a", 3), ("e", "", 4), ("x", "y", 5), ("y", "x", 6)]
    table = pd.DataFrame({"run_id": [r[0] for r in rows], "parent_run_id": [r[1] for r in rows],
                          "start_time": [t + pd.Timedelta(minutes=r[2]) for r in rows], "name": [r[0] for r in rows]})
    g = R.group_runs(table)
    assert list(g["run_id"]) == ["e", "a", "b", "c", "d", "x", "y"]
    assert list(g["level"]) == [0, 0, 1, 2, 1, 0, 0] and list(g["children"])[:5] == [0, 2, 1, 0, 0]
    assert set(g["group"].iloc[1:5]) == {"a"}
