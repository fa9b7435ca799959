"""Classify page in real Chromium: the Results tab of a finished (tiny) study, screenshot saved."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.browser import CHROMIUM, chromium_page, serve_app, tall_screenshot, wait_rendered

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} missing: apt-get install chromium")]
SHOTS = Path(__file__).resolve().parent / "artifacts"


def test_study_results_in_chromium(small_phantom, isolated_workspace, tmp_path):
    from core.study.grid import StudyConfig
    from core.study.run import run_study

    config = StudyConfig(sets=("real", "vflip", "zoom"), image_size=16, epochs=1, batch_size=64, n_boot=50)
    summary = run_study(small_phantom.root, config, tmp_path / "study", log=lambda m: None)
    SHOTS.mkdir(exist_ok=True)
    env = {"MEDAUG_DATASET": str(small_phantom.root), "MEDAUG_HOME": str(isolated_workspace),
           "MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"]}
    with serve_app(env) as (url, _), chromium_page() as page:
        page.goto(f"{url}/classify")
        wait_rendered(page, "text=Launch study")
        page.get_by_role("tab", name="Results").click()
        page.wait_for_selector("text=Results: macro_f1", timeout=90_000)
        page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 4", timeout=90_000)
        wait_rendered(page, "[data-testid='stDataFrame']")
        errors = page.locator("[data-testid='stException']")
        assert errors.count() == 0, errors.first.inner_text()
        body = page.inner_text("body")
        assert summary["study_run_id"] in body and "Δ sensitivity against real only" in body
        plots = " ".join(page.locator(".js-plotly-plot").all_inner_texts())
        assert "by augmentation set (95% CI)" in plots and "Confusion matrix" in plots and "vertical flip" in plots
        tall_screenshot(page, SHOTS / "classify_results.png")
