"""GAN page: launch a real (tiny) training job from the form, watch it, browse it, balance with it."""
from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from core import jobs
from core.data.datasets import load_dataset
from tests.page_helpers import open_page, wait_done


@pytest.fixture
def gan_page(small_phantom, monkeypatch):
    return open_page("gan", small_phantom.root, monkeypatch)


def test_launch_watch_browse_and_balance(gan_page, small_phantom):
    at = gan_page
    assert [t.label for t in at.tabs] == ["Train", "Live jobs", "Past runs", "Synthesize & balance"]
    # the class list is sorted scarcest first and shows train counts
    first = at.selectbox(key="gan_class").options[0]
    assert "train images)" in first
    at.selectbox(key="gan_class").set_value("Osteophytes")
    at.number_input(key="gan_batch").set_value(16)
    at.number_input(key="gan_epochs").set_value(1)
    at.select_slider(key="gan_width").set_value(16)
    at.button(key="gan_launch").click().run()
    assert not at.exception, at.exception
    job_id = at.session_state["gan_job_pick"]
    job = jobs.get_job(job_id)
    config = job.meta["argv"]
    assert config[0] == "train-gan" and "--config" in config
    import json
    cfg = json.loads((job.dir / "config.json").read_text())
    assert cfg["class"] == "Osteophytes" and cfg["batch"] == 16 and cfg["epochs"] == 1 and cfg["width"] == 16
    assert cfg["variant"] == "dcgan" and cfg["data"] == str(small_phantom.root) and cfg["out"] == str(job.dir)

    done = wait_done(job_id)
    assert done.state == "finished", done.log_tail()
    run_id = done.status["run_id"]

    at.run()  # the live tab now shows the finished job's curves and its epoch grid
    assert not at.exception, at.exception
    assert len(at.get("plotly_chart")) >= 2  # GAN curves + the balancing chart
    assert any("Fixed-noise samples after epoch 1" in str(i.proto) for i in at.get("image"))
    at.selectbox(key="gan_past_run").set_value(run_id).run()  # the run is browsable from MLflow
    assert not at.exception, at.exception
    assert any(run_id in str(c.value) for c in at.caption)

    # balancing: the finished per-class model tops up Osteophytes, as one background job
    at.selectbox(key="bal_how").set_value("a number").run()
    at.number_input(key="bal_n").set_value(40).run()
    at.multiselect(key="bal_classes").set_value(["Osteophytes"]).run()
    # this job's model: other tests in the same worker may have left other finished generators listed
    pick = at.selectbox(key="bal_ck_0")
    pick.set_value(next(o for o in pick.options if f"({job_id})" in o)).run()
    at.button(key="bal_go").click().run()
    assert not at.exception, at.exception
    bal = next(j for j in jobs.list_jobs() if j.command == "balance")
    bal = wait_done(bal.id)
    assert bal.state == "finished", bal.log_tail()
    synthetic = load_dataset(bal.summary()["out"])
    real = small_phantom.class_counts("train")["Osteophytes"]
    assert synthetic.class_counts()["Osteophytes"] == 40 - real
    assert set(synthetic.manifest["source"]) == {f"gan:{run_id}"}
    assert (synthetic.manifest["split"] == "train").all()


def test_job_progress_shows_that_tracking_failed(tmp_path, monkeypatch):
    """A job whose MLflow store was lost trains on; its card says so (status.json "warning")."""
    def card(folder: str):
        from pathlib import Path

        from core import jobs
        from pages import ui

        ui.job_progress(jobs.Job(id="j1", dir=Path(folder), meta={"state": "running", "argv": ["train-gan"]},
                                 status={"step": 5, "total_steps": 10, "epoch": 1, "epochs": 2,
                                         "warning": "MLflow store http://x failed; Training goes on"}))

    import sys
    # AppTest.from_function leaves its generated script as __main__; process pools that spawn
    # later (the ingest tests) would re-run it: put the real __main__ back afterwards
    monkeypatch.setitem(sys.modules, "__main__", sys.modules["__main__"])
    monkeypatch.setattr(sys.modules["__main__"], "__file__", getattr(sys.modules["__main__"], "__file__", None),
                        raising=False)
    at = AppTest.from_function(card, args=(str(tmp_path),)).run()
    assert not at.exception, at.exception
    assert [w.value for w in at.warning] == ["MLflow store http://x failed; Training goes on"]
    assert at.get("progress")[0].value == 50   # percent


def test_the_form_checks_a_job_as_the_command_will_and_queues_a_conditional_one(gan_page, small_phantom,
                                                                                  monkeypatch):
    """Against a queue that never starts: what the form hands to core.jobs.submit, and what it refuses."""
    import json

    import torch

    monkeypatch.setattr(jobs, "schedule", lambda: [])
    at = gan_page
    if not torch.cuda.is_available():   # the command would refuse --device cuda here, so the form does
        at.selectbox(key="gan_device").set_value("cuda").run()
        assert any("no CUDA GPU is visible" in str(e.value) for e in at.error), [e.value for e in at.error]
        assert at.button(key="gan_launch").disabled
        at.selectbox(key="gan_device").set_value("cpu").run()
    assert not at.error and not at.button(key="gan_launch").disabled
    at.radio(key="gan_mode").set_value("Conditional (all classes)").run()
    at.segmented_control(key="gan_variant").set_value("wgan").run()
    at.button(key="gan_launch").click().run()
    assert not at.exception, at.exception
    job = jobs.get_job(at.session_state["gan_job_pick"])
    cfg = json.loads((job.dir / "config.json").read_text())
    assert job.state == "queued" and job.label.startswith("wgan · conditional")
    assert cfg["conditional"] is True and "class" not in cfg and cfg["variant"] == "wgan" and cfg["device"] == "cpu"
    jobs.cancel(job.id)
