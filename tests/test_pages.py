"""AppTest for every page: it renders without exceptions and its widgets do their job."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def app(small_phantom, monkeypatch):
    monkeypatch.setenv("MEDAUG_DATASET", str(small_phantom.root))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    return at


@pytest.fixture
def media(monkeypatch) -> dict[str, bytes]:
    """The bytes of every media file the app stores, by file id (an image element's url ends in
    ``<file id>.<ext>``), so a test can look at the pixels a page shows."""
    files: dict[str, bytes] = {}
    original = MemoryMediaFileStorage.load_and_get_id

    def recording(self, path_or_data, mimetype, kind, filename=None):
        file_id = original(self, path_or_data, mimetype, kind, filename)
        files[file_id] = self.get_file(file_id).content
        return file_id

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", recording)
    return files


def coloured_pixels(at, media: dict[str, bytes]) -> list[int]:
    """Per image shown: how many pixels are not grey. The grid's images are greyscale films; only
    the drawn lesion boxes (class colours) make R, G and B differ."""
    counts = []
    for element in at.get("image"):
        file_id = Path(element.proto.imgs[0].url).stem
        rgb = np.asarray(Image.open(io.BytesIO(media[file_id])).convert("RGB")).astype(int)
        counts.append(int(((rgb[..., 0] != rgb[..., 1]) | (rgb[..., 1] != rgb[..., 2])).sum()))
    return counts


def texts(at) -> str:
    return " ".join(str(e.value) for e in [*at.markdown, *at.caption, *at.title, *at.subheader])


def test_home_shows_purpose_workflow_and_dataset(app, small_phantom):
    page = texts(app)
    assert "MedAug Studio" in page
    for step in ("Data", "Augment", "Generate", "Quality", "Classify", "Compare"):
        assert f". {step}**" in page
    assert small_phantom.id in page
    assert len(app.get("plotly_chart")) == 0, "Home draws its chart in HTML: plotly.js would slow the first page"
    chart = " ".join(str(e.proto.body) for e in app.get("html"))
    assert "imbalance ratio" in chart and all(name in chart for name in small_phantom.classes)
    # the sidebar shows the dataset and the tracking store
    sidebar = " ".join(str(e.value) for e in [*app.sidebar.markdown, *app.sidebar.caption])
    assert small_phantom.name in sidebar and "sqlite:///" in sidebar
    assert "Synthetic phantom" in sidebar, "the synthetic badge is missing from the sidebar"


def test_dataset_page_chart_grid_filter_and_boxes(app, small_phantom, media):
    app.switch_page("pages/dataset.py").run()
    assert not app.exception, app.exception
    assert app.title[0].value == "Dataset"
    assert len(app.get("plotly_chart")) == 1
    assert app.metric[0].value == f"{len(small_phantom.manifest):,}"
    n_default = len(app.get("image"))
    assert n_default > 0
    # filter to one class: only its images remain
    app.multiselect(key="grid_classes").set_value(["Surgical implant"]).run()
    assert not app.exception
    n_one = len(app.get("image"))
    assert 0 < n_one < n_default
    assert any("Surgical implant" in str(m.value) for m in app.markdown)
    app.slider(key="grid_n").set_value(2).run()
    assert len(app.get("image")) == 2
    # the Boxes toggle: on (the default), every implant image shows its coloured lesion box; off,
    # the same images are plain grey; on again, the boxes are back
    assert (small_phantom.manifest.loc[small_phantom.manifest["label"] == "Surgical implant", "boxes"]
            .map(len) > 0).all()
    with_boxes = coloured_pixels(app, media)
    assert len(with_boxes) == 2 and all(n > 0 for n in with_boxes), with_boxes
    app.toggle(key="grid_boxes").set_value(False).run()
    assert not app.exception, app.exception
    assert coloured_pixels(app, media) == [0, 0]
    app.toggle(key="grid_boxes").set_value(True).run()
    assert coloured_pixels(app, media) == with_boxes


def test_dataset_view_button_opens_the_record(app, small_phantom):
    app.switch_page("pages/dataset.py").run()
    app.multiselect(key="grid_classes").set_value(["Vertebral collapse"]).run()
    view = [b for b in app.button if str(b.key).startswith("view_")][0]
    image_id = view.key.removeprefix("view_")
    view.click().run()
    assert not app.exception, app.exception
    shown = " ".join(str(t.value.to_dict()) for t in app.table)
    assert image_id in shown and "Vertebral collapse" in texts(app)


def test_first_start_renders_the_phantom_and_then_clears_its_banner(tmp_path, monkeypatch):
    """No dataset yet: the first page load renders the default phantom with a banner and a progress
    bar, and neither stays once the dataset is ready."""
    import pages.ui

    monkeypatch.delenv("MEDAUG_DATASET", raising=False)
    monkeypatch.setenv("MEDAUG_HOME", str(tmp_path))
    monkeypatch.setitem(pages.ui.DEFAULT_PHANTOM, "n", 24)
    monkeypatch.setitem(pages.ui.DEFAULT_PHANTOM, "size", 64)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    assert not at.exception, at.exception
    assert (tmp_path / "datasets" / "phantom-default" / "dataset.json").is_file()
    shown = " ".join(str(e.value) for e in at.info)
    assert "First start" not in shown, shown
    assert "MedAug Studio" in texts(at)
