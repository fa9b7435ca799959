"""Quality page: two GAN runs are offered, an evaluation job is launched from the page and its
report is drawn (set table with intervals and extractor, distributions, epochs, memorization)."""
from __future__ import annotations

import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

from core import jobs
from tests.quality_helpers import ENCODER_EPOCHS, tiny_gan_runs

ROOT = Path(__file__).resolve().parent.parent


def test_quality_page_compares_two_gan_runs(small_phantom, monkeypatch):
    runs = tiny_gan_runs(small_phantom.root)
    monkeypatch.setenv("MEDAUG_DATASET", str(small_phantom.root))
    monkeypatch.setenv("MEDAUG_MAX_JOBS", "1")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.switch_page("pages/quality.py").run()
    assert not at.exception, at.exception

    offered = at.multiselect(key="q_sources").options
    gan_options = [o for o in offered if o.startswith("GAN run")]
    assert len(gan_options) >= 2, offered
    at.multiselect(key="q_sources").set_value(gan_options[:2])
    epochs = [o for o in at.selectbox(key="q_epochs").options if o != "— none —"]
    assert epochs, "a run with several epoch grids is offered for fidelity over training"
    at.selectbox(key="q_epochs").set_value(epochs[0])
    at.number_input(key="q_n").set_value(8)
    at.number_input(key="q_boot").set_value(10)
    at.number_input(key="q_enc_epochs").set_value(ENCODER_EPOCHS)
    at.number_input(key="q_div_pairs").set_value(20)
    at.button(key="q_go").click().run()
    assert not at.exception, at.exception

    job = next(j for j in jobs.list_jobs() if j.command == "quality")
    argv = job.meta["argv"]
    assert argv[0] == "quality" and argv.count("--synthetic") == 2 and "--epochs-of" in argv
    assert {str(r) for r in runs} <= set(argv)
    deadline = time.time() + 240
    while (job := jobs.get_job(job.id)).active and time.time() < deadline:
        time.sleep(0.5)
    assert job.state == "finished", job.log_tail()

    at.run()
    assert not at.exception, at.exception
    assert at.session_state["q_report_pick"] == f"job:{job.id}"
    assert not at.error, [e.value for e in at.error]
    table = at.dataframe[0].value
    assert len(table) == 2 and set(table["extractor"]) == {"domain"}
    assert all("[" in v for v in table["FID [95% CI]"])
    assert any("domain encoder" in str(c.value) for c in at.caption)
    charts = {c.proto.id for c in at.get("plotly_chart")}
    assert len(charts) >= 4   # sets, distribution, epochs, memorization
    at.selectbox(key="q_metric").set_value("psnr").run()
    at.radio(key="q_kind").set_value("box").run()
    assert not at.exception, at.exception
    assert len(at.get("imgs")) + len(at.get("image")) >= 1   # the closest pairs are shown side by side
