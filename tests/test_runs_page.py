"""Runs page (AppTest) on a temporary MLflow store filled through core.tracking: filters, study
grouping, selection, params diff highlighting, the shared epoch slider, trash with confirmation,
the report download, and the empty / unreachable store panels."""
from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import runs as R
from tests.test_runs import closed_port, fill_runs

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def store(session_home, small_phantom, tmp_path_factory):
    exp = f"test-page-{uuid.uuid4().hex[:6]}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDAUG_HOME", str(session_home))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{session_home / 'mlflow.db'}")
        ids = fill_runs(exp, small_phantom, tmp_path_factory.mktemp("grids"), n_gan=3, epochs=4)
    return exp, ids


def open_page(monkeypatch, small_phantom) -> AppTest:
    monkeypatch.setenv("MEDAUG_DATASET", str(small_phantom.root))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.switch_page("pages/runs.py").run()
    assert not at.exception, at.exception
    return at


def table(at):
    frames = [d for d in at.dataframe if (d.key or "").startswith("runs_table_")]
    assert len(frames) == 1
    return frames[0]


def frame_with(at, row: str):
    """The dataframe whose index holds ``row`` (a plain st.dataframe has no key in AppTest)."""
    found = [d for d in at.dataframe if row in d.value.index]
    assert len(found) == 1, [list(d.value.index)[:5] for d in at.dataframe]
    return found[0]


def select(at, names: list[str]) -> None:
    t = table(at)
    shown = [r.strip().removeprefix("↳ ").split("  (")[0] for r in t.value["run"]]
    at.session_state[t.key] = {"selection": {"rows": [shown.index(n) for n in names], "columns": [], "cells": []}}
    at.run()
    assert not at.exception, at.exception


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def test_filter_select_compare(store, small_phantom, monkeypatch):
    exp, ids = store
    at = open_page(monkeypatch, small_phantom)
    at.multiselect(key="runs_exp").set_value([exp]).run()
    assert not at.exception, at.exception
    assert len(table(at).value) == 6
    # grouping: the study then its two children, indented
    runs = list(table(at).value["run"])
    i = runs.index("study-A  (2 runs)")
    assert [r.strip() for r in runs[i + 1:i + 3]] == ["↳ cls-seed0", "↳ cls-seed1"]
    # filters: kind (whole studies kept, or not), tags
    at.multiselect(key="runs_kind").set_value(["classifier"]).run()
    assert set(table(at).value["kind"]) == {"study", "classifier"} and len(table(at).value) == 3
    at.toggle(key="runs_family").set_value(False).run()
    assert set(table(at).value["kind"]) == {"classifier"}
    at.multiselect(key="runs_kind").set_value(["train-gan"]).run()
    assert len(table(at).value) == 3
    at.text_input(key="runs_tags").set_value("team=gan").run()
    assert sorted(table(at).value["run"]) == ["gan-wgan", "gan-wgan-gp"]
    at.text_input(key="runs_tags").set_value("").run()

    # select the three GAN runs
    select(at, ["gan-dcgan", "gan-wgan", "gan-wgan-gp"])
    assert "3 run(s) selected" in texts(at.subheader)
    assert len(at.get("plotly_chart")) >= 1
    assert at.multiselect(key="runs_metrics").value == ["loss_d", "loss_g"]
    at.radio(key="runs_x").set_value("epoch").run()
    assert not at.exception, at.exception
    assert at.radio(key="runs_x").value == "epoch"
    assert '"title":{"text":"epoch"}' in at.get("plotly_chart")[0].proto.spec.replace(" ", "")

    # params: only the differing rows (variant, seed) carry the highlight
    params = frame_with(at, "variant")
    names = list(params.value.index)
    assert names[:2] == ["seed", "variant"]
    css = params.proto.arrow_data.styler.styles
    lit = {int(r) for sel, body in re.findall(r"([^{}]+)\{([^}]*)\}", css) if "#ffe7a3" in body
           for r in re.findall(r"_row(\d+)_col", sel)}
    assert lit == {0, 1}, css
    assert "2 of 6 params differ" in texts(at.caption)
    at.toggle(key="runs_only_diff").set_value(True).run()
    assert list(frame_with(at, "variant").value.index) == ["seed", "variant"]

    # final / best metrics
    metrics = frame_with(at, "loss_d").value
    assert {"loss_d", "loss_g"} <= set(metrics.index)

    # one shared epoch slider moves every run's grid
    slider = at.select_slider(key="runs_epoch")
    assert list(slider.options) == ["1", "2", "3", "4"] and slider.value == 4
    slider.set_value(2).run()
    caps = [i.proto.imgs[0].caption for i in at.get("image")]
    assert sum("· epoch 2" in c for c in caps) == 3, caps
    assert not any("epoch 4" in c for c in caps)

    # the MLflow UI link and its start command
    assert any("compare-runs" in m.value for m in at.markdown)
    assert any("mlflow server --backend-store-uri" in c.value for c in at.code)

    # report: built on request, offered as a download
    at.button(key="runs_report_build").click().run()
    assert not at.exception, at.exception
    built_ids, html = at.session_state["runs_report"]
    assert set(built_ids) == {ids["gan-dcgan"], ids["gan-wgan"], ids["gan-wgan-gp"]}
    assert "gan-wgan-gp" in html and html.count("<figure>") >= 3
    assert any(e.proto.label == "Download report (HTML)" for e in at.get("download_button"))


def test_trash_needs_confirmation_and_restores(store, small_phantom, monkeypatch):
    exp, ids = store
    at = open_page(monkeypatch, small_phantom)
    at.multiselect(key="runs_exp").set_value([exp]).run()
    select(at, ["gan-wgan"])
    at.button(key="runs_delete").click().run()
    assert "Move **1 run(s)** to the MLflow trash" in texts(at.warning)
    at.button(key="runs_cancel").click().run()          # nothing happens without a yes
    assert "gan-wgan" in list(table(at).value["run"]) and not at.warning
    select(at, ["gan-wgan"])
    at.button(key="runs_delete").click().run()
    at.button(key="runs_confirm").click().run()
    assert not at.exception, at.exception
    assert "gan-wgan" not in list(table(at).value["run"])
    assert "moved to the trash" in texts(at.success)
    assert ids["gan-wgan"] in set(R.list_runs([exp], deleted=True)["run_id"])
    at.toggle(key="runs_trash").set_value(True).run()
    assert list(table(at).value["run"]) == ["gan-wgan"]
    assert "can be restored" in texts(at.info)          # the trash note says it can come back
    select(at, ["gan-wgan"])
    at.button(key="runs_restore").click().run()
    assert ids["gan-wgan"] in set(R.list_runs([exp])["run_id"])

    # rename: asks first
    at.toggle(key="runs_trash").set_value(False).run()
    select(at, ["gan-dcgan"])
    at.text_input(key="runs_rename_to").set_value("dcgan-baseline").run()
    at.button(key="runs_rename").click().run()
    assert "Rename **gan-dcgan" in texts(at.warning)
    at.button(key="runs_confirm").click().run()
    assert "dcgan-baseline" in list(table(at).value["run"])


def test_missing_store_shows_how_to_start(small_phantom, monkeypatch, tmp_path):
    db = tmp_path / "fresh" / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    at = open_page(monkeypatch, small_phantom)
    assert "how to get started" in texts(at.markdown)
    assert any("python -m core train-gan" in c.value for c in at.code)
    assert not db.exists()


def test_unreachable_store_says_so_quickly(small_phantom, monkeypatch, http_calls):
    uri = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("MEDAUG_DATASET", str(small_phantom.root))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    http_calls.clear()
    at.switch_page("pages/runs.py").run()
    assert not at.exception, at.exception
    # quick: the page asks the server once, with a bounded wait, and then nothing through MLflow's
    # client (whose retries and back-off would hold the page for minutes)
    assert http_calls == [("probe", f"{uri}/health", 3.0)], http_calls
    err = texts(at.error)
    assert uri in err and "cannot be reached" in err and "MLFLOW_TRACKING_URI" in err
