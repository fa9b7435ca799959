"""Browser smoke test: the real server, real Chromium, Home and Dataset, screenshots saved."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.browser import CHROMIUM, chromium_page, serve_app, tall_screenshot, wait_rendered

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} missing: apt-get install chromium")]
SHOTS = Path(__file__).resolve().parent / "artifacts"


def test_home_and_dataset_in_chromium(small_phantom, isolated_workspace):
    SHOTS.mkdir(exist_ok=True)
    env = {"MEDAUG_DATASET": str(small_phantom.root), "MEDAUG_HOME": str(isolated_workspace),
           "MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"]}
    with serve_app(env) as (url, _), chromium_page() as page:
        # the first request after the server starts is a deep link: the menu must still be ours
        page.goto(f"{url}/dataset")
        wait_rendered(page, ".js-plotly-plot")
        nav = page.inner_text("[data-testid='stSidebarNav']")
        assert "Home" in nav and "GAN" in nav and "ui" not in nav.split(), nav
        page.wait_for_selector("[data-testid='stImage'] img", timeout=60_000)
        assert page.locator("[data-testid='stException']").count() == 0
        assert "imbalance ratio" in page.inner_text(".js-plotly-plot")
        assert page.locator("[data-testid='stImage'] img").count() >= 8
        tall_screenshot(page, SHOTS / "dataset.png")

        page.get_by_role("button", name="View").first.click()
        page.wait_for_selector("[role='dialog'] [data-testid='stImage'] img", timeout=30_000)
        page.wait_for_selector("[role='dialog'] table", timeout=30_000)
        assert "image_id" in page.inner_text("[role='dialog']")
        page.screenshot(path=str(SHOTS / "dataset_view.png"))

        page.goto(url)
        wait_rendered(page, ".js-plotly-plot")
        assert page.locator("[data-testid='stException']").count() == 0
        assert "MedAug Studio" in page.inner_text("body")
        assert page.locator("text=Synthetic phantom").count() >= 1
        tall_screenshot(page, SHOTS / "home.png")
