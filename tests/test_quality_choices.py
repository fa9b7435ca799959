"""core.quality.choices: the quality reports the Quality page offers (finished jobs, then FINISHED
quality runs not already listed as a job), each read back from its folder or its MLflow artifacts,
and the warnings of a report's sets as facts (new reports' columns, and older reports' text)."""
from __future__ import annotations

import json
import math
import time
import uuid

import pandas as pd
import pytest

from core import tracking
from core.quality import choices as qc
from core.quality.report import load_report


def report_folder(folder, sets: list[str]):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps({"extractor": "domain", "sets": [{"set": s} for s in sets]}))
    pd.DataFrame({"set": sets, "n_synthetic": [8] * len(sets)}).to_csv(folder / "sets.csv", index=False)
    return folder


def fake_job(home, job_id: str, argv: list[str], state: str, created: float, summary: dict | None = None):
    folder = home / "jobs" / job_id
    folder.mkdir(parents=True)
    (folder / "job.json").write_text(json.dumps({"state": state, "argv": argv, "label": f"{argv[0]} · {job_id}",
                                                 "created": created}))
    (folder / "log.txt").write_text("working\n" + (json.dumps(summary) + "\n" if summary else ""))
    return folder


@pytest.fixture
def quality_runs(tmp_path):
    """Three quality runs: one a job made (its folder is the job's), one whose folder is gone (its report
    is in its artifacts), one FAILED."""
    arts = report_folder(tmp_path / "logged" / "quality", ["from MLflow"])
    ids = {}
    for name, status in (("of-the-job", "FINISHED"), ("folder-gone", "FINISHED"), ("failed", "FAILED")):
        out = tmp_path / f"gone-{name}"
        run_cm = tracking.start_run("quality", {"n": 1}, run_name=f"q-{name}-{uuid.uuid4().hex[:4]}",
                                    tags={"medaug.out": str(out), "medaug.quality.sets": "a, b"})
        with run_cm as run:
            if name == "folder-gone":
                for f in ("report.json", "sets.csv"):
                    run.log_artifact(arts / f, "quality")
        if status == "FAILED":
            tracking.client().set_terminated(run.run_id, "FAILED")
        ids[name] = run.run_id
    yield ids
    for run_id in ids.values():   # the store is the session's: other tests' pages must not offer these
        tracking.client().delete_run(run_id)


def test_report_choices_list_jobs_then_runs_and_load_each(tmp_path, monkeypatch, quality_runs):
    home = tmp_path / "home"
    monkeypatch.setenv("MEDAUG_HOME", str(home))
    now = time.time()
    job_dir = fake_job(home, "q1", ["quality", "--real", "x"], "finished", now,
                       {"run_id": quality_runs["of-the-job"], "out": "ignored"})
    report_folder(job_dir, ["from the job"])
    fake_job(home, "q2", ["quality"], "running", now + 1)                    # no report yet
    report_folder(fake_job(home, "g1", ["train-gan"], "finished", now + 2), ["not quality"])

    found = qc.report_choices()
    job = found[0]
    assert job == qc.ReportChoice("quality · q1 — job q1", job_id="q1", run_id=quality_runs["of-the-job"],
                                  out=str(job_dir))
    assert job.kind == "job"
    mine = {c.run_id: c for c in found[1:] if c.run_id in quality_runs.values()}
    assert set(mine) == {quality_runs["folder-gone"]}   # the job's run is listed once (as the job); FAILED is not
    run = mine[quality_runs["folder-gone"]]
    assert run.kind == "run" and run.job_id == "" and run.label.endswith(" — MLflow run") and "a, b" in run.label
    assert run.out == str(tmp_path / "gone-folder-gone")
    assert all(c.kind == "run" for c in found[1:])

    assert qc.load_choice(job).sets["set"].tolist() == ["from the job"]
    assert qc.load_choice(run).sets["set"].tolist() == ["from MLflow"]   # its folder is gone: the artifacts
    report_folder(tmp_path / "gone-folder-gone", ["from its folder"])
    assert qc.load_choice(run).sets["set"].tolist() == ["from its folder"]

    assert qc.choice_of_job(found, "q1") == job and qc.choice_of_job(found, "q2") is None
    with pytest.raises(ValueError, match="no report.json"):
        qc.load_choice(qc.ReportChoice("gone", job_id="q9", out=str(tmp_path / "nothing")))


def test_report_choices_without_jobs_or_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDAUG_HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'empty.db'}")
    assert qc.report_choices() == []


FID_SINGULAR = ("FID: 6 samples for 64-d features: the covariance is singular, so the value is dominated by "
                "estimation noise; use more images or a lower-dimensional extractor.")
FID_SMALL = ("FID: only 6 samples (stable values need about 2000+); it is biased upwards at small n, so compare "
             "only sets of the same size, and read the interval (or fid_inf).")
COLLAPSE = "collapse: recall 0.01: the synthetic set covers almost none of the real data."
INTERVALS = "intervals: 3 samples per set are too few to halve; they need 4+."


def test_set_warnings_from_the_report_columns():
    sets = pd.DataFrame({"set": ["a", "b", "c"], "n_synthetic": [6, 3000, 12], "feature_dim": [64, 64, 128],
                         "fid_unstable": [True, False, True],
                         "other_warnings": [COLLAPSE, math.nan, ""],
                         "warnings": [f"{FID_SINGULAR} {FID_SMALL} {COLLAPSE}", "", FID_SMALL]})
    w = qc.set_warnings(sets)
    assert w.small == qc.SmallSets(("a", "c"), 6, 12, 128)
    assert w.notes == (COLLAPSE,)   # a small set's collapse warning is shown too
    assert qc.set_warnings(sets.assign(fid_unstable=False)).small is None


def test_set_warnings_as_a_report_file_reads_back(tmp_path):
    rows = pd.DataFrame({"set": ["a", "b"], "n_synthetic": [6, 2500], "feature_dim": [64, 64],
                         "fid_unstable": [True, False], "other_warnings": ["", INTERVALS],
                         "warnings": [FID_SMALL, INTERVALS]})
    report_folder(tmp_path, ["a", "b"])
    rows.to_csv(tmp_path / "sets.csv", index=False)
    w = qc.set_warnings(load_report(tmp_path).sets)
    assert w.small == qc.SmallSets(("a",), 6, 6, 64) and w.notes == (INTERVALS,)


def test_set_warnings_of_an_older_report_read_from_its_text():
    sets = pd.DataFrame({"set": ["a", "b", "c", "d"], "n_synthetic": [6, 2500, 40, 2600], "feature_dim": [64] * 4,
                         "warnings": [f"{FID_SINGULAR} {FID_SMALL} {COLLAPSE}", INTERVALS, FID_SMALL, math.nan]})
    w = qc.set_warnings(sets)
    assert w.small == qc.SmallSets(("a", "c"), 6, 40, 64)
    assert w.notes == (COLLAPSE, INTERVALS)


def test_set_warnings_of_no_sets():
    assert qc.set_warnings(pd.DataFrame()) == qc.SetWarnings(None, ())
    assert qc.set_warnings(pd.DataFrame({"set": ["a"], "fid": [1.0]})) == qc.SetWarnings(None, ())
