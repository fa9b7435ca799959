"""core.jobs: background child processes, status from files, queue, cancel, failures."""
from __future__ import annotations

import json
import os
import time

import pytest

from core import jobs


def wait_for(job_id: str, states=jobs.TERMINAL, timeout: float = 90.0) -> jobs.Job:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = jobs.get_job(job_id)
        if job.state in states:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still {jobs.get_job(job_id).state} after {timeout} s:\n"
                         f"{jobs.get_job(job_id).log_tail()}")


def phantom_argv(n: int, size: int = 32) -> list[str]:
    return ["--out", "{job_dir}/data", "--n", str(n), "--size", str(size), "--workers", "1"]


def submit_phantom(n: int, size: int = 32, label: str = "") -> jobs.Job:
    return jobs.submit("phantom", label=label, argv=phantom_argv(n, size))


def test_job_runs_detached_and_reports(monkeypatch):
    monkeypatch.setenv("MEDAUG_MAX_JOBS", "1")
    job = submit_phantom(24, label="tiny phantom")
    assert job.state == "running" and job.label == "tiny phantom"
    assert os.getpgid(job.meta["pid"]) != os.getpgid(0), "the job must not share the server's process group"
    done = wait_for(job.id)
    assert done.state == "finished" and done.meta["exit_code"] == 0
    summary = done.summary()
    assert summary["ok"] and summary["images"] == 24
    assert (done.dir / "data" / "dataset.json").is_file()
    assert "Wrote 24 images" in done.log_tail()
    # the job list is rebuilt from the folders alone (as after a server restart)
    assert [j.id for j in jobs.list_jobs() if j.id == job.id] == [job.id]


def test_queue_respects_the_maximum_and_advances_by_itself(monkeypatch):
    monkeypatch.setenv("MEDAUG_MAX_JOBS", "1")
    first = submit_phantom(60)
    second = submit_phantom(20)
    assert first.state == "running" and second.state == "queued"
    a, b = wait_for(first.id), wait_for(second.id)  # nobody calls schedule(): the supervisor does
    assert a.state == b.state == "finished"
    assert b.meta["started"] >= a.meta["ended"] - 0.5


def test_two_jobs_run_at_once_when_allowed(monkeypatch):
    monkeypatch.setenv("MEDAUG_MAX_JOBS", "2")
    one, two = submit_phantom(40), submit_phantom(40)
    assert one.state == two.state == "running"
    a, b = wait_for(one.id), wait_for(two.id)
    assert a.state == b.state == "finished"
    assert b.meta["started"] < a.meta["ended"] and a.meta["started"] < b.meta["ended"]
    assert a.summary()["content_hash"] == b.summary()["content_hash"]  # same seed, same data


def test_cancel_stops_the_processes_and_starts_the_next(monkeypatch):
    monkeypatch.setenv("MEDAUG_MAX_JOBS", "1")
    slow = submit_phantom(20000, size=128)
    nxt = submit_phantom(10)
    deadline = time.time() + 30
    while "child_pid" not in jobs.get_job(slow.id).meta and time.time() < deadline:
        time.sleep(0.05)
    child = jobs.get_job(slow.id).meta["child_pid"]
    cancelled = jobs.cancel(slow.id)
    assert cancelled.state == "cancelled"
    # cancel() waits for the supervisor only; its child gets the same signal and may take a
    # moment to go: wait for both to be gone (a deadline, not a fixed sleep)
    pids = (slow.meta["pid"], child)
    deadline = time.time() + 15
    while any(jobs._pid_alive(pid) for pid in pids) and time.time() < deadline:
        time.sleep(0.05)
    for pid in pids:
        assert not jobs._pid_alive(pid), f"process {pid} survived cancel (15 s after it)"
    assert wait_for(nxt.id).state == "finished"
    assert jobs.get_job(slow.id).state == "cancelled"
    assert not (slow.dir / "data" / "dataset.json").exists()


def test_failed_command_records_its_error():
    job = jobs.submit("dataset", argv=["--data", "/nonexistent/folder"])
    done = wait_for(job.id)
    assert done.state == "failed" and done.meta["exit_code"] == 2
    assert "not a MedAug dataset folder" in done.meta["error"]


def test_vanished_supervisor_is_reported_as_died():
    folder = jobs.jobs_dir() / "20000101-000000-dead00"
    folder.mkdir()
    (folder / "job.json").write_text(json.dumps({"state": "running", "argv": ["phantom"], "pid": 2**22 + 7,
                                                 "created": 1.0}))
    job = jobs.get_job(folder.name)
    assert job.state == "died" and "log.txt" in job.meta["error"]


def test_max_concurrent_validates(monkeypatch):
    monkeypatch.setenv("MEDAUG_MAX_JOBS", "zero")
    with pytest.raises(ValueError, match="MEDAUG_MAX_JOBS"):
        jobs.max_concurrent()
    monkeypatch.setenv("MEDAUG_MAX_JOBS", "0")
    with pytest.raises(ValueError, match="at least 1"):
        jobs.max_concurrent()
