"""Browser smoke test: the real server, real Chromium, Home and Dataset, screenshots saved."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.browser import CHROMIUM, HOME_READY, chromium_page, serve_app, tall_screenshot, wait_rendered

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} missing: apt-get install chromium")]
SHOTS = Path(__file__).resolve().parent / "artifacts"
EPOCHS = 40   # the live-run job's length: minutes on 2 cores, maybe seconds on a fast machine


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
        wait_rendered(page, HOME_READY)
        assert "imbalance ratio" in page.inner_text(HOME_READY)
        assert page.locator(".js-plotly-plot").count() == 0   # Home needs no plotly.js
        assert page.locator("[data-testid='stException']").count() == 0
        assert "MedAug Studio" in page.inner_text("body")
        assert page.locator("text=Synthetic phantom").count() >= 1
        tall_screenshot(page, SHOTS / "home.png")


def test_gan_page_during_a_live_run(small_phantom, isolated_workspace):
    """A real training job streams its curves and epoch grids into the page while it runs."""
    from core import jobs

    SHOTS.mkdir(exist_ok=True)
    env = {"MEDAUG_DATASET": str(small_phantom.root), "MEDAUG_HOME": str(isolated_workspace),
           "MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"]}
    job = jobs.submit("train-gan", label="dcgan · Osteophytes · 64px (browser test)",
                      config={"data": str(small_phantom.root), "out": "{job_dir}", "class": "Osteophytes",
                              "variant": "dcgan", "resolution": 64, "batch": 16, "epochs": EPOCHS, "width": 16})
    try:
        with serve_app(env) as (url, _), chromium_page() as page:
            page.goto(f"{url}/gan")
            wait_rendered(page, "text=Launch training")
            page.get_by_role("tab", name="Live jobs").click()
            # The fragment polls every 2 s: wait until the page shows epoch 2 or later both in the
            # sample grid and in the progress bar (they come from different files, written at
            # different moments). A slow machine catches the run mid-way, a fast one may find it
            # finished: either way those hold, and the page says which of the two it is.
            page.wait_for_function(
                "() => /Fixed-noise samples after epoch ([2-9]|\\d\\d)/.test(document.body.innerText)"
                f" && /step \\d+\\/\\d+ · epoch ([2-9]|\\d\\d)\\/{EPOCHS}/.test(document.body.innerText)",
                timeout=120_000)
            page.wait_for_selector(".js-plotly-plot", timeout=30_000)
            errors = page.locator("[data-testid='stException']")
            assert errors.count() == 0, errors.first.inner_text()
            assert "D loss" in page.inner_text(".js-plotly-plot")
            body = page.inner_text("body")
            progress = re.findall(rf"step (\d+)/(\d+) · epoch (\d+)/{EPOCHS}", body)
            assert progress, body
            step, total, epoch = map(int, progress[-1])
            assert epoch >= 2 and 0 < step <= total, progress
            if step < total:     # live: the run's state and its ETA
                assert "running" in body and "ETA" in body, body
            else:                # done: the last epoch's progress
                assert epoch == EPOCHS, progress
            tall_screenshot(page, SHOTS / "gan_live.png")
    finally:
        ended = jobs.cancel(job.id).state
    assert ended in ("cancelled", "finished"), ended   # stopped by the cancel, or done before it
