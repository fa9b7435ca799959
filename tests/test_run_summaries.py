"""core.runs for the pages' run pickers and GAN grids, on the temporary MLflow store of conftest.py:
run_summaries (plain records, the DIED status, an absent store), epoch_series / folder_grids /
gan_grids (a job folder first, else the run's artifacts), and core.quality.evaluate's epoch grids
read through them."""
from __future__ import annotations

import dataclasses
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from core import runs as R
from core import tracking


def png(path: Path, value: int = 0, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)
    return path


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_run_summaries_are_plain_records_of_one_kind(small_phantom):
    kind = f"test-kind-{uuid.uuid4().hex[:6]}"
    with tracking.start_run(kind, {"variant": "wgan", "resolution": 64}, run_name="first", dataset=small_phantom,
                            tags={"medaug.out": "/x/y"}) as first:
        pass
    with tracking.start_run(kind, {"variant": "dcgan"}, tags={tracking.TAG_PID: dead_pid(),
                                                              tracking.TAG_HOST: socket.gethostname(),
                                                              tracking.TAG_PID_START: ""}) as dying:
        found = R.run_summaries(kind)   # newest first; the second run is RUNNING, its process gone
        with tracking.start_run(f"{kind}-other", {"a": 1}):
            pass
        assert [s.run_id for s in R.run_summaries(kind)] == [dying.run_id, first.run_id]
    assert [s.run_id for s in found] == [dying.run_id, first.run_id]
    s = found[1]
    assert isinstance(s, R.RunSummary) and s.name == "first" and s.status == "FINISHED"
    assert s.dataset_id == small_phantom.id and s.tags["medaug.out"] == "/x/y" and s.tags[tracking.TAG_KIND] == kind
    assert s.params == {"variant": "wgan", "resolution": "64"}
    assert type(s.tags) is dict and type(s.params) is dict   # plain data: nothing of MLflow's
    assert {f.name for f in dataclasses.fields(s)} == {"run_id", "name", "status", "dataset_id", "tags", "params"}
    assert found[0].status == tracking.DIED and found[0].dataset_id == "" and found[0].name   # MLflow names it
    assert R.run_summaries(kind, max_results=1)[0].run_id == dying.run_id
    assert R.run_summaries(f"{kind}-none") == []


def test_run_summaries_of_a_store_never_created(tmp_path, monkeypatch):
    db = tmp_path / "never.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    assert R.run_summaries("train-gan") == []
    assert not db.exists()   # listing created no store


def test_epoch_series_and_folder_grids(tmp_path):
    assert R.epoch_series(["grids/epoch_0010.png", "grids/epoch_0002.png", "grids/notes.txt", "grids/cover.png",
                           "grids/epoch_3.JPG"]) == [(2, "grids/epoch_0002.png"), (3, "grids/epoch_3.JPG"),
                                                     (10, "grids/epoch_0010.png")]
    out = tmp_path / "gan-job"
    assert R.folder_grids(out) == [] and R.gan_grids(out, None) == [] and R.gan_grids(None, None) == []
    for e in (12, 1, 2):
        png(out / R.GRIDS_DIR / f"epoch_{e:04d}.png")
    (out / R.GRIDS_DIR / "epoch_0003.png.tmp").write_bytes(b"half written")
    expected = [(e, str(out / R.GRIDS_DIR / f"epoch_{e:04d}.png")) for e in (1, 2, 12)]
    assert R.folder_grids(out) == expected and R.folder_grids(str(out)) == expected
    assert R.gan_grids(out, "no-such-run") == expected   # the job folder wins while it exists


def test_gan_grids_fall_back_to_the_runs_artifacts(tmp_path):
    with tracking.start_run(f"test-grids-{uuid.uuid4().hex[:6]}", {"a": 1}) as run:
        for e in (2, 1):
            run.log_artifact(png(tmp_path / "g" / f"epoch_{e:04d}.png", e), R.GRIDS_DIR)
        run.log_artifact(png(tmp_path / "samples.png"))
    assert R.gan_grids(tmp_path / "job-folder-gone", run.run_id) == [(1, "grids/epoch_0001.png"),
                                                                      (2, "grids/epoch_0002.png")]
    assert R.epoch_images(run.run_id) == {"grids": [(1, "grids/epoch_0001.png"), (2, "grids/epoch_0002.png")]}
    assert R.artifact_bytes(run.run_id, "grids/epoch_0002.png") == (tmp_path / "g" / "epoch_0002.png").read_bytes()


def test_grids_dir_is_where_train_gan_writes_and_quality_reads_them(tmp_path):
    from core.gan.train import GRIDS_DIR
    from core.quality.evaluate import epoch_sources

    assert R.GRIDS_DIR == GRIDS_DIR
    out = tmp_path / "run"
    out.mkdir()
    (out / "status.json").write_text('{"config": {"resolution": 8, "grid_size": 4, "class_name": "A"}}')
    for e in (10, 9):   # 2 x 2 tiles of 8 px with 2 px gaps, as make_grid lays them out
        png(out / GRIDS_DIR / f"epoch_{e:04d}.png", 10 * e, size=2 + 2 * (8 + 2))
    sets = epoch_sources(out)
    assert [(s.name, s.info["epoch"], Path(s.source).name) for s in sets] == [
        ("epoch 9", 9, "epoch_0009.png"), ("epoch 10", 10, "epoch_0010.png")]
    assert sets[0].images.shape == (4, 8, 8) and list(sets[0].labels) == ["A"] * 4
