"""The job frame every long command shares (core.tracked) and validated submission (core.jobs.submit)."""
from __future__ import annotations

import json

import pytest

from core import jobs
from core.tracked import read_status, tracked_job


def _status(out):
    return json.loads((out / "status.json").read_text())


def _where(status: dict) -> str:
    return f"at step {status['step']}; continue with --resume"


def test_a_failing_body_ends_failed_with_the_reason_and_frees_the_folder(tmp_path):
    out = tmp_path / "job"
    with pytest.raises(ValueError, match="bad batch"):
        with tracked_job("train-gan", out, _where, step=0) as job:
            assert _status(out)["state"] == "starting" and _status(out)["kind"] == "train-gan"
            with pytest.raises(jobs.FolderBusy, match="in use by train-gan"):   # one job per folder
                jobs.FolderLock(out, "train-classifier").acquire()
            job.status.update(force=True, step=3)
            raise ValueError("bad batch")
    status = _status(out)
    assert (status["state"], status["message"], status["step"]) == ("failed", "bad batch", 3)
    assert read_status(out)["state"] == "failed"
    with jobs.FolderLock(out, "next"):   # released
        pass


def test_a_cancel_ends_cancelled_and_says_how_to_continue(tmp_path):
    out = tmp_path / "job"
    with pytest.raises(ValueError, match=r"^train-gan cancelled at step 7; continue with --resume\.$"):
        with tracked_job("train-gan", out, _where, step=0) as job:
            job.status.update(step=7)
            raise KeyboardInterrupt   # what SIGTERM becomes inside the block
    assert _status(out)["state"] == "cancelled"


def test_a_state_the_command_recorded_itself_is_kept(tmp_path):
    out = tmp_path / "job"
    with pytest.raises(ValueError):
        with tracked_job("train-classifier", out, _where, step=0) as job:
            job.status.end("diverged", "loss is NaN at epoch 2")
            raise ValueError("loss is NaN at epoch 2")
    assert (_status(out)["state"], _status(out)["message"]) == ("diverged", "loss is NaN at epoch 2")


def test_a_status_whose_process_is_gone_reads_as_died(tmp_path):
    (tmp_path / "status.json").write_text(json.dumps({"state": "running", "pid": 2**22 + 12345, "host": "x"}))
    # another host: cannot tell, so it stays running; this host and a pid that is not there: died
    assert read_status(tmp_path)["state"] == "running"
    import socket

    (tmp_path / "status.json").write_text(json.dumps({"state": "running", "pid": 2**22 + 12345,
                                                      "host": socket.gethostname()}))
    assert read_status(tmp_path)["state"] == "died"


# --- jobs.submit validates before anything is queued -------------------------------------------

@pytest.fixture
def no_start(monkeypatch):
    """Queue jobs without starting them."""
    monkeypatch.setattr(jobs, "schedule", lambda: [])


@pytest.mark.parametrize("command, config, words", [
    ("train-gan", {"batch": 1}, "batch=1"),
    ("train-gan", {"class": "Fracture of the moon"}, "not a class"),
    ("train-gan", {"class": "Osteophytes", "conditional": True}, "not both"),
    ("train-gan", {"variant": "stylegan9"}, "variant='stylegan9'"),
    ("train-classifier", {"model": "resnet1000"}, "resnet1000"),
    ("train-classifier", {"classes": "No finding,Unicorn"}, "Unicorn not in"),
    ("train-classifier", {"lr": 5.0}, "lr=5.0"),
    ("study", {"preset": "enormous"}, "enormous"),
    ("study", {"seeds": []}, "seeds is empty"),
    ("quality", {"synthetic": ["/no/such/set"]}, "/no/such/set: no such file"),
    ("balance", {"target": "lots"}, "target='lots'"),
    ("balance", {"checkpoints": {"Osteophytes": "x.pt"}, "out": None}, "--out is needed"),
])
def test_submit_refuses_a_bad_config_and_queues_nothing(small_phantom, no_start, command, config, words):
    data_key = "real" if command == "quality" else "data"
    full = {data_key: str(small_phantom.root), "out": "{job_dir}", **config}
    before = {j.id for j in jobs.list_jobs()}
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        jobs.submit(command, full)
    assert {j.id for j in jobs.list_jobs()} == before


def test_submit_needs_a_config_for_a_validated_command(no_start):
    with pytest.raises(ValueError, match="submitted with a config"):
        jobs.submit("train-gan")


def test_submit_queues_a_valid_config_as_the_commands_config_file(small_phantom, no_start):
    job = jobs.submit("train-gan", {"data": str(small_phantom.root), "out": "{job_dir}", "class": "Osteophytes",
                                    "resolution": 32, "max_steps": 5}, label="tiny")
    assert job.state == "queued" and job.meta["argv"] == ["train-gan", "--config", str(job.dir / "config.json")]
    config = json.loads((job.dir / "config.json").read_text())
    assert config["out"] == str(job.dir) and config["class"] == "Osteophytes"   # {job_dir} filled in
    from core.cli import build_parser, job_fields
    from core.gan.commands import validate

    args = build_parser().parse_args(job.meta["argv"])   # the command reads it back as the same job
    job_keys, fields, ds = validate(job_fields(args, "train-gan", required=(), rename={"class_name": "class"}))
    assert job_keys["class"] == "Osteophytes" and fields["resolution"] == 32 and ds.root == small_phantom.root
    jobs.cancel(job.id)   # the session's queue: a later test's scheduler must not start it
