"""The Augment page: AppTest drives the builder, the preview and the apply path; headless
Chromium takes a screenshot of the lab with a 3-operation pipeline on a phantom image."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.browser import CHROMIUM, HOME_READY, chromium_page, serve_app, tall_screenshot, wait_rendered

ROOT = Path(__file__).resolve().parent.parent
SHOTS = Path(__file__).resolve().parent / "artifacts"


@pytest.fixture
def page(small_phantom, monkeypatch):
    monkeypatch.setenv("MEDAUG_DATASET", str(small_phantom.root))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    at.switch_page("pages/augment.py").run()
    assert not at.exception, at.exception
    return at


def step_titles(at) -> list[str]:
    return [str(m.value) for m in at.markdown if str(m.value)[:1] == "*" and ". " in str(m.value)]


def captions(at) -> list[str]:
    return [str(c.value) for c in at.caption]


def test_page_shows_the_starter_pipeline_and_a_preview_grid(page):
    assert page.title[0].value == "Augmentation lab"
    assert step_titles(page) == ["**1. Rotate**", "**2. Horizontal flip**", "**3. Gamma**"]
    assert len(page.get("image")) == 1 + 5                 # the original and five samples
    assert any(c.startswith("original · ") for c in captions(page))
    applied = [c for c in captions(page) if "gamma" in c]  # gamma runs with probability 1: its value shows
    assert len(applied) == 5 and all(any(ch.isdigit() for ch in c) for c in applied)
    # sliders come from the registry: rotate's parameters, gamma's range slider
    assert page.slider(key="aug_s1_angle").value == 0.0 and page.slider(key="aug_s1_jitter").value == 10.0
    assert page.slider(key="aug_s3_gamma").value == (0.7, 1.4)


def test_sliders_add_move_remove_and_presets(page):
    page.slider(key="aug_n").set_value(2).run()
    assert len(page.get("image")) == 3
    before = [c for c in captions(page) if "rotate" in c or "gamma" in c]
    page.slider(key="aug_s3_gamma").set_value((2.0, 2.0)).run()
    assert not page.exception
    assert any("gamma 2" in c for c in captions(page)) and before != captions(page)

    page.selectbox(key="aug_add_op").set_value("random_erasing").run()
    page.button(key="aug_add").click().run()
    assert step_titles(page)[-1] == "**4. Random erasing**"
    assert page.slider(key="aug_s4_area").value == (0.02, 0.1)

    page.button(key="aug_up_4").click().run()            # move it above gamma
    assert step_titles(page)[2:] == ["**3. Random erasing**", "**4. Gamma**"]
    assert page.slider(key="aug_s3_gamma").value == (2.0, 2.0), "a step's values must follow it when it moves"
    page.button(key="aug_rm_1").click().run()            # remove rotate
    assert step_titles(page) == ["**1. Horizontal flip**", "**2. Random erasing**", "**3. Gamma**"]

    page.selectbox(key="aug_preset").set_value("original-study").run()
    page.button(key="aug_load_preset").click().run()
    assert not page.exception
    assert len(step_titles(page)) == 7 and page.get("button_group")  # the mode control is shown
    # the preview's captions: the original's, then one per sample (2, set above), each naming
    # the steps that ran, joined by " · "
    from core.augment.pipeline import PRESETS

    ops = {s.op for s in PRESETS["original-study"]().steps}
    assert len(page.get("image")) == 1 + 2
    caps = captions(page)
    first = next(i for i, c in enumerate(caps) if c.startswith("original · "))
    samples = caps[first + 1:first + 3]
    assert len(samples) == 2 and all(c.split(" ")[0] in ops for c in samples), (caps, ops)
    assert all(" · " not in c for c in samples), f"one_of mode runs exactly one step per sample: {samples}"


def test_exports_follow_the_sliders(page):
    from core.augment import Pipeline, Step

    labels = [b.proto.label for b in page.get("download_button")]
    assert "Pipeline JSON" in labels
    page.slider(key="aug_s1_jitter").set_value(4.5).run()
    page.slider(key="aug_s2_p").set_value(0.25).run()
    snippet = next(str(c.value) for c in page.code if "Pipeline(" in str(c.value))
    expected = Pipeline((Step("rotate", {"angle": 0.0, "jitter": 4.5, "interpolation": "bilinear"}, 0.8),
                         Step("hflip", {}, 0.25), Step("gamma", {"gamma": (0.7, 1.4)}, 1.0)), "chain", "lab")
    assert snippet.strip() == expected.to_python().strip()


def test_apply_writes_an_augmented_set_and_offers_the_zip(page, small_phantom):
    from core.data.datasets import load_dataset

    page.multiselect(key="aug_apply_classes").set_value(["Vertebral collapse", "Spondylolysthesis"]).run()
    page.number_input(key="aug_target").set_value(25).run()
    page.button(key="aug_apply").click().run()
    assert not page.exception, page.exception
    assert not page.error, [e.value for e in page.error]
    done = page.session_state["aug_result"]
    new = load_dataset(done["root"])
    train = new.class_counts("train")
    assert train["Vertebral collapse"] == 25 and train["Spondylolysthesis"] == 25
    assert new.meta["parent"]["content_hash"] == small_phantom.content_hash
    assert any("Wrote" in str(s.value) for s in page.success)
    labels = [b.proto.label for b in page.get("download_button")]
    assert "Augmented images (zip)" in labels and "Pipeline JSON" in labels


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} missing: apt-get install chromium")
def test_lab_in_chromium_with_a_three_step_pipeline(small_phantom, isolated_workspace):
    SHOTS.mkdir(exist_ok=True)
    env = {"MEDAUG_DATASET": str(small_phantom.root), "MEDAUG_HOME": str(isolated_workspace),
           "MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"]}
    with serve_app(env) as (url, _), chromium_page(width=1500, height=1100) as browser:
        browser.goto(url)                     # Home first: the server learns the st.navigation pages
        wait_rendered(browser, HOME_READY)
        browser.get_by_role("link", name="Augment").first.click()
        wait_rendered(browser, "[data-testid='stImage'] img")
        browser.wait_for_function("() => document.querySelectorAll('[data-testid=\"stImage\"] img').length >= 6",
                                  timeout=60_000)
        assert browser.locator("[data-testid='stException']").count() == 0
        body = browser.inner_text("body")
        for title in ("1. Rotate", "2. Horizontal flip", "3. Gamma"):
            assert title in body
        assert "original · " in body and "gamma " in body
        assert "Augment" in browser.inner_text("[data-testid='stSidebarNav']")
        tall_screenshot(browser, SHOTS / "augment.png")
    assert (SHOTS / "augment.png").stat().st_size > 20_000
