"""`study --executor ray` against a real `mlflow server` on loopback that is lost while the cells train
(issue 18, "Faults"): every cell trains to its end in its Ray task and spills what the server did not
take under MEDAUG_HOME/tracking-spill/RUN_ID; the study ends `failed` with a message naming each folder
to replay and then `--resume` / `study-results`; once the server is back and the spills are replayed,
the table equals the tiny study's run in-process with the server up, with one child run per cell. When
the server comes back before the study ends, the study sends the spills itself and writes the table.

The cells are held in their first epoch by a Ray worker setup hook (:func:`worker_setup`) until the test
has killed the server (every cell's child run exists by then, and its first epoch is queued), so the
kill lands mid-cell however fast the tiny cells train.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from core.study.grid import Cell, StudyConfig, cells
from test_study import TINY
from test_study_ray import assert_same_table, children_by_cell, local_ray, quiet
from test_tracking_server import free_port, start_server, stop_server

HOLD_DIR_ENV = "MEDAUG_TEST_RAY_HOLD_DIR"
CELL_KEYS = sorted(c.key for c in cells(StudyConfig(**TINY)))


def worker_setup() -> None:
    """Runs in every Ray worker at its start: a cell that ends its first epoch (logged to its run)
    writes ``held-<pid>`` and waits for ``go`` (at most 5 minutes)."""
    folder = os.environ.get(HOLD_DIR_ENV)
    if not folder:
        return
    import core.classify.train as ctrain

    real = ctrain.train_classifier

    def train_classifier(config, *args, on_epoch=None, **kwargs):
        def epoch_then_hold(epoch, metrics):
            if on_epoch:
                on_epoch(epoch, metrics)
            (Path(folder) / f"held-{os.getpid()}").write_text(str(epoch))
            deadline = time.monotonic() + 300
            while not (Path(folder) / "go").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        return real(config, *args, on_epoch=epoch_then_hold, **kwargs)

    ctrain.train_classifier = train_classifier


@pytest.fixture(scope="module")
def ray_hold(tmp_path_factory):
    """A local Ray on loopback with 3 CPUs (the generator and two cells, then the third cell, so all
    three cells can be held at once); workers run :func:`worker_setup`. Yields the hold folder."""
    hold = tmp_path_factory.mktemp("ray-hold")
    with local_ray(3, "test_study_ray_tracking.worker_setup", {HOLD_DIR_ENV: str(hold)}):
        yield hold


class Server:
    """The team server of README 'Team tracking server' on loopback: killed (SIGKILL) and restarted on
    the same port and store."""

    def __init__(self, folder: Path):
        self.folder, self.port = folder, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self) -> None:
        self.proc = start_server(self.folder, self.port)

    def kill(self) -> None:
        stop_server(self.proc)


@pytest.fixture(scope="module")
def server(small_phantom, tmp_path_factory):
    """The server, and the tiny study run in-process against it while it is up (one torch thread, the
    Ray workers' count: CPU results repeat exactly for the same thread count): ``(server, summary)``."""
    import torch

    from core.study.run import run_study

    t0 = time.perf_counter()
    srv = Server(tmp_path_factory.mktemp("server"))
    srv.start()
    t1 = time.perf_counter()
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", srv.uri)
    mp.setenv("MEDAUG_HOME", str(tmp_path_factory.mktemp("home-reference")))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = run_study(small_phantom.root, StudyConfig(**TINY), tmp_path_factory.mktemp("local") / "s",
                              log=quiet)
    finally:
        torch.set_num_threads(before)
        mp.undo()
    print(f"mlflow server up in {t1 - t0:.1f} s; the tiny study in-process against it in {time.perf_counter() - t1:.1f} s")
    yield srv, reference
    stop_server(srv.proc)


def kill_when_held(hold: Path, srv: Server, seen: dict, restart_once_spilled: Path | None,
                   timeout_s: float = 240) -> None:
    """Once every cell is held in its first epoch: kill the server and let the cells go. With
    ``restart_once_spilled`` (a spill root), start the server again once every cell has spilled there."""
    deadline = time.monotonic() + timeout_s
    while len(list(hold.glob("held-*"))) < len(CELL_KEYS) and time.monotonic() < deadline:
        time.sleep(0.1)
    seen["held"] = len(list(hold.glob("held-*")))
    try:
        srv.kill()
        seen["killed"] = time.time()
    finally:
        (hold / "go").write_text("")
    if restart_once_spilled is None:
        return
    try:
        while (len(list(restart_once_spilled.glob("*/pending.json"))) < len(CELL_KEYS)
               and time.monotonic() < deadline):
            time.sleep(0.1)
        seen["spilled"] = len(list(restart_once_spilled.glob("*/pending.json")))
        srv.start()
    finally:
        seen["restarted"].set()


def run_cli(capsys, *argv: str) -> tuple[int, dict, str]:
    """``python -m core ARGV`` in this process (its Ray session is the test's): (rc, JSON line, all output)."""
    from core.cli import main

    capsys.readouterr()
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, json.loads(out.out.strip().splitlines()[-1]), out.out + out.err


def study_with_the_server_lost(srv: Server, hold: Path, phantom, tmp_path, monkeypatch, capsys, back_before_end: bool):
    """The tiny study from the CLI on Ray, the server killed once its three cells are in their first
    epoch. ``back_before_end``: it is started again once the cells have spilled, while the study records
    its last cell (held there until then: the study's end must find the server back, whatever the timing)."""
    from core.study.run import CellProgress

    for f in hold.glob("*"):
        f.unlink()
    home = tmp_path / "home"
    seen: dict = {"restarted": threading.Event()}
    if back_before_end:
        finished = CellProgress.finished

        def finished_then_wait(self, cell, summary, **extra):
            finished(self, cell, summary, **extra)
            if self.n_finished == len(CELL_KEYS):
                seen["restarted"].wait(240)
        monkeypatch.setattr(CellProgress, "finished", finished_then_wait)
    monkeypatch.setenv("MEDAUG_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", srv.uri)
    # a refused request fails at once, here and in the tasks (core.tracking's defaults retry ~3 s a call;
    # tests/test_tracking_server.py runs with them)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    out = tmp_path / "ray"
    config = tmp_path / "study.json"
    config.write_text(json.dumps({**TINY, "preset": "quick", "data": str(phantom.root), "out": str(out),
                                  "executor": "ray"}))
    killer = threading.Thread(target=kill_when_held, daemon=True,
                              args=(hold, srv, seen, home / "tracking-spill" if back_before_end else None))
    killer.start()
    t0 = time.perf_counter()
    rc, summary, output = run_cli(capsys, "study", "--config", str(config))
    killer.join(60)
    with capsys.disabled():
        print(f"\nray study with the server lost: {time.perf_counter() - t0:.1f} s, rc {rc}")
    assert seen.get("held") == len(CELL_KEYS) and "killed" in seen, (seen, output[-3000:])
    if back_before_end:
        assert seen.get("spilled") == len(CELL_KEYS), (seen, output[-3000:])
    return rc, summary, output, out, home, config


def cell_folder(out: Path, key: str) -> Path:
    s, network, seed = key.split("|")
    return out / "cells" / Cell(s, network, int(seed[1:])).slug


def test_server_lost_until_the_end_cells_train_on_spill_and_replay_into_the_same_table(
        ray_hold, server, small_phantom, tmp_path, monkeypatch, capsys):
    from core import tracking

    srv, reference = server
    rc, summary, output, out, home, config = study_with_the_server_lost(srv, ray_hold, small_phantom, tmp_path,
                                                                       monkeypatch, capsys, back_before_end=False)
    status = json.loads((out / "status.json").read_text())
    run_id = status["run_id"]
    message = status["message"]
    with capsys.disabled():
        print(f"status.json: {status['state']}: {message}")
    # the study ends failed with one readable message (the CLI's error, no traceback) saying what to run
    assert rc == 2 and summary["ok"] is False and summary["error"] == message
    assert status["state"] == "failed" and status["cells_done"] == 3 and status["failed"] == {}
    assert f"error: {message}" in output and "Traceback" not in output
    assert f"The tracking store {srv.uri} was lost" in message and "the table is made from MLflow" in message
    assert f"python -m core study --resume --out {out}" in message
    assert f"python -m core study-results --study {run_id}" in message
    assert not (out / "results.csv").exists()
    # every cell trained to its end, in its Ray task, and spilled what the server did not take
    spills = [Path(p) for p in status["tracking_spilled"]]
    assert len(spills) == 4 and all(p.parent == home / "tracking-spill" for p in spills)
    assert sorted(spills) == sorted((home / "tracking-spill").iterdir())
    for p in spills:
        assert f"`python -m core tracking-replay {p}`" in message
    assert spills[-1].name == run_id                  # the study run's own data (cells_done, its end)
    cell_runs = {}
    for p in spills[:-1]:
        pending = json.loads((p / "pending.json").read_text())
        assert pending["tracking_uri"] == srv.uri and pending["run_id"] == p.name
        tags = next(a["args"][0] for a in pending["actions"] if a["kind"] == "set_tags")
        assert [a for a in pending["actions"] if a["kind"] == "terminate"] == [{"kind": "terminate",
                                                                               "args": ["FINISHED"]}]
        keys = {json.loads(line)["key"] for line in (p / "metrics.jsonl").read_text().splitlines()}
        assert "test_macro_f1" in keys                # measured after the kill
        cell_runs[p.name] = tags["medaug.study.state"]
    for key in CELL_KEYS:
        report = json.loads((cell_folder(out, key) / "metrics.json").read_text())
        assert report["state"] == "finished" and report["metrics"]["macro_f1"] is not None
    assert len(cell_runs) == 3

    srv.start()                                       # back, same store
    for p in spills:
        rc, done, text = run_cli(capsys, "tracking-replay", str(p))
        assert rc == 0, text[-2000:]
        assert not p.exists()
    rc, table, text = run_cli(capsys, "study-results", "--study", run_id, "--csv", str(tmp_path / "after.csv"))
    assert rc == 0, text[-2000:]
    assert_same_table(table, reference)
    children = children_by_cell(run_id)
    assert sorted(children) == CELL_KEYS
    for key, runs in children.items():                # one child per cell, FINISHED, each epoch once
        assert [r.info.status for r in runs] == ["FINISHED"], key
        assert runs[0].info.run_id in cell_runs
        steps = [m.step for m in tracking.client().get_metric_history(runs[0].info.run_id, "train_loss")]
        assert steps == [1], (key, steps)
    assert tracking.client().get_run(run_id).info.status == "FINISHED"

    rc, resumed, text = run_cli(capsys, "study", "--config", str(config), "--resume")
    assert rc == 0, text[-3000:]
    assert resumed["skipped"] == 3 and resumed["ran"] == 0 and resumed["tracking_spilled"] == []
    assert resumed["study_key"] == reference["study_key"] and resumed["study_run_id"] == run_id
    assert_same_table(resumed, reference)
    assert [len(runs) for runs in children_by_cell(run_id).values()] == [1, 1, 1]
    assert json.loads((out / "status.json").read_text())["state"] == "finished"
    assert not (home / "tracking-spill").exists() or not any((home / "tracking-spill").iterdir())


def test_server_back_before_the_study_ends_the_study_sends_the_spills_and_writes_the_table(
        ray_hold, server, small_phantom, tmp_path, monkeypatch, capsys):
    """The server is killed mid-cell and started again once every cell has spilled, before the study
    ends: the study finds the store back, sends the cells' spills itself and writes the table."""
    srv, reference = server
    rc, summary, output, out, home, config = study_with_the_server_lost(srv, ray_hold, small_phantom, tmp_path,
                                                                       monkeypatch, capsys, back_before_end=True)
    assert rc == 0, output[-3000:]
    assert summary["ran"] == 3 and summary["failed"] == {} and summary["tracking_spilled"] == []
    assert json.loads((out / "status.json").read_text())["state"] == "finished"
    assert_same_table(summary, reference)
    children = children_by_cell(summary["study_run_id"])
    assert sorted(children) == CELL_KEYS and all([r.info.status for r in runs] == ["FINISHED"]
                                                 for runs in children.values())
    assert not (home / "tracking-spill").exists() or not any((home / "tracking-spill").iterdir())
    sent = [line.strip() for line in output.splitlines() if "the store is back; sent what run" in line]
    with capsys.disabled():
        print("\n".join(sent))
    assert len(sent) == 3 and {line.split("sent what run ")[1].split()[0] for line in sent} == {
        runs[0].info.run_id for runs in children.values()}
