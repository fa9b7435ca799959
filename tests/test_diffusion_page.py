"""Diffusion page: what the form hands to the job queue, what it refuses, and a real tiny job watched and browsed."""
from __future__ import annotations

import json

import pytest

from core import jobs
from tests.page_helpers import open_page, wait_done


@pytest.fixture
def diffusion_page(small_phantom, monkeypatch):
    return open_page("diffusion", small_phantom.root, monkeypatch)


def queued_config(at) -> tuple[jobs.Job, dict]:
    job = jobs.get_job(at.session_state["diff_job_pick"])
    return job, json.loads((job.dir / "config.json").read_text())


def test_the_form_queues_the_config_it_shows(diffusion_page, small_phantom, monkeypatch):
    """Against a queue that never starts: a conditional and a per-class job, field by field."""
    monkeypatch.setattr(jobs, "schedule", lambda: [])
    at = diffusion_page
    assert [t.label for t in at.tabs] == ["Train", "Live jobs", "Past runs"]
    at.radio(key="diff_mode").set_value("Conditional (all classes)").run()
    at.number_input(key="diff_batch").set_value(24)
    at.select_slider(key="diff_width").set_value(32)
    at.number_input(key="diff_minutes").set_value(3.0)
    at.number_input(key="diff_steps").set_value(500)
    at.number_input(key="diff_grid_every").set_value(25)
    at.number_input(key="diff_sample_steps").set_value(12)
    at.number_input(key="diff_guidance").set_value(3.5)
    at.selectbox(key="diff_device").set_value("cpu").run()
    assert not at.error and not at.button(key="diff_launch").disabled
    at.button(key="diff_launch").click().run()
    assert not at.exception, at.exception
    job, cfg = queued_config(at)
    assert job.state == "queued" and job.command == "train-diffusion" and job.label == "ddpm · conditional · 64px"
    assert cfg["conditional"] is True and "class" not in cfg
    assert {k: cfg[k] for k in ("resolution", "batch", "width", "max_seconds", "max_steps", "grid_every",
                                "sample_steps", "guidance", "device")} == {
        "resolution": 64, "batch": 24, "width": 32, "max_seconds": 180.0, "max_steps": 500, "grid_every": 25,
        "sample_steps": 12, "guidance": 3.5, "device": "cpu"}
    assert cfg["data"] == str(small_phantom.root) and cfg["out"] == str(job.dir)
    jobs.cancel(job.id)

    # one class, a time budget only: max_steps goes as None, guidance as 1 (no class to guide towards)
    at.radio(key="diff_mode").set_value("One class").run()
    at.selectbox(key="diff_class").set_value("Osteophytes")
    at.number_input(key="diff_steps").set_value(0)
    at.segmented_control(key="diff_res").set_value(128).run()
    at.button(key="diff_launch").click().run()
    job, cfg = queued_config(at)
    assert cfg["class"] == "Osteophytes" and cfg["conditional"] is False
    assert cfg["max_steps"] is None and cfg["max_seconds"] == 180.0 and cfg["guidance"] == 1.0
    assert cfg["resolution"] == 128 and job.label == "ddpm · Osteophytes · 128px"
    jobs.cancel(job.id)


def test_bad_values_show_what_to_do_and_disable_the_button(diffusion_page, monkeypatch):
    import torch

    monkeypatch.setattr(jobs, "schedule", lambda: [])
    at = diffusion_page
    at.number_input(key="diff_minutes").set_value(0.0)
    at.number_input(key="diff_steps").set_value(0).run()
    assert [e.value for e in at.error] == ["Time budget and Max steps are both 0, so training would never stop: "
                                           "set a time budget in minutes, a step count, or both."]
    assert at.button(key="diff_launch").disabled
    at.number_input(key="diff_steps").set_value(10).run()
    assert not at.error and not at.button(key="diff_launch").disabled
    if not torch.cuda.is_available():   # the command would refuse --device cuda here, so the form does
        assert at.segmented_control(key="diff_res").options == ["64", "128"]   # no 256 px on a CPU
        at.selectbox(key="diff_device").set_value("cuda").run()
        assert any("no CUDA GPU is visible" in str(e.value) for e in at.error), [e.value for e in at.error]
        assert at.button(key="diff_launch").disabled


def test_a_real_tiny_job_trains_and_its_grids_show_live_and_from_mlflow(diffusion_page):
    at = diffusion_page
    at.selectbox(key="diff_class").set_value("Osteophytes")
    at.number_input(key="diff_batch").set_value(4)
    at.select_slider(key="diff_width").set_value(8)
    at.number_input(key="diff_steps").set_value(4)
    at.number_input(key="diff_grid_every").set_value(2)
    at.number_input(key="diff_sample_steps").set_value(2)
    at.selectbox(key="diff_device").set_value("cpu")
    at.button(key="diff_launch").click().run()
    assert not at.exception, at.exception
    job_id = at.session_state["diff_job_pick"]
    done = wait_done(job_id)
    assert done.state == "finished", done.log_tail()
    assert done.status["step"] == 4 and len(list((done.dir / "grids").glob("epoch_*.png"))) == 2
    run_id = done.status["run_id"]

    at.run()   # the live tab now shows the finished job: its loss curve and its last grid
    assert not at.exception, at.exception
    assert at.get("plotly_chart"), "no loss curve"
    assert any("Fixed-noise samples after step 4" in str(i.proto) for i in at.get("image"))
    live_slider = at.select_slider(key=f"diff_epoch_live_{run_id}")
    assert live_slider.options == ["step 2", "step 4"]
    at.selectbox(key="diff_past_run").set_value(run_id).run()   # the run is browsable from MLflow
    assert not at.exception, at.exception
    assert any(run_id in str(c.value) and "UNet width 8" in str(c.value) for c in at.caption)
    at.select_slider(key=f"diff_epoch_past_{run_id}").set_value(1).run()   # back to the first grid
    assert any("Fixed-noise samples after step 2" in str(i.proto) for i in at.get("image"))


def test_the_loss_chart_smooths_long_curves_and_adds_the_kid_panel_when_checked():
    import pandas as pd

    from core.charts import diffusion_curves_figure

    loss = pd.DataFrame({"key": "loss", "step": range(10, 310, 10), "value": [1 / (i + 1) for i in range(30)]})
    kid = pd.DataFrame({"key": ["fidelity_kid"] * 3 + ["fidelity_kid/Osteophytes"] * 3, "step": [100, 200, 300] * 2,
                        "value": [0.1, 0.04, 0.07] * 2})
    short = diffusion_curves_figure(loss.head(4))
    assert [(t.name, t.mode) for t in short.data] == [("loss", "lines+markers")]   # 4 points: no lagging mean
    full = diffusion_curves_figure(pd.concat([loss, kid]))
    assert [t.name for t in full.data] == ["loss", "running mean (10 points)", "KID Osteophytes",
                                           "KID (mean over classes)", "best checkpoint"]
    best = full.data[-1]
    assert (list(best.x), list(best.y)) == ([200], [0.04])
    assert list(full.data[1].y[-3:]) == pytest.approx([sum(1 / (i + 1) for i in range(k - 10, k)) / 10
                                                       for k in (28, 29, 30)])
