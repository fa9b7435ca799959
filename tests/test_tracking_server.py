"""A team MLflow tracking server (issue 9): a real ``mlflow server`` on loopback with a SQL
store and served artifacts; a GAN job logs to it through MLFLOW_TRACKING_URI; the server is
lost mid-job and the job trains on, says so, saves what it could not send, and that is sent
once the server is back."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MLFLOW = Path(sys.executable).with_name("mlflow")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(folder: Path, port: int) -> subprocess.Popen:
    """The documented set-up (README, 'Team tracking server'), on loopback."""
    cmd = [str(MLFLOW), "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
           "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    # MLflow 3's job runner (GenAI jobs: 7 huey consumers, ~240 MB each) is not used by MedAug Studio
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(folder / f"server-{port}.log", "ab"),
                            start_new_session=True, env=env)
    deadline = time.monotonic() + 90
    import urllib.request
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).close()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError((folder / f"server-{port}.log").read_text()[-2000:])
            time.sleep(0.3)
    stop_server(proc)
    raise RuntimeError("mlflow server did not start in 90 s")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)   # abrupt, like a crashed server
        proc.wait(10)


@pytest.mark.timeout(240)
def test_job_against_a_server_that_is_lost_mid_job(tmp_path, small_phantom, monkeypatch):
    from core import tracking

    server_dir = tmp_path / "server"
    server_dir.mkdir()
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = start_server(server_dir, port)
    try:
        out = tmp_path / "job"
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT)}
        job = subprocess.Popen([sys.executable, "-m", "core", "train-gan", "--data", str(small_phantom.root),
                                "--out", str(out), "--resolution", "32", "--batch", "8", "--width", "8",
                                "--steps-per-epoch", "40", "--max-steps", "400", "--log-every", "5",
                                "--threads", "1", "--device", "cpu"],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        status_file = out / "status.json"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:   # let it log an epoch (metrics and a grid) to the server
            status = json.loads(status_file.read_text()) if status_file.is_file() else {}
            if status.get("epoch", 0) >= 1 and status.get("step", 0) >= 60:
                break
            assert job.poll() is None, job.stdout.read()
            time.sleep(0.2)
        else:
            pytest.fail("the job did not reach its second epoch in 120 s")
        stop_server(server)                  # the server is lost mid-job
        lost_at = status["step"]
        output, _ = job.communicate(timeout=180)
        assert job.returncode == 0, output[-3000:]
        status = json.loads(status_file.read_text())
        assert status["state"] == "finished" and status["step"] == 400 > lost_at   # it kept training
        assert "Training goes on" in output and uri in output
        assert "tracking-replay" in status["warning"]      # the status tells the page what happened
        spill = Path(status["warning"].split("tracking-replay ")[1].strip())
        assert (spill / "pending.json").is_file() and (spill / "metrics.jsonl").stat().st_size > 0

        server = start_server(server_dir, port)      # back again, same store
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        replay = subprocess.run([sys.executable, "-m", "core", "tracking-replay", str(spill)], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=60)
        assert replay.returncode == 0, replay.stdout + replay.stderr
        run_id = status["run_id"]
        c = tracking.client()
        run = c.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.tags[tracking.TAG_KIND] == "train-gan"
        steps = sorted(m.step for m in c.get_metric_history(run_id, "loss_d"))
        assert steps == list(range(5, 401, 5))          # every logged step is there, none twice
        assert tracking.list_artifacts(run_id, "grids") == [f"grids/epoch_{e:04d}.png" for e in range(1, 11)]
        assert tracking.list_artifacts(run_id, "checkpoint") == ["checkpoint/checkpoint.pt"]
        # and the app's listing works against the server
        assert run_id in {r.info.run_id for r in tracking.search_runs("train-gan")}
    finally:
        stop_server(server)
