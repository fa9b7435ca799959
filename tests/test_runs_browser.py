"""Runs page in headless Chromium: a three-run comparison (curves, params diff, sample grids under
one epoch slider), opened from a shared link; screenshots saved to tests/artifacts/."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from tests.browser import CHROMIUM, chromium_page, serve_app, tall_screenshot, wait_rendered
from tests.test_runs import fill_runs

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} missing: apt-get install chromium")]
SHOTS = Path(__file__).resolve().parent / "artifacts"


def test_three_run_comparison_in_chromium(small_phantom, isolated_workspace, tmp_path):
    SHOTS.mkdir(exist_ok=True)
    ids = fill_runs(f"test-browser-{uuid.uuid4().hex[:6]}", small_phantom, tmp_path, n_gan=3, epochs=4)
    gans = [ids["gan-dcgan"], ids["gan-wgan"], ids["gan-wgan-gp"]]
    env = {"MEDAUG_DATASET": str(small_phantom.root), "MEDAUG_HOME": str(isolated_workspace),
           "MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"]}
    with serve_app(env) as (url, _), chromium_page(1440, 1000) as page:
        # a deep link as the fresh server's first request: its query (the runs) and the first widget
        # change below must both hold (pages.ui._leave_v1_routing reruns the page under st.navigation)
        page.goto(f"{url}/runs?runs={','.join(gans)}")
        wait_rendered(page, ".js-plotly-plot")
        assert page.locator("[data-testid='stException']").count() == 0
        assert "3 run(s) selected" in page.inner_text("[data-testid='stMain']")
        legend = page.inner_text(".js-plotly-plot >> nth=0")
        assert all(n in legend for n in ("gan-dcgan", "gan-wgan", "gan-wgan-gp")), legend
        page.locator("[data-testid='stRadio']").get_by_text("epoch", exact=True).click()   # x axis in epochs
        wait_rendered(page, ".js-plotly-plot")
        page.wait_for_function("() => [...document.querySelectorAll('.js-plotly-plot .xtitle')]"
                               ".some(t => t.textContent === 'epoch')", timeout=30_000)
        tall_screenshot(page, SHOTS / "runs_compare.png")

        page.get_by_role("tab", name="Params").click()
        page.wait_for_timeout(500)
        tall_screenshot(page, SHOTS / "runs_params.png")

        page.get_by_role("tab", name="Images").click()
        page.wait_for_selector("[data-testid='stImage'] img >> nth=2", timeout=30_000)
        caps = page.locator("[data-testid='stImageCaption']").all_inner_texts()
        assert sum("epoch 4" in c for c in caps) == 3, caps
        # the one slider moves every run's grid: one step left is epoch 3 for all three
        page.get_by_role("slider").first.focus()
        page.keyboard.press("ArrowLeft")
        page.wait_for_function("() => [...document.querySelectorAll('[data-testid=\"stImageCaption\"]')]"
                               ".filter(c => c.textContent.includes('epoch 3')).length === 3", timeout=30_000)
        wait_rendered(page, "[data-testid='stImage'] img")
        tall_screenshot(page, SHOTS / "runs_images.png")
        assert "runs=" in page.url   # the address still links to this comparison
