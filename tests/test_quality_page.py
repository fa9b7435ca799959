"""Quality page: two GAN runs are offered and an evaluation job is launched from the page; a quality
run from the tracking store is drawn (set table with intervals and extractor, distributions, epochs,
memorization pairs)."""
from __future__ import annotations

import json
from pathlib import Path

from streamlit.testing.v1 import AppTest

from core import jobs, tracking
from core.quality import report as qr
from core.quality.choices import report_choices
from tests.quality_helpers import ENCODER_EPOCHS, quality_report, tiny_gan_runs

ROOT = Path(__file__).resolve().parent.parent


def test_quality_page_compares_two_gan_runs(small_phantom, monkeypatch):
    import streamlit as st

    runs = tiny_gan_runs(small_phantom.root)
    st.cache_data.clear()   # the page caches its source list for 10 s: an earlier test's list must not answer
    monkeypatch.setenv("MEDAUG_DATASET", str(small_phantom.root))
    monkeypatch.setattr(jobs, "schedule", lambda: [])   # queued, never started: the CLI is tested in test_quality.py
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.switch_page("pages/quality.py").run()
    assert not at.exception, at.exception

    offered = at.multiselect(key="q_sources").options
    gan_options = [o for o in offered if o.startswith("GAN run")]
    assert len(gan_options) >= 2, offered
    ours = {r["label"]: r for r in qr.gan_runs() if r["out"] in {str(p) for p in runs}}   # other tests' runs too
    assert len(ours) == 2 and {f"GAN run · {label}" for label in ours} <= set(gan_options), (ours, gan_options)
    at.multiselect(key="q_sources").set_value([f"GAN run · {label}" for label in ours])
    epochs = [o for o in at.selectbox(key="q_epochs").options if o != "— none —"]
    with_grids = [label for label, r in ours.items() if r["grids"] > 1]
    assert with_grids and set(with_grids) <= set(epochs), "a run with several epoch grids is offered"
    at.selectbox(key="q_epochs").set_value(with_grids[0])
    at.number_input(key="q_n").set_value(8)
    at.number_input(key="q_boot").set_value(10)
    at.number_input(key="q_enc_epochs").set_value(ENCODER_EPOCHS)
    at.number_input(key="q_div_pairs").set_value(20)
    at.button(key="q_go").click().run()
    assert not at.exception, at.exception

    job = next(j for j in jobs.list_jobs() if j.command == "quality")
    assert job.state == "queued" and job.meta["argv"] == ["quality", "--config", str(job.dir / "config.json")]
    config = json.loads((job.dir / "config.json").read_text())   # what the command will read, validated
    assert len(config["synthetic"]) == 2 and set(config["synthetic"]) <= {str(r) for r in runs}
    assert config["epochs_of"] in {str(r) for r in runs} and config["n_per_class"] == 8
    assert config["real"] == str(small_phantom.root) and config["out"] == str(job.dir)
    jobs.cancel(job.id)

    out, _, _ = quality_report(small_phantom)
    run = next(r for r in tracking.search_runs("quality") if r.data.tags.get("medaug.out") == str(out))
    at.run()
    assert not at.exception, at.exception
    past = next(c for c in report_choices() if c.run_id == run.info.run_id)   # a past MLflow run
    assert past.kind == "run" and past.out == str(out)
    at.selectbox(key="q_report_pick").set_value(past).run()
    assert not at.exception, at.exception
    assert [e.value for e in at.error] == ["1 near-copy flagged."]   # the planted copy, and nothing else
    small = [str(w.value) for w in at.warning if str(w.value).startswith("Small sets:")]
    assert len(small) == 1 and "synthetic images per set for" in small[0]   # FID is unstable at these sizes
    table = at.dataframe[0].value
    assert len(table) == 3 and set(table["extractor"]) == {"domain"}
    assert all("[" in v for v in table["FID [95% CI]"])
    assert any("domain encoder" in str(c.value) for c in at.caption)
    assert len(at.get("plotly_chart")) >= 4   # sets, distribution, epochs, memorization
    at.selectbox(key="q_metric").set_value("psnr").run()
    at.radio(key="q_kind").set_value("box").run()
    assert not at.exception, at.exception
    at.selectbox(key="q_pairs_set").set_value("planted copy (test)").run()
    shown = [str(i.proto) for i in at.get("imgs") + at.get("image")]
    assert any("FLAGGED near-copy" in p for p in shown), shown[:2]


def test_a_report_missing_columns_is_named_not_a_crash(small_phantom, tmp_path, monkeypatch):
    """A report folder from another version (a sets.csv without the metric columns) is the newest one."""
    from tests.test_quality_choices import fake_job, report_folder

    home = tmp_path / "home"
    monkeypatch.setenv("MEDAUG_HOME", str(home))
    monkeypatch.setenv("MEDAUG_DATASET", str(small_phantom.root))
    report_folder(fake_job(home, "old1", ["quality", "--real", "x"], "finished", 2e9), ["an old set"])
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.switch_page("pages/quality.py").run()
    assert not at.exception, at.exception
    errors = [str(e.value) for e in at.error]
    assert any("sets.csv lacks extractor" in e and "run the evaluation again" in e for e in errors), errors
