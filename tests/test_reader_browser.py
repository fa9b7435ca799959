"""The Reader study page in headless Chromium: the served HTML names no image (id, token, file name,
source path, generator), the keyboard answers (Right synthetic, Left real, 1-5 confidence), a reload
of the URL continues at the next unanswered image, and the results render. Screenshots go to
tests/artifacts/reader-*.png (``python tests/test_reader_browser.py`` writes the docs ones)."""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from core import reader_study as rs
from tests.browser import CHROMIUM, chromium_page, serve_app, tall_screenshot, wait_rendered
from tests.reader_helpers import CLASSES

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} missing: apt-get install chromium")]
SHOTS = Path(__file__).resolve().parent / "artifacts"


def wait_progress(page, done: int, total: int, timeout_ms: int = 30_000) -> None:
    page.wait_for_function(f"() => document.body.innerText.includes('{done} / {total}')", timeout=timeout_ms)


def idle(page, timeout_ms: int = 60_000) -> None:
    """Wait until Streamlit is not running the page's script (its status widget is gone)."""
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout_ms)


def read_with_the_keyboard(page, url: str, study, reader: str, n: int, shots: Path | None = None) -> float:
    """Open the study, type the name, answer ``n`` images with the keyboard (confidence 1-5 then an
    arrow); returns the seconds per image (page round trips only: no human in the loop)."""
    page.goto(f"{url}/reader?rd_study={study.id}")
    wait_rendered(page, "text=Your name")
    page.get_by_label("Your name", exact=True).fill(reader)
    page.get_by_label("Your name", exact=True).press("Enter")
    total = len(study.tokens)
    wait_progress(page, 0, total)
    page.wait_for_selector("[data-testid='stImage'] img", timeout=30_000)
    page.evaluate("document.activeElement.blur()")   # leave the text box: shortcuts do not fire inside inputs
    t0 = time.perf_counter()
    for i in range(n):
        idle(page)   # a key pressed while the script still reruns can be lost on a loaded machine
        page.keyboard.press(str(1 + i % 5))
        page.wait_for_function(f"() => [...document.querySelectorAll('button[kind=primary], button[data-testid="
                               f"\"stBaseButton-primary\"]')].some(b => b.innerText.trim().startsWith('{1 + i % 5}'))",
                               timeout=30_000)
        idle(page)
        page.keyboard.press("ArrowRight" if i % 2 == 0 else "ArrowLeft")
        wait_progress(page, i + 1, total)
        if shots is not None and i == 2:
            page.wait_for_timeout(400)
            page.screenshot(path=str(shots / "reader-read.png"))
    return (time.perf_counter() - t0) / n


def test_reader_page_blinded_keyboard_and_reload(small_phantom, isolated_workspace):
    from tests.test_reader_page import secrets_of, workspace_sets

    SHOTS.mkdir(exist_ok=True)
    sets = workspace_sets()
    study = rs.create_study(small_phantom.root, [d.root for d in sets], CLASSES, n_synthetic_per_source=6, seed=9)
    env = {"MEDAUG_DATASET": str(small_phantom.root), "MEDAUG_HOME": str(isolated_workspace),
           "MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"]}
    with serve_app(env) as (url, _), chromium_page(width=1280, height=900) as page:
        per_image = read_with_the_keyboard(page, url, study, "Ann", 6, shots=SHOTS)
        html = page.content()
        leaked = [s for s in secrets_of(study) if s in html]
        assert not leaked, leaked
        assert len(re.findall(r"<img[^>]+/media/", html)) == 1
        answers = rs.answers_table(study, "Ann")
        order = rs.progress(study, "Ann").order
        assert answers["token"].tolist() == order[:6]
        assert answers["answer"].tolist() == ["synthetic", "real"] * 3
        assert answers["confidence"].tolist() == [1, 2, 3, 4, 5, 1]
        print(f"keyboard: {per_image:.2f} s per image (page round trips)")
        assert per_image < 5
        # a reload (the URL keeps the study and the name) continues at the seventh image
        page.reload()
        wait_progress(page, 6, len(study.tokens))
        page.wait_for_selector("[data-testid='stImage'] img", timeout=30_000)
        page.evaluate("document.activeElement.blur()")
        page.keyboard.press("ArrowRight")
        wait_progress(page, 7, len(study.tokens))
        assert rs.answers_table(study, "Ann")["token"].tolist()[-1] == order[6]
        # results
        page.get_by_text("Results", exact=True).click()
        wait_rendered(page, "text=Per reader")
        page.wait_for_selector(".js-plotly-plot", timeout=30_000)
        assert "Ann" in page.inner_text("body") and "chance" in page.inner_text("body")
        errors = page.locator("[data-testid='stException']")
        assert errors.count() == 0, errors.first.inner_text()
        tall_screenshot(page, SHOTS / "reader-results.png")


if __name__ == "__main__":   # the docs screenshots: a 128 px phantom, three readers
    import sys
    import tempfile

    import numpy as np

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/screenshots")
    home = Path(tempfile.mkdtemp(prefix="medaug-shots-"))
    os.environ.update(MEDAUG_HOME=str(home), MLFLOW_TRACKING_URI=f"sqlite:///{home / 'mlflow.db'}")
    from core.data.datasets import build_phantom_dataset
    from core.workspace import workspace_dir
    from tests.reader_helpers import fake_gan_set

    real = build_phantom_dataset(workspace_dir("datasets") / "phantom-600", n=600, size=128, seed=4, workers=1)
    sets = [fake_gan_set(workspace_dir("datasets") / "dcgan-conditional", "aaaa1111bbbb2222", CLASSES, 12, "dcgan",
                         size=128, seed=1),
            fake_gan_set(workspace_dir("datasets") / "wgan-gp-osteophytes", "cccc3333dddd4444", ["Osteophytes"], 12,
                         "wgan-gp", size=128, seed=2)]
    study = rs.create_study(real.root, [d.root for d in sets], CLASSES, n_synthetic_per_source=10, seed=1)
    key = rs.key_table(study).set_index("token")
    rng = np.random.default_rng(0)
    for reader, skill in (("Radiologist A", 0.85), ("Resident B", 0.6)):   # simulated readers for the results view
        for t in rs.progress(study, reader).order:
            right = rng.random() < skill
            truth = key.loc[t, "truth"]
            said = truth if right else ("real" if truth == "synthetic" else "synthetic")
            rs.record_answer(study, reader, t, said, key.loc[t, "class"] if rng.random() < 0.7 else None,
                             int(rng.integers(2, 6)), seconds=float(rng.uniform(1.2, 3.5)))
    out.mkdir(parents=True, exist_ok=True)
    env = {"MEDAUG_DATASET": str(real.root), "MEDAUG_HOME": str(home),
           "MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"]}
    with serve_app(env) as (url, _), chromium_page(width=1280, height=900) as page:
        print(f"{read_with_the_keyboard(page, url, study, 'Ann', 5, shots=out):.2f} s per image")
        page.get_by_text("Results", exact=True).click()
        wait_rendered(page, "text=Per reader")
        page.wait_for_selector(".js-plotly-plot", timeout=30_000)
        page.wait_for_timeout(800)
        tall_screenshot(page, out / "reader-results.png")
