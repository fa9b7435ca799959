"""The Explore a generator page (AppTest): finished GAN and diffusion jobs are listed, each is described,
its interpolation strip and class sweep drawn with the right number of images, the diffusion-only
sliders appear for the diffusion model only, and the nearest-real section trains the domain encoder on
request and shows a sample beside its nearest real training images; bad paths say what to do."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

from tests.page_helpers import open_page
from tests.test_explorer import fake_job

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def generator_jobs(small_phantom):
    """Finished train-gan and train-diffusion job folders (conditional, 32 px, on the small phantom's train
    split) in the session workspace; trained on first use (seconds), reused afterwards."""
    from core.data.arrays import split_arrays
    from core.gan.train import GanConfig, train_gan
    from core.workspace import workspace_dir

    ds = small_phantom
    train = split_arrays(ds, 32, "train")
    classes = tuple(c for c in ds.classes if c in set(train.labels))
    labels = train.class_indices(classes)
    root = workspace_dir("explore-test-generators")
    gan_out, diff_out = root / "gan", root / "diffusion"
    if not (gan_out / "checkpoint.pt").is_file():
        config = GanConfig(resolution=32, batch=8, width=8, nz=16, max_steps=6, steps_per_epoch=3, log_every=1,
                           grid_size=8, device="cpu", precision="fp32", conditional=True, classes=classes)
        train_gan(train.images, labels, config, gan_out)
    fake_job("explore-gan", "train-gan", "finished", {"out": str(gan_out)})
    found = {"gan": "train-gan explore-gan · gan (explore-gan)"}
    try:
        from core.diffusion.train import DiffusionConfig, train_diffusion
    except ImportError:
        return found, classes
    if not (diff_out / "checkpoint.pt").is_file():
        train_diffusion(train.images, labels, DiffusionConfig(resolution=32, width=8, batch=8, max_steps=2,
                                                              sample_steps=2, conditional=True, classes=classes,
                                                              device="cpu", precision="fp32", grid_size=8), diff_out)
    fake_job("explore-diffusion", "train-diffusion", "finished", {"out": str(diff_out)})
    return {**found, "diffusion": "train-diffusion explore-diffusion · diffusion (explore-diffusion)"}, classes


@pytest.fixture
def media(monkeypatch) -> dict[str, bytes]:
    """The bytes of every media file the app stores, by file id (tests/test_pages.py's helper)."""
    files: dict[str, bytes] = {}
    original = MemoryMediaFileStorage.load_and_get_id

    def recording(self, path_or_data, mimetype, kind, filename=None):
        file_id = original(self, path_or_data, mimetype, kind, filename)
        files[file_id] = self.get_file(file_id).content
        return file_id

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", recording)
    return files


def captions(at) -> list[str]:
    """The caption of every image on the page, in order (the strips draw one image per column)."""
    return [e.proto.imgs[0].caption for e in at.get("image")]


def pixels(at, media, i: int) -> np.ndarray:
    url = at.get("image")[i].proto.imgs[0].url
    return np.asarray(Image.open(io.BytesIO(media[Path(url).stem])).convert("L"))


def texts(at) -> str:
    return " ".join(str(e.value) for e in [*at.markdown, *at.caption, *at.info, *at.success, *at.warning, *at.error])


def test_explore_a_gan_and_a_diffusion_model(small_phantom, generator_jobs, monkeypatch, media):
    from core.quality.evaluate import QualityConfig

    # an encoder of 1 epoch: no other test caches it, so the page has to offer to train it (in a second)
    monkeypatch.setattr(QualityConfig, "encoder_epochs", 1)
    labels, classes = generator_jobs
    at = open_page("explore", small_phantom.root, monkeypatch)
    picker = at.selectbox(key="ex_ckpt")
    assert labels["gan"] in picker.options and picker.options[-1] == "Type a path…"
    picker.set_value(labels["gan"]).run()
    assert not at.exception, at.exception
    page = texts(at)
    assert "dcgan (gan, conditional) at 32 px" in page and ", ".join(classes) in page
    assert not [s for s in at.slider if s.label in ("DDIM steps", "Guidance")]   # diffusion only
    shown, c = captions(at), len(classes)
    assert shown[0] == "A · seed 0" and shown[7] == "B · seed 1" and shown[1] == "t = 0.14"
    assert shown[8:8 + c] == list(classes)   # one noise drawn as every class, side by side
    assert pixels(at, media, 0).shape == (128, 128)   # 32 px enlarged 4x, crisp

    at.slider(key="ex_frames").set_value(4).run()
    assert captions(at)[3] == "B · seed 1" and captions(at)[4:4 + c] == list(classes)
    at.slider(key="ex_sweep_n").set_value(2).run()
    assert captions(at)[4:4 + 2 * c] == list(classes) * 2

    # nearest real images: the encoder is trained on request, then the sample and its 3 neighbours
    assert at.button(key="ex_nn_train")
    at.button(key="ex_nn_train").click().run()
    assert not at.exception, at.exception
    nearest = captions(at)[4 + 2 * c:]
    assert len(nearest) == 4 and nearest[0] == "sample (t = 0.67) · " + classes[0]   # the middle frame
    assert all(s.startswith(f"#{j + 1} ") for j, s in enumerate(nearest[1:]))
    assert "d = " in nearest[1] and "× median" in nearest[1]
    assert at.success or at.warning
    table = at.dataframe[0].value
    assert len(table) == 4 and list(table["frame"])[0] == "A · seed 0"
    train = set(small_phantom.manifest.query("split == 'train'")["image_id"])
    assert set(table["nearest real"]) <= train
    at.radio(key="ex_nn_source").set_value("A new sample").run()   # encoder cached now: no button
    assert not at.exception and "ex_nn_train" not in [b.key for b in at.button]
    assert captions(at)[-4].startswith("sample (seed 100)")

    if "diffusion" not in labels:
        return
    at.selectbox(key="ex_ckpt").set_value(labels["diffusion"]).run()
    assert not at.exception, at.exception
    assert "ddpm (diffusion, conditional) at 32 px" in texts(at)
    steps = next(s for s in at.slider if s.label == "DDIM steps")
    assert steps.value == 2 and next(s for s in at.slider if s.label == "Guidance").value == 2.0
    first = pixels(at, media, 0)
    steps.set_value(3).run()
    assert not at.exception and captions(at)[3] == "B · seed 1"
    assert not np.array_equal(first, pixels(at, media, 0))   # the DDIM steps reach the sampler


def test_a_typed_path_that_is_no_checkpoint_says_what_to_do(small_phantom, monkeypatch, tmp_path):
    at = open_page("explore", small_phantom.root, monkeypatch)
    at.selectbox(key="ex_ckpt").set_value("Type a path…").run()
    at.text_input(key="ex_path").input(str(tmp_path / "nothing.pt")).run()
    assert "nothing.pt" in at.error[0].value and "train-gan or train-diffusion" in at.error[0].value
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    at.text_input(key="ex_path").input(str(junk)).run()
    assert not at.exception and "junk.pt" in at.error[0].value
