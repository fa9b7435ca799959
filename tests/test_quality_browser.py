"""The Quality page in Chromium, comparing two GAN runs; the screenshot is saved for review."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.browser import CHROMIUM, chromium_page, serve_app, tall_screenshot, wait_rendered
from tests.quality_helpers import quality_report

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} missing: apt-get install chromium")]
SHOTS = Path(__file__).resolve().parent / "artifacts"


def test_quality_page_two_gan_runs_in_chromium(small_phantom, isolated_workspace):
    SHOTS.mkdir(exist_ok=True)
    quality_report(small_phantom)   # the two GAN runs + a planted copy, logged to MLflow by the CLI
    env = {"MEDAUG_DATASET": str(small_phantom.root), "MEDAUG_HOME": str(isolated_workspace),
           "MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"]}
    with serve_app(env) as (url, _), chromium_page(width=1440, height=1000) as page:
        page.goto(f"{url}/quality")
        wait_rendered(page, "text=Set metrics")
        page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 4", timeout=60_000)
        page.wait_for_selector("[data-testid='stImage'] img", timeout=60_000)
        errors = page.locator("[data-testid='stException']")
        assert errors.count() == 0, errors.first.inner_text()
        body = page.inner_text("body")
        assert "dcgan Osteophytes" in body and "wgan-gp conditional" in body
        assert "domain encoder" in body and "1 near-copy flagged" in body
        assert "Fidelity over training" in body and "Memorization audit" in body
        tall_screenshot(page, SHOTS / "quality.png")
