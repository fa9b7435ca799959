"""Classify page (AppTest): launch a tiny study from the form as a background job, follow it,
and read its results (table, bars, Δ heatmap, curves, confusion matrix) back from MLflow."""
from __future__ import annotations

import json

import pytest

from core import jobs
from tests.page_helpers import open_page, wait_done


@pytest.fixture
def page(small_phantom, monkeypatch):
    return open_page("classify", small_phantom.root, monkeypatch)


def test_launch_a_study_and_read_its_results(page, small_phantom):
    at = page
    assert [t.label for t in at.tabs] == ["Study", "Single run", "Live jobs", "Results"]
    # the quick preset is the default: 10 cells of the small CNN
    assert at.selectbox(key="st_preset").value == "quick"
    assert any("10 cells" in str(c.value) for c in at.caption)
    at.multiselect(key="st_sets_quick").set_value(["real", "hflip"]).run()
    at.number_input(key="st_epochs_quick").set_value(1)
    at.number_input(key="st_size_quick").set_value(16)
    at.selectbox(key="st_device").set_value("cpu").run()
    assert any("2 cells" in str(c.value) for c in at.caption)
    at.button(key="st_launch").click().run()
    assert not at.exception, at.exception
    job = jobs.get_job(at.session_state["clf_job_pick"])
    assert job.meta["argv"][0] == "study" and "--config" in job.meta["argv"]
    cfg = json.loads((job.dir / "config.json").read_text())
    assert cfg["sets"] == ["real", "hflip"] and cfg["epochs"] == 1 and cfg["image_size"] == 16
    assert cfg["data"] == str(small_phantom.root) and cfg["out"] == str(job.dir) and cfg["preset"] == "quick"

    done = wait_done(job.id)
    assert done.state == "finished", done.log_tail()
    assert done.status["cells_done"] == done.status["cells_total"] == 2
    run_id = done.status["run_id"]

    at.run()  # the Live tab shows the finished job's progress and its table so far
    assert not at.exception, at.exception
    bars = " ".join(str(p.proto) for p in at.get("progress"))
    assert "finished 2/2 · running 0 · pending 0 · failed 0" in bars, bars
    board = " ".join(h.proto.body for h in at.get("html"))
    assert board.count('class="medaug-cell medaug-cell-finished"') == 2, board   # the cell board, both finished
    at.selectbox(key="st_pick").set_value(run_id).run()
    assert not at.exception, at.exception
    tables = [d for d in at.dataframe]
    assert tables, "no results table"
    shown = tables[-1].value
    assert list(shown.index) == ["real only", "horizontal flip"] and list(shown.columns) == ["small_cnn"]
    assert shown.loc["real only", "small_cnn"].endswith("(baseline)") and "Δ" in shown.loc["horizontal flip", "small_cnn"]
    answer = [str(m.value) for m in at.markdown if str(m.value).startswith("**The answer**")]
    assert answer and "horizontal flip" in answer[-1] and "macro-F1" in answer[-1]   # the verdict opens the results
    charts = at.get("plotly_chart")
    titles = " ".join(str(c.proto) for c in charts)
    assert "by augmentation set (95% CI)" in titles and "sensitivity against real only" in titles
    assert "Confusion matrix" in titles and "Accuracy and macro-F1" in titles
    at.selectbox(key="st_cell_past").set_value("hflip|small_cnn|s0").run()
    assert not at.exception, at.exception
    at.selectbox(key="st_metric").set_value("balanced_accuracy").run()
    assert not at.exception, at.exception
    assert any("Results: balanced_accuracy" in str(m.value) for m in at.markdown)


def test_single_run_form_submits_a_train_classifier_job(page, small_phantom, monkeypatch):
    monkeypatch.setattr(jobs, "schedule", lambda: [])   # queued, never started: the CLI is tested in test_classify
    at = page
    at.selectbox(key="one_model").set_value("resnet18")
    at.number_input(key="one_size").set_value(16).run()   # below ResNet-18's 32 px: the form says so, no launch
    assert any("image_size=16" in str(e.value) and "32" in str(e.value) for e in at.error), [e.value for e in at.error]
    assert at.button(key="one_launch").disabled
    at.selectbox(key="one_model").set_value("small_cnn")
    at.number_input(key="one_size").set_value(16)
    at.number_input(key="one_epochs").set_value(1)
    at.toggle(key="one_shuffle").set_value(True).run()
    assert not at.error and not at.button(key="one_launch").disabled
    at.button(key="one_launch").click().run()
    assert not at.exception, at.exception
    job = jobs.get_job(at.session_state["clf_job_pick"])
    cfg = json.loads((job.dir / "config.json").read_text())
    assert job.meta["argv"][0] == "train-classifier" and "shuffled labels" in job.label
    assert cfg["model"] == "small_cnn" and cfg["epochs"] == 1 and cfg["shuffle_labels"] is True
    assert job.state == "queued" and not at.error
    jobs.cancel(job.id)   # the CLI itself is core.classify's to test; here the page's hand-off is checked


def _launch_button(at):
    return at.button(key="st_launch")


def test_study_form_runs_on_ray_with_an_address(page, small_phantom, monkeypatch):
    """"Run on: Ray cluster" puts executor, address, retries and data mode into the queued job's config,
    which `python -m core study --config` reads as --executor ray --address ...; a malformed address is
    an error before any job is queued. Ray itself is never started here (the job is not scheduled)."""
    from core.cli import build_parser, job_fields
    from core.study.commands import validate

    monkeypatch.setattr(jobs, "schedule", lambda: [])   # queued, never started
    at = page
    assert at.radio(key="st_run_on").value == "This machine"
    assert any("1 cell at a time" in str(c.value) for c in at.caption)
    assert _launch_button(at).label == "Launch study"
    at.radio(key="st_run_on").set_value("Ray cluster").run()
    assert not at.exception, at.exception
    assert any("cells at once" in str(c.value) and "local Ray" in str(c.value) for c in at.caption)
    assert at.number_input(key="st_ray_retries").value == 3 and at.selectbox(key="st_ray_data").value == "auto"
    assert _launch_button(at).label == "Launch study on Ray"

    before = len(jobs.list_jobs())
    for bad in ("head", "http://head:8265", "head:99999", "ray://head"):
        at.text_input(key="st_ray_address").input(bad).run()
        assert not at.exception, at.exception
        errors = [str(e.value) for e in at.error]
        assert any("Ray address" in e and repr(bad) in e for e in errors), (bad, errors)
        assert _launch_button(at).disabled, bad
    assert len(jobs.list_jobs()) == before

    at.text_input(key="st_ray_address").input("ray://head-svc:10001")
    at.number_input(key="st_ray_retries").set_value(1)
    at.selectbox(key="st_ray_data").set_value("path").run()
    assert not at.error, [e.value for e in at.error]
    assert any("as many cells at once as it has GPUs" in str(c.value) for c in at.caption)
    _launch_button(at).click().run()
    assert not at.exception, at.exception
    job = jobs.get_job(at.session_state["clf_job_pick"])
    assert job.state == "queued" and job.label.endswith("· Ray") and len(jobs.list_jobs()) == before + 1
    cfg = json.loads((job.dir / "config.json").read_text())
    assert cfg["executor"] == "ray" and cfg["address"] == "ray://head-svc:10001"
    assert cfg["max_retries"] == 1 and cfg["ray_data"] == "path"
    # what the job's command line makes of it: `python -m core study --config <job>/config.json`
    args = build_parser().parse_args(job.meta["argv"])
    parsed, _, _ = validate(job_fields(args, "study", required=()))
    assert (parsed["executor"], parsed["address"], parsed["max_retries"], parsed["ray_data"]) == \
        ("ray", "ray://head-svc:10001", 1, "path")
    jobs.cancel(job.id)

    at.radio(key="st_run_on").set_value("This machine").run()   # back: no Ray fields in the job
    _launch_button(at).click().run()
    cfg = json.loads((jobs.get_job(at.session_state["clf_job_pick"]).dir / "config.json").read_text())
    assert cfg["executor"] == "local" and "address" not in cfg
    jobs.cancel(at.session_state["clf_job_pick"])


MIXED_STATES = {"real|small_cnn|s0": "finished", "hflip|small_cnn|s0": "finished", "vflip|small_cnn|s0": "running",
                "zoom|small_cnn|s0": "failed", "real|small_cnn|s1": "running", "hflip|small_cnn|s1": "pending",
                "vflip|small_cnn|s1": "pending", "zoom|small_cnn|s1": "pending"}
MIXED_FAILED = {"zoom|small_cnn|s0": "RuntimeError: CUDA out of memory <while> training"}


def mixed_status(**extra) -> dict:
    return {"kind": "study", "state": "running", "message": "8 cells on Ray", "cells_done": 2, "cells_total": 8,
            "cells_pending": 3, "cells_running": 2, "cells_failed": 1, "cell_states": MIXED_STATES,
            "failed": MIXED_FAILED, "eta_s": 372.0, "executor": "ray", "ray_slots": 2, **extra}


def queued_study_job(small_phantom, status: dict) -> jobs.Job:
    job = jobs.submit("study", {"sets": ["real", "hflip"], "epochs": 1, "image_size": 16,
                                "data": str(small_phantom.root), "out": "{job_dir}"},
                      label="study · quick · 8 cells · Ray")
    (job.dir / "status.json").write_text(json.dumps(status))
    return job


def test_live_view_shows_cells_per_state_eta_board_and_failure_reason(page, small_phantom, monkeypatch):
    monkeypatch.setattr(jobs, "schedule", lambda: [])
    job = queued_study_job(small_phantom, mixed_status())
    at = page.run()   # the job list now holds it: pick it in the Live tab
    at.selectbox(key="clf_job_pick").set_value(job.id).run()
    assert not at.exception, at.exception
    bars = " ".join(str(p.proto) for p in at.get("progress"))
    assert "finished 2/8 · running 2 · pending 3 · failed 1 · ETA 6.2 min" in bars, bars
    board = " ".join(h.proto.body for h in at.get("html"))
    for state, n in (("finished", 2), ("running", 2), ("pending", 3), ("failed", 1)):
        assert board.count(f'medaug-cell medaug-cell-{state}"') == n, state
    assert "CUDA out of memory &lt;while&gt; training" in board   # the tooltip, escaped
    errors = " ".join(str(e.value) for e in at.error)
    assert "1 cell failed" in errors and "zoom|small_cnn|s0" in errors and "CUDA out of memory" in errors
    assert any("2 cells at once" in str(c.value) for c in at.caption)
    jobs.cancel(job.id)

    # a status file from before the per-state fields: counts from cells_done / cells_total, no board
    new_fields = ("cell_states", "failed", "executor", "ray_slots")
    old = {k: v for k, v in mixed_status().items() if not k.startswith("cells_") and k not in new_fields}
    job = queued_study_job(small_phantom, {**old, "cells_done": 3, "cells_total": 8, "current": "vflip|small_cnn|s0",
                                           "cell_epoch": 1, "cell_epochs": 4})
    at.run()
    at.selectbox(key="clf_job_pick").set_value(job.id).run()
    assert not at.exception, at.exception
    bars = " ".join(str(p.proto) for p in at.get("progress"))
    assert "cells 3/8 · now vflip|small_cnn|s0 (epoch 1/4) · ETA 6.2 min" in bars, bars
    assert "medaug-cell" not in " ".join(h.proto.body for h in at.get("html"))
    jobs.cancel(job.id)
