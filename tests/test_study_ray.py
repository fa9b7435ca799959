"""`study --executor ray` (core.study.ray_executor): on a local 2-CPU Ray cluster the tiny study's
table equals the in-process one; a cell whose worker is SIGKILLed mid-cell is retried by Ray into the
same MLflow child run (one FINISHED child per cell, the same table), and a study started in-process
resumes on Ray; ray is imported only by the Ray executor.

The worker kill comes from a Ray worker setup hook (:func:`worker_setup`, set by this module's
``ray.init``) that wraps the classifier trainer in every worker: once the test arms it (a file), the
first cell to end an epoch takes the file and SIGKILLs its own worker process.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from core.study.grid import StudyConfig, cells
from test_study import TINY   # the tiny grid of tests/test_study.py: real, crop, dcgan; 16 px; 1 epoch

ROOT = Path(__file__).resolve().parent.parent
KILL_DIR_ENV = "MEDAUG_TEST_RAY_KILL_DIR"
NUMBERS = ("mean", "ci_lo", "ci_hi", "delta", "delta_lo", "delta_hi", "p_holm")


def quiet(msg: str) -> None:
    pass


def need_ray():
    try:
        import ray
    except ImportError as e:   # a pinned requirement: missing is a broken install, not a reason to skip
        pytest.fail(f"ray is not installed ({e}); it is pinned in requirements.txt: "
                    f"`.venv/bin/pip install ray==2.60.0`")
    return ray


def worker_setup() -> None:
    """Runs in every Ray worker process at its start: arms the planted worker death."""
    folder = os.environ.get(KILL_DIR_ENV)
    if not folder:
        return
    import core.classify.train as ctrain

    real = ctrain.train_classifier

    def train_classifier(config, *args, on_epoch=None, **kwargs):
        planted = Path(folder) / "raise"   # holds the training-set size of the cell that raises
        if planted.exists() and planted.read_text() == str(len(args[0][1])):
            with open(Path(folder) / "raised", "a") as f:
                f.write(f"{os.getpid()}\n")
            raise ValueError("planted error in this cell")

        def epoch_then_die(epoch, metrics):
            if on_epoch:
                on_epoch(epoch, metrics)   # the child run holds this epoch: the worker dies mid-cell
            try:
                os.rename(Path(folder) / "armed", Path(folder) / "fired")   # atomic: one worker takes it
            except FileNotFoundError:
                return
            (Path(folder) / "killed.json").write_text(json.dumps({"pid": os.getpid(), "seed": config.seed,
                                                                  "n_train": len(args[0][1])}))
            os.kill(os.getpid(), signal.SIGKILL)
        return real(config, *args, on_epoch=epoch_then_die, **kwargs)

    ctrain.train_classifier = train_classifier


@contextlib.contextmanager
def local_ray(num_cpus: int, setup_hook: str, env: dict[str, str]):
    """A local Ray on loopback with ``num_cpus`` CPUs whose workers run ``setup_hook`` ("module.function")
    at their start, with ``env`` and this repository and tests/ on their path (one torch thread each)."""
    ray = need_ray()
    tests = str(Path(__file__).resolve().parent)
    path = os.pathsep.join([str(ROOT), tests] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    mp = pytest.MonkeyPatch()
    mp.setenv("PYTHONPATH", path)   # the executor hands this process's PYTHONPATH to its tasks
    t0 = time.perf_counter()
    ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1", configure_logging=False,
             runtime_env={"worker_process_setup_hook": setup_hook,
                          "env_vars": {**env, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}})
    print(f"ray: local {num_cpus}-CPU cluster up in {time.perf_counter() - t0:.1f} s")
    try:
        yield ray
    finally:
        ray.shutdown()
        mp.undo()


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A local Ray on loopback with 2 CPUs, for this module; workers run :func:`worker_setup`."""
    kill_dir = tmp_path_factory.mktemp("ray-kill")
    with local_ray(2, "test_study_ray.worker_setup", {KILL_DIR_ENV: str(kill_dir)}):
        yield kill_dir


@pytest.fixture(scope="module")
def in_process(small_phantom, tmp_path_factory, session_home):
    """The tiny study in this process at one torch thread (the Ray workers' count: CPU results
    repeat exactly for the same thread count)."""
    import torch

    from core.study.run import run_study

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    mp = pytest.MonkeyPatch()
    mp.setenv("MEDAUG_HOME", str(session_home))
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{session_home / 'mlflow.db'}")
    try:
        t0 = time.perf_counter()
        summary = run_study(small_phantom.root, StudyConfig(**TINY), tmp_path_factory.mktemp("local") / "s", log=quiet)
        summary["wall_s"] = time.perf_counter() - t0
    finally:
        mp.undo()
        torch.set_num_threads(before)
    return summary


def side_by_side(local: dict, ray: dict) -> str:
    rows = []
    for a, b in zip(local["table"], ray["table"]):
        rows.append({"set": a["set"], **{f"{k} local": a[k] for k in ("mean", "delta", "p_holm")},
                     **{f"{k} ray": b[k] for k in ("mean", "delta", "p_holm")},
                     "verdict local": a["verdict"][:24], "verdict ray": b["verdict"][:24]})
    return pd.DataFrame(rows).to_string(index=False)


def assert_same_table(got: dict, want: dict) -> None:
    assert [r["set"] for r in got["table"]] == [r["set"] for r in want["table"]]
    for row, ref in zip(got["table"], want["table"]):
        for k in NUMBERS:
            if ref[k] is None:
                assert row[k] is None, (k, row)
            else:
                assert row[k] == pytest.approx(ref[k], abs=1e-9), (k, row, ref)
        assert row["verdict"] == ref["verdict"] and row["n_seeds"] == ref["n_seeds"]
    pd.testing.assert_frame_equal(pd.read_csv(got["results_csv"], index_col=0),
                                  pd.read_csv(want["results_csv"], index_col=0), check_exact=False, rtol=1e-9)


def children_by_cell(parent_run_id: str) -> dict[str, list]:
    from core.study.store import TAG_CELL, child_runs

    out: dict[str, list] = {}
    for r in child_runs(parent_run_id):
        out.setdefault(r.data.tags[TAG_CELL], []).append(r)
    return out


def test_ray_study_table_equals_the_in_process_one(ray_cluster, in_process, small_phantom, tmp_path):
    from core.study.run import run_study

    out = tmp_path / "ray"
    t0 = time.perf_counter()
    got = run_study(small_phantom.root, StudyConfig(**TINY), out, log=quiet, executor="ray")
    wall = time.perf_counter() - t0
    print(f"\nin-process {in_process['wall_s']:.1f} s, ray {wall:.1f} s\n" + side_by_side(in_process, got))
    assert got["executor"] == "ray" and got["ran"] == 3 and got["failed"] == {}
    assert got["test_hash"] == in_process["test_hash"] and got["study_key"] == in_process["study_key"]
    assert_same_table(got, in_process)
    # each cell ran in a Ray worker (not this process) and is one FINISHED child of the study
    children = children_by_cell(got["study_run_id"])
    assert sorted(children) == sorted(c.key for c in cells(StudyConfig(**TINY)))
    assert all(len(runs) == 1 and runs[0].info.status == "FINISHED" for runs in children.values())
    pids = {runs[0].data.tags.get("medaug.pid") for runs in children.values()}
    assert str(os.getpid()) not in pids
    markers = [json.loads(p.read_text()) for p in (out / "cells").glob("*/ray-task.json")]
    assert len(markers) == 3 and all(m["pid"] != os.getpid() for m in markers)


def test_killed_worker_is_retried_into_one_child_and_a_local_study_resumes_on_ray(
        ray_cluster, in_process, small_phantom, tmp_path, monkeypatch):
    """The study starts in-process and stops at its second cell (a planted crash); `--resume` on Ray
    skips the finished cell and runs the other two, one of which loses its worker (SIGKILL) after its
    first epoch: Ray retries it, the retry continues the same MLflow child run, and the table equals
    the uninterrupted in-process one."""
    from core.study import sets
    from core.study.run import run_study

    config = StudyConfig(**TINY)
    real_set = sets.training_set

    def failing(set_key, *a, **k):
        if set_key == "crop":
            raise RuntimeError("simulated crash in the second cell")
        return real_set(set_key, *a, **k)

    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr(sets, "training_set", failing)
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            run_study(small_phantom.root, config, tmp_path / "s", log=quiet)
    finally:
        torch.set_num_threads(before)
    monkeypatch.setattr(sets, "training_set", real_set)

    (ray_cluster / "armed").write_text("")
    got = run_study(small_phantom.root, config, tmp_path / "s", resume=True, log=quiet, executor="ray",
                    ray_options={"max_retries": 2})
    killed = json.loads((ray_cluster / "killed.json").read_text())   # a worker did die mid-cell
    assert (ray_cluster / "fired").exists() and not (ray_cluster / "armed").exists()
    print(f"\nkilled worker pid {killed['pid']} (a cell of {killed['n_train']} training images) after epoch 1")
    assert got["skipped"] == 1 and got["ran"] == 2 and got["failed"] == {}
    assert_same_table(got, in_process)
    children = children_by_cell(got["study_run_id"])
    assert sorted(children) == sorted(c.key for c in cells(config))
    for key, runs in children.items():   # one child per cell, FINISHED, whichever executor and try ran it
        assert [r.info.status for r in runs] == ["FINISHED"], (key, [(r.info.run_id, r.info.status) for r in runs])
    resumed = [key for key, runs in children.items() if runs[0].data.tags.get("medaug.resumes")]
    assert len(resumed) == 1, resumed   # the killed cell's retry reopened its run
    status_pid = children[resumed[0]][0].data.tags.get("medaug.pid")
    assert status_pid != str(killed["pid"])   # ... from another worker process


def test_a_cell_that_raises_fails_with_its_reason_once_and_the_others_finish(ray_cluster, small_phantom, tmp_path):
    from core.study.run import run_study
    from core.study.sets import load_splits

    n = len(load_splits(small_phantom, 16).train_y)
    (ray_cluster / "raise").write_text(str(2 * n))   # the crop cell: the real images and one copy of each
    try:
        got = run_study(small_phantom.root, StudyConfig(**TINY), tmp_path / "s", log=quiet, executor="ray")
    finally:
        (ray_cluster / "raise").unlink()
    assert got["failed"] == {"crop|small_cnn|s0": "planted error in this cell"}
    assert len((ray_cluster / "raised").read_text().split()) == 1   # an exception is not retried
    assert got["ran"] == 2 and [r["set"] for r in got["table"]] == ["real", "dcgan"]
    children = children_by_cell(got["study_run_id"])
    assert [r.info.status for r in children["crop|small_cnn|s0"]] == ["FAILED"]
    assert all([r.info.status for r in children[k]] == ["FINISHED"] for k in ("real|small_cnn|s0", "dcgan|small_cnn|s0"))


def test_core_and_the_cli_do_not_import_ray():
    code = ("import sys, core, core.cli, core.study, core.study.run, core.study.commands, core.study.ray_executor; "
            "from core.cli import main; "
            "bad = [m for m in sys.modules if m == 'ray' or m.startswith('ray.')]; print(bad); assert not bad")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_executor_options_get_clear_errors(monkeypatch):
    import importlib.util

    from core.study.commands import validate
    from core.study.ray_executor import RayUnavailable

    job, _, _ = validate({"preset": "quick"})
    assert job["executor"] == "local"
    with pytest.raises(ValueError, match="--address is for --executor ray"):
        validate({"preset": "quick", "address": "auto"})
    with pytest.raises(ValueError, match="choose one of local, ray"):
        validate({"preset": "quick", "executor": "slurm"})
    with pytest.raises(ValueError, match="--plan-only writes job specs"):
        validate({"preset": "quick", "executor": "ray", "plan_only": True})
    with pytest.raises(ValueError, match="--max-retries"):
        validate({"preset": "quick", "executor": "ray", "max_retries": -1})
    job, _, config = validate({"preset": "quick", "executor": "ray", "address": "auto"})
    assert job["executor"] == "ray" and job["max_retries"] == 3 and config.key() == validate({"preset": "quick"})[2].key()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(RayUnavailable, match=r"pip install ray==2\.60\.0"):
        validate({"preset": "quick", "executor": "ray"})
