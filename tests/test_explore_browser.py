"""The Explore a generator page in headless Chromium: a GAN's interpolation strip and class sweep render as
images, the nearest-real search trains the domain encoder on request and gives a verdict, and switching
to a diffusion checkpoint shows its DDIM sliders and strip. Screenshots go to tests/artifacts/explorer-*.png
(``PYTHONPATH=. python tests/test_explore_browser.py WORKSPACE DATASET [DIR]`` writes the docs ones from a workspace
with finished train-gan and train-diffusion jobs)."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.browser import CHROMIUM, chromium_page, serve_app, tall_screenshot, wait_rendered
from tests.test_explore_page import generator_jobs  # noqa: F401 -- the fixture

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} missing: apt-get install chromium")]
SHOTS = Path(__file__).resolve().parent / "artifacts"


def images_shown(page) -> int:
    return page.locator("[data-testid='stImage'] img").count()


QUIET_JS = ("() => !document.querySelector('[data-stale=\"true\"], [data-testid=\"stSpinner\"]')"
            " && [...document.querySelectorAll('[data-testid=\"stImage\"] img')].every(i => i.complete && i.naturalWidth)")


def settle(page, timeout_ms: int, quiet_s: float = 1.5) -> None:
    """Wait until the page has been quiet for ``quiet_s``: no stale element of the previous run left (the
    script is done), no spinner, every image loaded (the status widget is not in the DOM headless)."""
    deadline, quiet_since = time.monotonic() + timeout_ms / 1000, None
    while time.monotonic() < deadline:
        if page.evaluate(QUIET_JS):
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= quiet_s:
                return
        else:
            quiet_since = None
        page.wait_for_timeout(250)
    raise TimeoutError(f"the page did not settle within {timeout_ms / 1000:.0f} s")


def pick(page, label: str, option: str) -> None:
    """Choose ``option`` in the selectbox labelled ``label``."""
    box = page.get_by_label(label, exact=True)
    box.scroll_into_view_if_needed()
    box.click()   # opens the list; typing filters it, Enter takes the match
    page.keyboard.type(option)
    page.get_by_role("option", name=option, exact=True).wait_for(timeout=10_000)
    page.keyboard.press("Enter")


def explore(page, url: str, labels: dict[str, str], shots: Path, timeout_ms: int = 120_000) -> dict[str, float]:
    """Drive the page over a GAN (and a diffusion model when ``labels`` has one); returns seconds per step."""
    seconds = {}
    t0 = time.perf_counter()
    # home first: on a fresh server a deep link's first run is an old-style (v1) page run, and the widget
    # state of that run is lost at the first interaction (the first checkpoint pick would snap back)
    page.goto(url)
    wait_rendered(page, "text=MedAug Studio", timeout_ms)
    page.goto(f"{url}/explore")
    wait_rendered(page, "text=Same noise across classes", timeout_ms)
    pick(page, "Checkpoint", labels["gan"])
    page.wait_for_selector("text=(gan, conditional)", timeout=timeout_ms)   # only the new run says so
    settle(page, timeout_ms)
    seconds["gan page"] = time.perf_counter() - t0
    assert images_shown(page) >= 8 + 8, images_shown(page)   # the strip and one noise as every class
    tall_screenshot(page, shots / "explorer-gan.png")

    t0 = time.perf_counter()
    offer = page.get_by_role("button", name="Train it and search")   # absent when the encoder is cached
    if offer.count():
        offer.click()
    page.wait_for_selector("text=/No near-copy|Possible copy/", timeout=timeout_ms)
    settle(page, timeout_ms)
    seconds["nearest (encoder trained)"] = time.perf_counter() - t0
    page.get_by_text("Nearest real images", exact=True).evaluate("e => e.scrollIntoView({block: 'start'})")
    assert page.get_by_role("button", name="Train it and search").count() == 0   # the offer is gone
    page.mouse.move(0, 0)   # no hover icons on the images
    page.wait_for_timeout(300)
    page.screenshot(path=str(shots / "explorer-nearest.png"))

    if "diffusion" in labels:
        t0 = time.perf_counter()
        pick(page, "Checkpoint", labels["diffusion"])
        page.wait_for_selector("text=DDIM steps", timeout=timeout_ms)   # diffusion only: the new run
        settle(page, timeout_ms)
        assert page.get_by_text("(diffusion, conditional)").count() == 1
        seconds["diffusion page"] = time.perf_counter() - t0
        assert page.get_by_text("DDIM steps", exact=True).count() == 1
        tall_screenshot(page, shots / "explorer-diffusion.png")
    return seconds


def test_explore_page_in_chromium(small_phantom, generator_jobs, isolated_workspace):  # noqa: F811
    SHOTS.mkdir(exist_ok=True)
    labels, _ = generator_jobs
    env = {"MEDAUG_DATASET": str(small_phantom.root), "MEDAUG_HOME": str(isolated_workspace),
           "MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"]}
    with serve_app(env) as (url, _), chromium_page(width=1400, height=1000) as page:
        explore(page, url, labels, SHOTS)
    assert (SHOTS / "explorer-gan.png").stat().st_size > 10_000


if __name__ == "__main__":   # the docs screenshots from a workspace with finished generator jobs
    import sys

    home, data = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    out = Path(sys.argv[3] if len(sys.argv) > 3 else "docs/screenshots")
    out.mkdir(parents=True, exist_ok=True)
    os.environ.update(MEDAUG_HOME=str(home), MLFLOW_TRACKING_URI=f"sqlite:///{home / 'mlflow.db'}")
    from core import explorer

    found = {g.family: g.label for g in reversed(explorer.finished_generators())}   # the newest of each family
    env = {"MEDAUG_DATASET": str(data), **{k: os.environ[k] for k in ("MEDAUG_HOME", "MLFLOW_TRACKING_URI")}}
    with serve_app(env) as (url, _), chromium_page(width=1400, height=1000) as page:
        print(explore(page, url, found, out, timeout_ms=600_000))
