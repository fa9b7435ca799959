"""core.tracking: store location, params once, metrics with steps, tags, run status."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from core import tracking


@dataclass(frozen=True)
class Inner:
    lr: float = 2e-4
    betas: tuple = (0.5, 0.999)


@dataclass(frozen=True)
class Config:
    variant: str = "dcgan"
    epochs: int = 3
    opt: Inner = field(default_factory=Inner)


def test_flatten_nested_dataclass():
    assert tracking.flatten(Config()) == {"variant": "dcgan", "epochs": "3", "opt.lr": "0.0002",
                                          "opt.betas": "[0.5, 0.999]"}
    with pytest.raises(TypeError):
        tracking.flatten(42)


def test_default_store_is_in_the_workspace(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("MEDAUG_HOME", str(tmp_path / "ws"))
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'ws' / 'mlflow.db'}"
    assert tracking.artifact_root() == (tmp_path / "ws" / "mlartifacts").as_uri()
    assert "mlflow server --backend-store-uri sqlite:///" in tracking.mlflow_ui_command()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking.tracking_uri() == "http://127.0.0.1:5999" and tracking.artifact_root() is None


def test_run_logs_params_once_metrics_with_steps_and_tags(small_phantom):
    with tracking.start_run("test-kind", Config(), dataset=small_phantom, run_name="t1") as run:
        for step in range(5):
            run.log_metrics({"loss": 1.0 / (step + 1), "acc": step / 10}, step=step)
        run.on_step(5, {"loss": 0.1})
    c = tracking.client()
    r = c.get_run(run.run_id)
    assert r.info.status == "FINISHED"
    assert r.data.params == tracking.flatten(Config())
    assert r.data.tags[tracking.TAG_KIND] == "test-kind"
    assert r.data.tags[tracking.TAG_DATASET_HASH] == small_phantom.content_hash
    assert r.data.tags[tracking.TAG_DATASET_ID] == small_phantom.id
    assert r.data.tags[tracking.TAG_CODE_VERSION]
    history = c.get_metric_history(run.run_id, "loss")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == [0, 1, 2, 3, 4, 5]
    assert sorted(history, key=lambda m: m.step)[2].value == pytest.approx(1 / 3)
    # params are immutable in MLflow: logging a changed value again must fail loudly
    from mlflow.exceptions import MlflowException
    with pytest.raises(MlflowException):
        c.log_param(run.run_id, "epochs", "4")


def test_failed_body_marks_run_failed_and_keeps_metrics():
    with pytest.raises(RuntimeError):
        with tracking.start_run("test-kind", {"a": 1}) as run:
            run.log_metrics({"loss": 3.0}, step=7)  # still buffered when the error comes
            raise RuntimeError("diverged")
    c = tracking.client()
    assert c.get_run(run.run_id).info.status == "FAILED"
    assert [m.step for m in c.get_metric_history(run.run_id, "loss")] == [7]


def test_parent_child_runs():
    with tracking.start_run("study", {"cells": 2}) as parent:
        with tracking.start_run("cell", {"i": 0}, parent_run_id=parent.run_id) as child:
            pass
    assert tracking.client().get_run(child.run_id).data.tags["mlflow.parentRunId"] == parent.run_id


def test_reading_metrics_and_artifacts_back(tmp_path):
    from PIL import Image

    with tracking.start_run("test-kind", {"a": 1}) as run:
        for step in range(3):
            run.log_metrics({"d_loss": step * 1.5, "g_loss": -step}, step=step)
        for epoch in (1, 2):
            img = tmp_path / f"epoch_{epoch:04d}.png"
            Image.new("L", (8, 8), color=epoch * 40).save(img)
            run.log_artifact(img, "samples")
    hist = tracking.metric_history(run.run_id)
    assert sorted(set(hist["key"])) == ["d_loss", "g_loss"]
    assert hist[hist["key"] == "d_loss"]["value"].tolist() == [0.0, 1.5, 3.0]
    assert tracking.list_artifacts(run.run_id, "samples") == ["samples/epoch_0001.png", "samples/epoch_0002.png"]
    local = tracking.download_artifact(run.run_id, "samples/epoch_0002.png", tmp_path / "dl")
    assert Image.open(local).getpixel((0, 0)) == 80


def test_search_runs_by_kind():
    with tracking.start_run("kind-a", {"x": 1}, run_name="a1"):
        pass
    with tracking.start_run("kind-b", {"x": 2}, run_name="b1"):
        pass
    with tracking.start_run("kind-a", {"x": 3}, run_name="a2"):
        pass
    names = [r.info.run_name for r in tracking.search_runs("kind-a")]
    assert names[:2] == ["a2", "a1"] and "b1" not in names


def test_two_processes_opening_a_fresh_store_at_once(tmp_path):
    """The app and a job may open a brand-new SQLite store together; neither may crash."""
    import subprocess
    import sys

    code = ("import sys; from core import tracking\n"
            "with tracking.start_run('race', {'i': sys.argv[1]}) as r: r.log_metrics({'x': 1.0}, step=0)\n"
            "print('ok')")
    env = {**__import__("os").environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'fresh.db'}"}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(i)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(3)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-800:] for _, err in results]


# --- a store that fails mid-run --------------------------------------------------------------

class FlakyClient:
    """Wraps a real MlflowClient; every call raises while ``down`` is set (a lost server)."""

    def __init__(self, real):
        self.real, self.down, self.calls = real, False, 0

    def __getattr__(self, name):
        attr = getattr(self.real, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            self.calls += 1
            if self.down:
                raise ConnectionError("Connection refused (the test's lost server)")
            return attr(*args, **kwargs)
        return call


def test_store_failure_mid_run_queues_reports_and_recovers(monkeypatch):
    messages: list[str] = []
    with tracking.start_run("test-kind", {"a": 1}, on_error=messages.append) as run:
        flaky = FlakyClient(run.client)
        run.client, run.retry_s = flaky, 0.0
        run.log_metrics({"loss": 1.0}, step=0)
        flaky.down = True
        for step in range(1, 4):          # training goes on: nothing raises
            run.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
            run.flush()
        run.set_tags({"medaug.test.tag": "x"})
        assert run.error and "Connection refused" in run.error
        assert len(messages) == 1 and "Training goes on" in messages[0] and "queued" in messages[0]
        flaky.down = False
        run.log_metrics({"loss": 0.1}, step=4)
        assert run.flush() and run.error is None
        assert "reachable again" in messages[-1]
    r = tracking.client().get_run(run.run_id)
    assert r.info.status == "FINISHED" and r.data.tags["medaug.test.tag"] == "x"
    steps = sorted(m.step for m in tracking.client().get_metric_history(run.run_id, "loss"))
    assert steps == [0, 1, 2, 3, 4]     # nothing was lost


def test_store_lost_until_the_end_spills_and_replays(tmp_path):
    import plotly.graph_objects as go

    messages: list[str] = []
    artifact = tmp_path / "grid.txt"
    artifact.write_text("epoch grid")
    with tracking.start_run("test-kind", {"a": 1}, on_error=messages.append) as run:
        flaky = FlakyClient(run.client)
        run.client = flaky
        flaky.down = True
        for step in range(3):
            run.log_metrics({"loss": float(step)}, step=step)
        run.flush()
        run.log_artifact(artifact, "grids")
        run.log_figure(go.Figure(go.Scatter(y=[1, 2])), "charts/curve.html")
    folder = tracking.spill_dir(run.run_id)
    assert (folder / "pending.json").is_file() and "tracking-replay" in messages[-1] and str(folder) in messages[-1]
    assert tracking.client().get_run(run.run_id).info.status == "RUNNING"   # the end never reached the store
    from core.cli import main
    assert main(["tracking-replay", str(folder)]) == 0
    c = tracking.client()
    r = c.get_run(run.run_id)
    assert r.info.status == "FINISHED" and not folder.exists()
    assert sorted(m.step for m in c.get_metric_history(run.run_id, "loss")) == [0, 1, 2]
    assert tracking.list_artifacts(run.run_id, "grids") == ["grids/grid.txt"]
    assert tracking.list_artifacts(run.run_id, "charts") == ["charts/curve.html"]


def test_unreachable_server_fails_fast_with_a_clear_message(monkeypatch, http_calls):
    import socket

    with socket.socket() as s:          # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    with pytest.raises(tracking.StoreUnavailable, match=f"127.0.0.1:{port} cannot be reached.*MLFLOW_TRACKING_URI"):
        with tracking.start_run("test-kind", {"a": 1}):
            pass
    # fast: the run gives up after one health check bounded by its timeout, before any MLflow
    # request (MLflow's client retries with back-off for minutes against a dead server)
    assert http_calls == [("probe", f"http://127.0.0.1:{port}/health", 3.0)]


def test_replay_refuses_a_folder_that_is_not_a_spill(tmp_path):
    with pytest.raises(ValueError, match="not a tracking spill folder"):
        tracking.replay(tmp_path)
