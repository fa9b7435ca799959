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


def test_ray_form_and_live_cell_board_in_chromium(small_phantom, isolated_workspace, monkeypatch):
    """The Study form with "Run on: Ray cluster" (a bad address is refused, a good one launchable) and the
    Live jobs tab of a running study job whose status.json (written here) holds cells in every state."""
    import json
    import subprocess
    import sys
    import time

    from playwright.sync_api import expect

    from core import jobs
    from core.study.grid import StudyConfig, cells

    monkeypatch.setattr(jobs, "schedule", lambda: [])   # the job is drawn, never started
    config = StudyConfig(sets=("real", "rotate45", "hflip", "vflip", "crop", "zoom", "shear30", "classic", "dcgan",
                               "wgan"), networks=("small_cnn", "resnet18"), seeds=(0, 1, 2))
    grid = [c.key for c in cells(config)]
    states = {k: "finished" for k in grid[:23]} | {k: "running" for k in grid[23:25]} | \
        {k: "pending" for k in grid[25:]}
    states[grid[4]] = "failed"
    failed = {grid[4]: "RuntimeError: the cell's worker died 4 times (max_retries=3): node 10.0.0.7 lost"}
    n = {s: sum(v == s for v in states.values()) for s in ("finished", "running", "pending", "failed")}
    job = jobs.submit("study", {"sets": list(config.sets), "networks": list(config.networks), "seeds": [0, 1, 2],
                                "data": str(small_phantom.root), "out": "{job_dir}", "executor": "ray"},
                      label=f"study · quick · {len(grid)} cells · Ray")
    (job.dir / "status.json").write_text(json.dumps(
        {"kind": "study", "state": "running", "message": "ray: connected to a local Ray: 2 CPUs, 0 GPUs, 1 node(s)",
         "executor": "ray", "ray_slots": 2, "cells_total": len(grid), "cells_done": n["finished"],
         "cells_running": n["running"], "cells_pending": n["pending"], "cells_failed": n["failed"],
         "cell_states": states, "failed": failed, "eta_s": 1234.0}))
    # a live "supervisor" (its command line names the job) so the job shows as running
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", job.id])
    jobs._update(job.dir, state="running", pid=sleeper.pid, started=time.time())
    SHOTS.mkdir(exist_ok=True)
    env = {"MEDAUG_DATASET": str(small_phantom.root), "MEDAUG_HOME": str(isolated_workspace),
           "MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"], "MEDAUG_MAX_JOBS": "1"}
    try:
        with serve_app(env) as (url, _), chromium_page() as page:
            page.goto(f"{url}/classify")
            wait_rendered(page, "text=Launch study")
            # one click: the first widget change after a deep link to a fresh server is kept (pages.ui
            # _leave_v1_routing; it used to be dropped)
            page.get_by_role("radio", name="Ray cluster").check(force=True)
            wait_rendered(page, "text=Ray address", 15_000)
            address = page.get_by_label("Ray address", exact=True).and_(page.locator("input"))
            address.fill("head")
            address.press("Enter")
            wait_rendered(page, "text=is not of the shape HOST:6379")
            # the button is drawn after the message: wait for the rerun to reach it
            expect(page.get_by_role("button", name="Launch study on Ray")).to_be_disabled(timeout=15_000)
            page.screenshot(path=str(SHOTS / "classify_ray_bad_address.png"))
            address.fill("ray://head-svc:10001")
            address.press("Enter")
            wait_rendered(page, "text=as many cells at once as it has GPUs")
            expect(page.get_by_role("button", name="Launch study on Ray")).to_be_enabled(timeout=15_000)
            tall_screenshot(page, SHOTS / "classify_ray_form.png")

            page.get_by_role("tab", name="Live jobs").click()
            wait_rendered(page, ".medaug-board")
            errors = page.locator("[data-testid='stException']")
            assert errors.count() == 0, errors.first.inner_text()
            for state, count in n.items():
                assert page.locator(f".medaug-cell-{state}").count() == count, state
            body = page.inner_text("body")
            assert (f"finished {n['finished']}/{len(grid)} · running {n['running']} · pending {n['pending']} · "
                    f"failed {n['failed']} · ETA 20.6 min") in body
            assert "node 10.0.0.7 lost" in body and "2 cells at once" in body
            tip = page.locator(".medaug-cell-failed").get_attribute("title")
            assert tip == f"{grid[4]}: failed — {failed[grid[4]]}"
            page.locator(".medaug-board").scroll_into_view_if_needed()
            tall_screenshot(page, SHOTS / "classify_live_board.png")
            page.locator(".medaug-board").screenshot(path=str(SHOTS / "classify_live_board_only.png"))
    finally:
        sleeper.kill()
        sleeper.wait()
        jobs._update(job.dir, state="cancelled", ended=time.time())
