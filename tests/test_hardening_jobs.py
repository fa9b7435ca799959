"""Jobs fail honestly (issue 13, part C): a full disk ends a job as failed with the reason, a
killed run does not stay RUNNING and --resume continues it, one job per output folder, every
CLI failure ends with the JSON line, and nothing is created before the inputs are checked.

Training is tiny (32 px, width 8, a few steps, one thread); the kill -9 cases run the command
in a child process, as a job runner does."""
from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core import files, jobs, tracking
from core.cli import main

ROOT = Path(__file__).resolve().parent.parent
def tiny_gan(width: int = 8) -> list[str]:
    return ["--resolution", "32", "--batch", "16", "--width", str(width), "--nz", "16", "--class", "Osteophytes",
            "--steps-per-epoch", "5", "--log-every", "1", "--threads", "1", "--device", "cpu"]


TINY_GAN = tiny_gan()
# the same job as a config, as pages submit it (jobs.submit validates it first)
TINY_GAN_CONFIG = {"resolution": 32, "batch": 16, "width": 8, "nz": 16, "class": "Osteophytes", "steps_per_epoch": 5,
                   "log_every": 1, "threads": 1, "device": "cpu", "max_steps": 100000, "epochs": 100000}
TINY_CLS = ["--image-size", "32", "--batch-size", "16", "--threads", "1", "--n-boot", "10", "--device", "cpu",
            "--classes", "No finding,Osteophytes"]


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def runs_for(out: Path, deleted: bool = False) -> list:
    """MLflow runs whose tag medaug.out is ``out`` (active ones, or the trash)."""
    from mlflow.entities import ViewType

    c = tracking.client()
    exp = c.get_experiment_by_name(tracking.DEFAULT_EXPERIMENT)
    if exp is None:
        return []
    return c.search_runs([exp.experiment_id], filter_string=f"tags.`medaug.out` = '{out}'",
                         run_view_type=ViewType.DELETED_ONLY if deleted else ViewType.ACTIVE_ONLY)


def start(command: str, data: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "core", command, "--data", str(data), "--out", str(out), *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ})


def wait_status(folder: Path, ready, proc: subprocess.Popen | None = None, timeout: float = 120.0) -> dict:
    """status.json of ``folder`` once ``ready(status)`` holds (and a checkpoint exists)."""
    deadline = time.monotonic() + timeout
    status: dict = {}
    while time.monotonic() < deadline:
        try:
            status = json.loads((folder / "status.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            status = {}
        if status and ready(status) and (folder / "checkpoint.pt").is_file():
            return status
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the command ended early:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"{folder}: not ready after {timeout} s; last status {status}")


def kill9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


# --- every CLI failure ends with the JSON line ------------------------------------------------

@pytest.mark.parametrize("argv, command, words", [
    (["train-gan", "--variant", "stylegan"], "train-gan", ["--variant", "stylegan", "dcgan"]),
    (["generate", "--n", "3"], "generate", ["--checkpoint", "--out", "required"]),
    (["train-classifier", "--epochs", "many"], "train-classifier", ["--epochs", "many"]),
    (["trian-gan"], None, ["trian-gan", "train-gan"]),
])
def test_usage_errors_print_usage_then_the_json_line(argv, command, words, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    summary = last_json(captured.out)
    assert summary["ok"] is False and summary["command"] == command
    assert all(w in summary["error"] for w in words), summary
    assert "usage:" in captured.err and "error:" in captured.err


def test_a_subprocess_usage_error_exits_2_with_the_json_line_last():
    proc = subprocess.run([sys.executable, "-m", "core", "train-gan", "--variant", "stylegan"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env={**os.environ})
    assert proc.returncode == 2
    assert last_json(proc.stdout) == {"ok": False, "command": "train-gan", "error": (
        "argument --variant: invalid choice: 'stylegan' (choose from 'dcgan', 'wgan', 'wgan-gp'); "
        "see `python -m core train-gan --help`.")}
    assert proc.stderr.startswith("usage: python -m core train-gan")


def test_an_unexpected_exception_still_ends_with_the_json_line(monkeypatch, capsys):
    import core.jobs

    def boom(args):
        raise RuntimeError("something nobody expected")
    monkeypatch.setattr(core.jobs, "_cmd_jobs", boom)
    assert main(["jobs"]) == 2
    captured = capsys.readouterr()
    assert last_json(captured.out) == {"ok": False, "command": "jobs",
                                       "error": "RuntimeError: something nobody expected"}
    assert "Traceback" in captured.err


# --- validate everything before any side effect ------------------------------------------------

def test_cuda_without_a_gpu_is_refused_before_any_folder_or_run(small_phantom, tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for command, extra in (("train-gan", TINY_GAN), ("train-classifier", TINY_CLS)):
        out = tmp_path / command
        assert main([command, "--data", str(small_phantom.root), "--out", str(out), *extra, "--device", "cuda"]) == 2
        err = last_json(capsys.readouterr().out)["error"]
        assert "no CUDA GPU is visible" in err and "--device cpu" in err
        assert not out.exists(), f"{command} created {out} before refusing"
        assert runs_for(out) == [], f"{command} started an MLflow run before refusing"


def test_an_unusable_resume_checkpoint_is_refused_before_any_status_or_run(small_phantom, tmp_path, capsys):
    # classifier: a damaged checkpoint
    out = tmp_path / "cls"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert main(["train-classifier", "--data", str(small_phantom.root), "--out", str(out), *TINY_CLS,
                 "--epochs", "1", "--resume"]) == 2
    assert "cannot be read as a classifier checkpoint" in last_json(capsys.readouterr().out)["error"]
    assert not (out / "status.json").exists() and runs_for(out) == []
    # GAN: a checkpoint of another configuration
    out = tmp_path / "gan"
    assert main(["train-gan", "--data", str(small_phantom.root), "--out", str(out), *TINY_GAN, "--max-steps", "5"]) == 0
    first = last_json(capsys.readouterr().out)
    status_before = (out / "status.json").read_text()
    assert main(["train-gan", "--data", str(small_phantom.root), "--out", str(out), *TINY_GAN, "--width", "16",
                 "--max-steps", "10", "--resume"]) == 2
    error = last_json(capsys.readouterr().out)["error"]
    assert "cannot resume with a different configuration (width: 8 -> 16)" in error
    assert (out / "status.json").read_text() == status_before
    assert [r.info.status for r in runs_for(out)] == ["FINISHED"]
    assert tracking.client().get_run(first["run_id"]).info.status == "FINISHED"


def test_generate_force_keeps_the_old_folder_when_it_cannot_generate(tmp_path, capsys):
    out = tmp_path / "syn"
    out.mkdir()
    (out / "keep.txt").write_text("earlier work")
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"garbage")
    assert main(["generate", "--checkpoint", str(bad), "--n", "2", "--out", str(out), "--force"]) == 2
    assert "checkpoint" in last_json(capsys.readouterr().out)["error"]
    assert (out / "keep.txt").read_text() == "earlier work"


def test_balance_checks_every_checkpoint_before_writing(small_phantom, tmp_path, capsys):
    import numpy as np

    from core.gan.train import GanConfig, train_gan

    good = tmp_path / "good"
    train_gan(np.zeros((8, 32, 32), np.uint8), None, GanConfig(resolution=32, batch=8, width=8, nz=16, max_steps=2,
                                                              steps_per_epoch=2, class_name="Osteophytes",
                                                              device="cpu", threads=1), good)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    out = tmp_path / "balanced"
    assert main(["balance", "--data", str(small_phantom.root), "--classes", "Osteophytes", "Disc space narrowing",
                 "--checkpoint", f"Osteophytes={good / 'checkpoint.pt'}",
                 "--checkpoint", f"Disc space narrowing={bad}", "--out", str(out)]) == 2
    assert str(bad) in last_json(capsys.readouterr().out)["error"]
    assert not out.exists(), "balance wrote one class's images before finding the other checkpoint unreadable"


def test_quality_with_a_missing_set_creates_no_report_folder(small_phantom, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["quality", "--real", str(small_phantom.root), "--synthetic", str(tmp_path / "nowhere"),
                 "--out", str(out)]) == 2
    assert "no such file or folder" in last_json(capsys.readouterr().out)["error"]
    assert not out.exists()


def test_study_refusing_an_existing_study_leaves_its_status_alone(small_phantom, tmp_path, capsys):
    out = tmp_path / "study"
    out.mkdir()
    (out / "study.json").write_text(json.dumps({"study_run_id": "0123abcd", "study_key": "other"}))
    (out / "status.json").write_text(json.dumps({"kind": "study", "state": "finished", "message": "done"}))
    assert main(["study", "--data", str(small_phantom.root), "--out", str(out), "--preset", "quick"]) == 2
    assert "already holds study run 0123abcd" in last_json(capsys.readouterr().out)["error"]
    assert json.loads((out / "status.json").read_text())["state"] == "finished"


# --- a full disk ends the job as failed, with the reason ----------------------------------------

def test_write_json_final_overwrites_in_place_when_no_new_file_fits(tmp_path, monkeypatch):
    path = tmp_path / "status.json"
    files.write_json_atomic(path, {"state": "running", "message": "training", "losses": {"loss_d": 0.5}, "step": 7})

    def disk_full(p, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(p))
    monkeypatch.setattr(files, "write_json_atomic", disk_full)
    assert files.write_json_final(path, {"state": "failed", "message": "disk full", "losses": {"loss_d": 0.5},
                                        "step": 7})
    assert json.loads(path.read_text()) == {"state": "failed", "message": "disk full", "losses": {"loss_d": 0.5},
                                            "step": 7}
    long = "x" * 5000   # longer than the file: the essential fields alone, still in place
    assert files.write_json_final(path, {"state": "failed", "message": "disk full", "detail": long, "step": 7})
    assert json.loads(path.read_text())["state"] == "failed"


def test_train_gan_on_a_full_disk_ends_failed_with_the_reason(small_phantom, tmp_path, monkeypatch, capsys):
    """The checkpoint write fails with ENOSPC, and from then on no new file can be created."""
    import core.checkpoints
    import core.tracked

    full = {"now": False}
    real_atomic = files.write_json_atomic

    def atomic(path, data):
        if full["now"]:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_atomic(path, data)

    def save_checkpoint(path, state):
        full["now"] = True
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(files, "write_json_atomic", atomic)
    monkeypatch.setattr(core.tracked, "write_json_atomic", atomic)
    monkeypatch.setattr(core.checkpoints, "save", save_checkpoint)   # every trainer saves through it
    out = tmp_path / "job"
    assert main(["train-gan", "--data", str(small_phantom.root), "--out", str(out), *TINY_GAN,
                 "--max-steps", "10"]) == 2
    error = last_json(capsys.readouterr().out)["error"]
    assert error.startswith(f"Cannot write {out / 'checkpoint.pt'}: No space left on device (ENOSPC): "
                            f"the disk is full.")
    assert "--resume" in error
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "failed" and status["message"] == error
    assert tracking.client().get_run(status["run_id"]).info.status == "FAILED"
    with jobs.FolderLock(out, "test"):   # the job let go of its folder
        pass


def test_a_file_size_limit_in_a_child_process_fails_the_job_with_the_reason(small_phantom, tmp_path, monkeypatch):
    """RLIMIT_FSIZE (SIGXFSZ ignored): every write past the limit raises EFBIG, as on a full disk.
    The store is a fresh one, so that it stays below the limit while the checkpoint does not."""
    import resource

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracking.client()   # create the schema here, not under the limit
    limit = (tmp_path / "mlflow.db").stat().st_size + 1_500_000   # a width-32 checkpoint is about 4.4 MB

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    out = tmp_path / "job"
    proc = subprocess.run([sys.executable, "-m", "core", "train-gan", "--data", str(small_phantom.root), "--out",
                           str(out), *tiny_gan(width=32), "--max-steps", "5"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ}, preexec_fn=limited)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    error = last_json(proc.stdout)["error"]
    assert error.startswith(f"Cannot write {out / 'checkpoint.pt'}: File too large (EFBIG)"), error
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "failed" and status["message"] == error
    assert tracking.client().get_run(status["run_id"]).info.status == "FAILED"
    assert not (out / "checkpoint.pt").exists() and not list(out.glob("checkpoint.pt.tmp-*"))


def test_the_supervisor_ends_a_job_whose_command_could_not_write_its_status():
    """A command that dies with its status.json still at "running" (it could not write it): the job
    runner records failed, with the command's JSON error, in job.json and status.json."""
    folder = jobs.jobs_dir() / "20000101-000000-full00"
    folder.mkdir()
    (folder / "job.json").write_text(json.dumps({"state": "queued", "argv": ["dataset", "--data", "/nonexistent/x"],
                                                 "created": time.time()}))
    (folder / "status.json").write_text(json.dumps({"kind": "train-gan", "state": "running", "step": 40,
                                                    "pid": dead_pid(), "host": socket.gethostname()}))
    assert jobs.run_supervised(folder.name) == 2
    job = jobs.get_job(folder.name)
    assert job.state == "failed" and "not a MedAug dataset folder" in job.meta["error"]
    status = json.loads((folder / "status.json").read_text())
    assert status["state"] == "failed" and status["message"] == job.meta["error"] and status["step"] == 40


# --- one job per output folder ----------------------------------------------------------------

def test_folder_lock_names_its_holder_and_is_released(tmp_path, monkeypatch):
    monkeypatch.setenv(jobs.ENV_JOB_ID, "20260101-000000-abc123")
    with jobs.FolderLock(tmp_path, "train-gan") as lock:
        lock.note(run_id="r" * 32)
        with pytest.raises(jobs.FolderBusy) as busy:
            jobs.FolderLock(tmp_path, "train-classifier").acquire()
        message = str(busy.value)
        for part in (f"pid {os.getpid()} on {socket.gethostname()}", "started 20", "job 20260101-000000-abc123",
                     "MLflow run " + "r" * 32, "python -m core jobs --cancel 20260101-000000-abc123"):
            assert part in message, message
    with jobs.FolderLock(tmp_path, "train-classifier"):   # released: the next job may take it
        pass


def test_a_second_job_on_the_same_out_refuses_and_names_the_first(small_phantom, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEDAUG_MAX_JOBS", "4")
    out = tmp_path / "shared"
    first = jobs.submit("train-gan", {**TINY_GAN_CONFIG, "data": str(small_phantom.root), "out": str(out)},
                        label="first")
    try:
        status = wait_status(out, lambda s: s.get("state") == "running" and s.get("step", 0) > 0)
        for command, extra in (("train-gan", TINY_GAN), ("train-classifier", TINY_CLS)):
            assert main([command, "--data", str(small_phantom.root), "--out", str(out), *extra]) == 2
            error = last_json(capsys.readouterr().out)["error"]
            for part in (f"{out} is in use by train-gan", f"pid {status['pid']} on {socket.gethostname()}",
                         f"job {first.id}", f"MLflow run {status['run_id']}", "started "):
                assert part in error, error
        assert jobs.get_job(first.id).state == "running" and len(runs_for(out)) == 1
        assert json.loads((out / "status.json").read_text())["run_id"] == status["run_id"]   # untouched
    finally:
        jobs.cancel(first.id)


# --- kill -9 leaves no stale state ------------------------------------------------------------

def test_killed_train_gan_shows_died_and_resumes_into_the_same_mlflow_run(small_phantom, tmp_path, capsys):
    from core import runs
    from core.tracked import read_status
    from core.gan.train import load_checkpoint

    out = tmp_path / "job"
    proc = start("train-gan", small_phantom.root, out, *TINY_GAN, "--max-steps", "100000", "--epochs", "100000")
    try:
        wait_status(out, lambda s: s.get("state") == "running" and s.get("step", 0) >= 12, proc)
    finally:
        kill9(proc)
    (run,) = runs_for(out)
    run_id = run.info.run_id
    assert run.info.status == "RUNNING"                       # what MLflow itself still says
    assert read_status(out)["state"] == "died"                # the status file's process is gone
    listed = runs.list_runs()
    assert listed.loc[listed["run_id"] == run_id, "status"].item() == "DIED"
    resume_step = int(load_checkpoint(out / "checkpoint.pt")["step"])

    code = main(["train-gan", "--data", str(small_phantom.root), "--out", str(out), *TINY_GAN, "--resume",
                 "--max-steps", str(resume_step + 6), "--epochs", "100000"])
    printed = capsys.readouterr().out
    assert code == 0, printed[-3000:]
    summary = last_json(printed)
    assert summary["run_id"] == run_id and summary["steps"] == resume_step + 6
    (again,) = runs_for(out)
    assert again.info.run_id == run_id and again.info.status == "FINISHED"
    assert again.data.tags["medaug.resumes"] == "1" and "medaug.resumed_from" not in again.data.tags
    steps = [m.step for m in tracking.client().get_metric_history(run_id, "loss_d")]
    assert len(steps) == len(set(steps)), "a step was logged twice"
    assert set(range(1, resume_step + 7)) <= set(steps), f"the metric history has a gap: {sorted(steps)}"
    assert read_status(out)["state"] == "finished"


def test_a_deleted_run_is_marked_killed_and_the_resume_starts_a_named_new_run(small_phantom, tmp_path, capsys):
    out = tmp_path / "job"
    proc = start("train-gan", small_phantom.root, out, *TINY_GAN, "--max-steps", "100000", "--epochs", "100000")
    try:
        wait_status(out, lambda s: s.get("state") == "running" and s.get("step", 0) > 0, proc)
    finally:
        kill9(proc)
    (orphan,) = runs_for(out)
    tracking.client().delete_run(orphan.info.run_id)
    code = main(["train-gan", "--data", str(small_phantom.root), "--out", str(out), *TINY_GAN, "--resume",
                 "--max-steps", "40", "--epochs", "100000"])
    printed = capsys.readouterr().out
    assert code == 0, printed[-3000:]
    summary = last_json(printed)
    assert summary["run_id"] != orphan.info.run_id
    (new,) = runs_for(out)
    assert new.info.status == "FINISHED" and new.data.tags["medaug.resumed_from"] == orphan.info.run_id
    old = tracking.client().get_run(orphan.info.run_id)
    assert old.info.status == "KILLED" and old.info.lifecycle_stage == "deleted"   # still in the trash


def test_killed_train_classifier_resumes_into_the_same_mlflow_run(small_phantom, tmp_path, capsys):
    from core.classify.train import load_checkpoint

    out = tmp_path / "cls"
    proc = start("train-classifier", small_phantom.root, out, *TINY_CLS, "--epochs", "500", "--patience", "10000")
    try:
        wait_status(out, lambda s: s.get("state") == "running" and s.get("epoch", 0) >= 1, proc)
    finally:
        kill9(proc)
    (run,) = runs_for(out)
    epoch = int(load_checkpoint(out / "checkpoint.pt")["loop"]["epoch"])
    code = main(["train-classifier", "--data", str(small_phantom.root), "--out", str(out), *TINY_CLS,
                 "--epochs", str(epoch + 2), "--patience", "10000", "--resume"])
    printed = capsys.readouterr().out
    assert code == 0, printed[-3000:]
    summary = last_json(printed)
    assert summary["run_id"] == run.info.run_id and summary["epochs"] == epoch + 2
    (again,) = runs_for(out)
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    steps = [m.step for m in tracking.client().get_metric_history(run.info.run_id, "train_loss")]
    assert sorted(steps) == list(range(1, epoch + 3))


def test_a_killed_command_shows_as_died_in_the_job_list(small_phantom, monkeypatch):
    monkeypatch.setenv("MEDAUG_MAX_JOBS", "4")
    job = jobs.submit("train-gan", {**TINY_GAN_CONFIG, "data": str(small_phantom.root), "out": "{job_dir}"},
                      label="to be killed")
    try:
        wait_status(job.dir, lambda s: s.get("state") == "running" and s.get("step", 0) > 0)
        os.kill(jobs.get_job(job.id).meta["child_pid"], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while jobs.get_job(job.id).active and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        if jobs.get_job(job.id).active:
            jobs.cancel(job.id)
    done = jobs.get_job(job.id)
    assert done.state == "died" and "SIGKILL" in done.meta["error"] and "--resume" in done.meta["error"]
    assert done.status["state"] == "died"
    assert json.loads((done.dir / "status.json").read_text())["state"] == "died"


def test_the_runs_listing_shows_a_run_whose_process_is_gone_as_died(tmp_path):
    from core import runs

    gone = {"medaug.pid": str(dead_pid()), "medaug.host": socket.gethostname(), "medaug.out": str(tmp_path)}
    with tracking.start_run("test-kind", {"a": 1}, tags=gone) as dead, \
            tracking.start_run("test-kind", {"a": 1}, tags={"medaug.out": str(tmp_path / "live")}) as live:
        listed = runs.list_runs().set_index("run_id")["status"]
        assert listed[dead.run_id] == "DIED"
        assert listed[live.run_id] == "RUNNING"          # this process is alive
    assert runs.get_runs([dead.run_id])["status"].item() == "FINISHED"   # ended properly: MLflow's status again
