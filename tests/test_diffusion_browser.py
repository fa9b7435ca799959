"""Diffusion page in headless Chromium: the form, and a real training job's live panel and finished run.

``python tests/test_diffusion_browser.py [DIR] [SECONDS]`` writes the docs screenshots
(diffusion-form.png, diffusion-training.png, diffusion-finished.png) from a real job: 64 px, UNet width
16, a time budget of SECONDS (default 150), on a small phantom."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.browser import CHROMIUM, chromium_page, serve_app, tall_screenshot, wait_rendered

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} missing: apt-get install chromium")]
SHOTS = Path(__file__).resolve().parent / "artifacts"


def open_tab(page, url: str, tab: str, ready: str) -> None:
    """The Diffusion page's ``tab``, once ``ready`` (a selector in that tab) shows."""
    page.goto(f"{url}/diffusion")   # a deep link as the first request keeps its first widget change
    wait_rendered(page, "[data-testid='stTab']")
    page.get_by_role("tab", name=tab).click()
    wait_rendered(page, ready)


def shoot(data_root: Path, home: Path, out: Path, seconds: float, grid_every: int, width: int = 16) -> dict:
    """Launch a real job as the form would, screenshot the form, the live panel while it trains, and
    the finished run; returns the job's final status."""
    from core import jobs

    out.mkdir(parents=True, exist_ok=True)
    env = {"MEDAUG_DATASET": str(data_root), "MEDAUG_HOME": str(home),
           "MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"]}
    config = {"resolution": 64, "batch": 8, "width": width, "max_steps": None, "max_seconds": seconds,
              "grid_every": grid_every, "sample_steps": 8, "guidance": 1.0, "device": "cpu", "conditional": False,
              "class": "Osteophytes", "data": str(data_root), "out": "{job_dir}"}
    with serve_app(env) as (url, _), chromium_page(1440, 1000) as page:
        open_tab(page, url, "Train", "button:has-text('Launch training')")
        assert page.locator("[data-testid='stException']").count() == 0
        tall_screenshot(page, out / "diffusion-form.png")
        job = jobs.submit("train-diffusion", config, label="ddpm · Osteophytes · 64px")
        deadline = time.monotonic() + seconds + 300
        while not jobs.get_job(job.id).status.get("grid") and time.monotonic() < deadline:
            time.sleep(1)   # the first grid, while the job trains on
        open_tab(page, url, "Live jobs", "[data-testid='stImage'] img >> visible=true")
        page.wait_for_timeout(2500)   # one poll of the live fragment
        assert page.locator("[data-testid='stException']").count() == 0
        assert "Fixed-noise samples after step" in page.inner_text("[data-testid='stMain']")
        tall_screenshot(page, out / "diffusion-training.png")
        while jobs.get_job(job.id).active and time.monotonic() < deadline:
            time.sleep(2)
        done = jobs.get_job(job.id)
        assert done.state == "finished", done.log_tail()
        open_tab(page, url, "Past runs", "[data-testid='stImage'] img >> visible=true")
        assert page.locator("[data-testid='stException']").count() == 0
        tall_screenshot(page, out / "diffusion-finished.png")
        return done.status


def test_a_real_job_shows_live_and_finished_in_chromium(small_phantom, isolated_workspace):
    status = shoot(small_phantom.root, isolated_workspace, SHOTS, seconds=20, grid_every=2, width=8)
    assert status["step"] >= 2


if __name__ == "__main__":
    import sys
    import tempfile

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshots")
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 150.0
    home = Path(tempfile.mkdtemp(prefix="medaug-shots-"))
    os.environ.update(MEDAUG_HOME=str(home), MLFLOW_TRACKING_URI=f"sqlite:///{home / 'mlflow.db'}")
    from core.data.datasets import build_phantom_dataset
    from core.workspace import workspace_dir

    data = build_phantom_dataset(workspace_dir("datasets") / "phantom-small", n=240, size=64, seed=1, workers=1)
    final = shoot(data.root, home, out, seconds, grid_every=8)
    print(f"{final['step']} steps, {final.get('img_per_s')} img/s; screenshots in {out}")
