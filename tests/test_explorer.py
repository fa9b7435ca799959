"""core.explorer: slerp, the interpolation strip and the class sweep for both families, nearest real
training images (the memorization audit's features and verdict), and the list of finished generator jobs.

Generators are tiny (32 px, a few training steps: seconds); the nearest-real tests use the session's
small phantom and its domain encoder at 2 epochs."""
from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
import torch

from core import explorer
from core.generators import open_generator
from tests.quality_helpers import ENCODER_EPOCHS   # the same cached domain encoder as the quality tests
from tests.test_gan import blobs

pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tiny tensors (tests/conftest.py)

CLASSES = ("a", "b", "c")


def lerp(a, b, t):
    t = torch.as_tensor(t, dtype=a.dtype).reshape(-1, *([1] * (a.dim() - 1)))
    return (1 - t) * a + t * b


@pytest.fixture(scope="module")
def gans(tmp_path_factory):
    """(conditional, per-class) tiny GAN checkpoints on blobs, trained in about a second each."""
    from core.gan.train import GanConfig, train_gan

    base = dict(resolution=32, batch=8, width=8, nz=16, max_steps=6, steps_per_epoch=3, log_every=1, grid_size=9,
                device="cpu", precision="fp32")
    images, labels = blobs(24), np.arange(24) % 3
    root = tmp_path_factory.mktemp("explorer-gans")
    cond = train_gan(images, labels, GanConfig(**base, conditional=True, classes=CLASSES), root / "cond")
    one = train_gan(images[labels == 1], None, GanConfig(**base, class_name="b"), root / "one")
    return cond.checkpoint, one.checkpoint


@pytest.fixture(scope="module")
def diffusion(tmp_path_factory):
    """A tiny conditional diffusion checkpoint (32 px, width 8, 2 training steps, 2 DDIM steps)."""
    train = pytest.importorskip("core.diffusion.train")
    images, labels = blobs(24), np.arange(24) % 3
    config = train.DiffusionConfig(resolution=32, width=8, batch=8, max_steps=2, sample_steps=2, conditional=True,
                                   classes=CLASSES, device="cpu", precision="fp32", grid_size=3)
    return train.train_diffusion(images, labels, config, tmp_path_factory.mktemp("explorer-diffusion")).checkpoint


@pytest.fixture(params=["gan", "diffusion"])
def conditional(request, gans, tmp_path_factory):
    return open_generator(gans[0] if request.param == "gan" else request.getfixturevalue("diffusion"))


# --- slerp ---------------------------------------------------------------------------------------------

def midpoint_norm_ratio(interpolate, a, b) -> np.ndarray:
    """|path(0.5)| / mean(|a|, |b|), row by row."""
    mid = interpolate(a, b, torch.full((len(a),), 0.5, dtype=torch.float64))
    flat = lambda x: x.reshape(len(x), -1).double().norm(dim=1)  # noqa: E731
    return (flat(mid) / ((flat(a) + flat(b)) / 2)).numpy()


@pytest.mark.parametrize("shape", [(6, 128), (4, 1, 32, 32)])   # a GAN's z, a diffusion model's x_T
def test_slerp_keeps_the_noise_norm_where_lerp_shrinks_it(shape):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)
    assert torch.equal(explorer.slerp(a, b, 0.0), a) and torch.equal(explorer.slerp(a, b, 1.0), b)
    assert explorer.slerp(a, b, 0.3).dtype == a.dtype and explorer.slerp(a, b, 0.3).shape == a.shape
    slerp_mid, lerp_mid = midpoint_norm_ratio(explorer.slerp, a, b), midpoint_norm_ratio(lerp, a, b)
    assert np.all(np.abs(slerp_mid - 1) < 0.05), slerp_mid
    assert np.all(lerp_mid < 0.8), lerp_mid   # the check above fails for a straight line: |mid| ~ 1/sqrt(2)
    # all along the path, not only the midpoint
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    path = explorer.slerp(a[:1].expand(11, *shape[1:]), b[:1].expand(11, *shape[1:]), t)
    norms = path.reshape(11, -1).norm(dim=1)
    lo, hi = sorted([a[0].norm().item(), b[0].norm().item()])
    assert norms.min() > 0.97 * lo and norms.max() < 1.03 * hi


def test_slerp_per_row_t_parallel_fallback_and_errors():
    a = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    b = torch.randn(3, 8, generator=torch.Generator().manual_seed(2))
    rows = explorer.slerp(a, b, torch.tensor([0.0, 0.5, 1.0]))
    assert torch.equal(rows[0], a[0]) and torch.equal(rows[2], b[2])
    assert torch.allclose(rows[1], explorer.slerp(a[1:2], b[1:2], 0.5)[0])
    # parallel vectors: the great circle is undefined, the straight line is right (and finite)
    par = explorer.slerp(a, 2 * a, 0.5)
    assert torch.isfinite(par).all() and torch.allclose(par, 1.5 * a)
    assert torch.isfinite(explorer.slerp(torch.zeros(2, 4), torch.ones(2, 4), 0.5)).all()
    with pytest.raises(ValueError, match="same shape"):
        explorer.slerp(a, b[:2], 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        explorer.slerp(a, b, 1.5)
    with pytest.raises(ValueError, match="one value per row"):
        explorer.slerp(a, b, torch.tensor([0.1, 0.2]))


# --- interpolation and class sweep, both families --------------------------------------------------------

def test_interpolation_is_deterministic_and_ends_at_the_seeds_samples(conditional):
    gen = conditional
    frames = explorer.interpolation(gen, 3, 11, 5, "b")
    assert frames.shape == (5, 32, 32) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames, explorer.interpolation(gen, 3, 11, 5, "b"))
    np.testing.assert_array_equal(frames[0], gen.sample(1, "b", 3).images[0])
    np.testing.assert_array_equal(frames[-1], gen.sample(1, "b", 11).images[0])
    assert not np.array_equal(frames[0], frames[-1]) and not np.array_equal(frames[2], frames[0])
    noise = explorer.interpolation_noise(gen, 3, 11, 5)
    assert noise.shape == (5, *gen.latent_shape)
    assert torch.equal(noise[0], gen.noise(1, 3)[0]) and torch.equal(noise[-1], gen.noise(1, 11)[0])
    # no class given: a conditional model's first class, as gen.sample(1, None, seed) draws it
    np.testing.assert_array_equal(explorer.interpolation(gen, 3, 11, 2)[0], gen.sample(1, None, 3).images[0])
    with pytest.raises(ValueError, match="not one of"):
        explorer.interpolation(gen, 3, 11, 5, "zebra")
    with pytest.raises(ValueError, match="frames=1"):
        explorer.interpolation(gen, 3, 11, 1)


def test_interpolation_reports_progress(conditional):
    calls = []
    explorer.interpolation(conditional, 0, 1, 6, "a", on_progress=lambda d, t, m: calls.append((d, t, m)))
    assert [c[0] for c in calls] == [0, 4, 6] and all(c[1] == 6 for c in calls)
    assert "interpolation" in calls[-1][2]
    if conditional.family == "diffusion":
        assert "DDIM 2 steps" in calls[-1][2]


def test_class_sweep_decodes_the_same_noise_as_every_class(conditional, monkeypatch):
    gen = conditional
    rows = explorer.class_sweep(gen, 5, 2)
    assert rows.shape == (3, 2, 32, 32)
    for c, name in enumerate(CLASSES):
        np.testing.assert_array_equal(rows[c], gen.sample(2, name, 5).images)
    assert not np.array_equal(rows[0], rows[1])   # the label changes the image
    assert not np.array_equal(rows, explorer.class_sweep(gen, 6, 2))   # the seed is used
    seen = []   # what reaches the model: one noise batch repeated per class, labels 0,0,1,1,2,2
    decode = gen.decode
    monkeypatch.setattr(gen, "decode", lambda noise, idx, **kw: seen.append((noise, idx)) or decode(noise, idx, **kw))
    explorer.class_sweep(gen, 5, 2)
    noise, labels = torch.cat([n for n, _ in seen]), torch.cat([i for _, i in seen])
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]
    for c in range(3):
        assert torch.equal(noise[2 * c:2 * c + 2], gen.noise(2, 5))


def test_diffusion_guidance_and_steps_reach_the_sampler(diffusion):
    gen = open_generator(diffusion)
    plain = explorer.interpolation(gen, 0, 1, 3, "a")
    np.testing.assert_array_equal(plain, explorer.interpolation(gen, 0, 1, 3, "a", steps=2, guidance=2.0))
    assert not np.array_equal(plain, explorer.interpolation(gen, 0, 1, 3, "a", steps=3))
    assert not np.array_equal(plain, explorer.interpolation(gen, 0, 1, 3, "a", guidance=1.0))
    with pytest.raises(ValueError, match="guidance"):
        explorer.interpolation(gen, 0, 1, 3, "a", guidance=50.0)


def test_per_class_model_interpolates_its_class_and_refuses_a_sweep(gans):
    gen = open_generator(gans[1])
    frames = explorer.interpolation(gen, 0, 1, 3)
    np.testing.assert_array_equal(frames[0], gen.sample(1, "b", 0).images[0])
    assert explorer.sample_class(gen) == "b"
    with pytest.raises(ValueError, match="trained on class 'b' only"):
        explorer.interpolation(gen, 0, 1, 3, "a")
    with pytest.raises(ValueError, match="conditional model") as e:
        explorer.class_sweep(gen, 0)
    assert str(gans[1]) in str(e.value)


# --- nearest real training images ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def phantom_reference(small_phantom, session_home):
    """The small phantom's real training images at 64 px and their domain features (the encoder and the
    pixel cache go to the session workspace: module fixtures run before the autouse workspace fixture)."""
    from core.quality.features import domain_encoder

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDAUG_HOME", str(session_home))
        encoder = domain_encoder(small_phantom, 64, ENCODER_EPOCHS)
        return explorer.real_reference(small_phantom, 64, extractor=encoder)


def rows_of(ds, split: str, label: str) -> list[int]:
    df = ds.manifest
    return df.index[(df["split"] == split) & (df["label"] == label)].tolist()


def test_nearest_real_finds_a_planted_copy_and_passes_other_patients(small_phantom, phantom_reference):
    from core.data.cache import pixel_cache

    ds, ref = small_phantom, phantom_reference
    cache = pixel_cache(ds, 64)
    cls = "Osteophytes"
    copied = rows_of(ds, "train", cls)[0]
    copy = np.asarray(cache.array[copied])
    noisy = np.clip(copy.astype(int) + np.random.default_rng(0).integers(-2, 3, copy.shape), 0, 255).astype(np.uint8)
    others = [np.asarray(cache.array[i]) for i in rows_of(ds, "test", cls)[:2]]   # other patients
    samples = np.stack([copy, noisy, *others])
    found = explorer.nearest_real(samples, cls, ref, k=3)
    copied_id = ds.manifest.loc[copied, "image_id"]
    assert found.ids[0][0] == copied_id and found.distances[0, 0] < 1e-6 and found.ratios[0, 0] < 1e-6
    assert found.ids[1][0] == copied_id and found.flagged[1]
    assert found.flagged.tolist() == [True, True, False, False]
    assert np.all(found.ratios[2:, 0] > 1 / 3) and np.all(found.distances[2:, 0] > found.threshold)
    assert np.all(np.diff(found.distances, axis=1) >= 0)   # nearest first
    np.testing.assert_array_equal(found.images[0, 0], copy)
    # every neighbour is a real training image of the sample's class
    df = ds.manifest.set_index("image_id")
    for row in found.ids:
        assert all(df.loc[i, "split"] == "train" and df.loc[i, "label"] == cls for i in row)
    # the distances are the memorization audit's: its nearest neighbour and verdict for the same input
    from core.quality import memorization

    mask = ref.labels == cls
    audit, _ = memorization.audit(ref.features[mask], ref.labels[mask], ref.extractor(samples), [cls] * 4)
    np.testing.assert_allclose(found.distances[:, 0], audit["distance"])
    assert found.flagged.tolist() == audit["flagged"].tolist()
    table = found.table()
    assert len(table) == 12 and table["rank"].tolist()[:3] == [1, 2, 3]


def test_nearest_real_searches_only_the_samples_class(small_phantom, phantom_reference):
    from core.data.cache import pixel_cache

    ds = small_phantom
    copied = rows_of(ds, "train", "Osteophytes")[0]
    copy = np.asarray(pixel_cache(ds, 64).array[copied])[None]
    found = explorer.nearest_real(copy, ["No finding"], phantom_reference, k=3)   # told it is another class
    assert ds.manifest.loc[copied, "image_id"] not in found.ids[0] and found.distances[0, 0] > 1e-3
    df = ds.manifest.set_index("image_id")
    assert {df.loc[i, "label"] for i in found.ids[0]} == {"No finding"}
    with pytest.raises(ValueError, match="no real training images of class"):
        explorer.nearest_real(copy, ["Zebra"], phantom_reference)


def test_the_threshold_comes_from_the_generators_classes_so_a_verdict_does_not_depend_on_its_company(
        small_phantom, phantom_reference):
    from core.data.cache import pixel_cache

    ds = small_phantom
    sample = np.asarray(pixel_cache(ds, 64).array[rows_of(ds, "test", "Osteophytes")[0]])[None]
    alone = explorer.nearest_real(sample, "Osteophytes", phantom_reference, classes=ds.classes)
    mixed = explorer.nearest_real(np.concatenate([sample, sample]), ["Osteophytes", "No finding"], phantom_reference,
                                  classes=ds.classes)
    assert alone.threshold == mixed.threshold
    assert alone.distances[0, 0] == pytest.approx(mixed.distances[0, 0], rel=1e-5)   # features batch 1 vs 2


def test_nearest_real_uses_real_rows_only(tmp_path):
    """A generated image in the train split is never a 'real' neighbour, not even of its own copy."""
    from PIL import Image

    from core.data.datasets import write_dataset

    images = blobs(13, 32, seed=3)
    rows = []
    for i, px in enumerate(images):
        Image.fromarray(px).save(tmp_path / f"i{i}.png")
        rows.append({"image_id": f"i{i}", "path": f"i{i}.png", "split": "train", "label": "ab"[i % 2],
                     "labels": ["ab"[i % 2]], "boxes": [], "study_id": f"i{i}",
                     "source": "gan:run123" if i == 12 else "phantom", "width": 32, "height": 32, "sha256": "0"})
    ds = write_dataset(tmp_path, pd.DataFrame(rows), {"name": "mixed", "kind": "folder"})
    pixels = lambda x: x.reshape(len(x), -1).astype(float)  # noqa: E731  -- features: the pixels themselves
    extractor = type("Pixels", (), {"__call__": lambda self, x: pixels(x), "description": "raw pixels"})()
    found = explorer.nearest_real(images[12:], "a", ds, k=6, extractor=extractor)
    assert "i12" not in found.ids[0] and found.distances[0, 0] > 0
    assert len(set(found.ids[0])) == 6 and all(int(i[1:]) % 2 == 0 for i in found.ids[0])
    hit = explorer.nearest_real(images[2:3], "a", ds, k=1, extractor=extractor)   # a real one is found
    assert hit.ids[0] == ["i2"] and hit.distances[0, 0] == 0 and hit.flagged[0]
    # a model without labels: every real training image of every class is a candidate
    pooled = explorer.nearest_real(images[3:4], None, ds, k=2, extractor=extractor)
    assert pooled.ids[0][0] == "i3" and pooled.classes[0] == explorer.POOLED
    # fewer real images of the class than k: the rest is marked missing
    short = explorer.nearest_real(images[:1], "a", ds, k=8, extractor=extractor)
    assert short.ids[0][6:] == ["", ""] and np.isnan(short.distances[0, 6:]).all()
    assert (short.indices[0, 6:] == -1).all()


def test_nearest_real_input_errors(small_phantom):
    from core.data.arrays import split_arrays

    arrays = split_arrays(small_phantom, 64, "train")
    x = arrays.images[:2]
    with pytest.raises(ValueError, match="give extractor="):
        explorer.nearest_real(x, "Osteophytes", arrays)
    with pytest.raises(ValueError, match="uint8"):
        explorer.nearest_real(x.astype(float), "Osteophytes", arrays)
    with pytest.raises(ValueError, match="2 classes for 3 samples"):
        explorer.nearest_real(arrays.images[:3], ["a", "b"], arrays)
    with pytest.raises(ValueError, match="k=0"):
        explorer.nearest_real(x, "Osteophytes", arrays, k=0)


# --- finished generator jobs ----------------------------------------------------------------------------

def fake_job(job_id: str, command: str, state: str, status: dict) -> None:
    """A job folder as core.jobs leaves it (job.json + status.json), without running anything."""
    from core import jobs

    folder = jobs.jobs_dir() / job_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "job.json").write_text(json.dumps({"state": state, "argv": [command, "--config", "x"],
                                                 "label": f"{command} {job_id}", "created": time.time()}))
    (folder / "status.json").write_text(json.dumps(status))


def test_finished_generators_lists_gan_and_diffusion_jobs(gans, diffusion, tmp_path):
    import shutil

    out = tmp_path / "gan-out"
    out.mkdir()
    shutil.copy(gans[0], out / "checkpoint.pt")
    shutil.copy(gans[0], out / "best.pt")
    fake_job("exg-gan", "train-gan", "finished", {"out": str(out), "checkpoint": str(out / "checkpoint.pt")})
    fake_job("exg-diff", "train-diffusion", "finished", {"checkpoint": str(diffusion)})
    fake_job("exg-failed", "train-gan", "failed", {"out": str(out)})
    fake_job("exg-clf", "train-classifier", "finished", {"out": str(out)})
    fake_job("exg-gone", "train-gan", "finished", {"checkpoint": str(tmp_path / "deleted.pt")})
    found = {g.job_id: g for g in explorer.finished_generators() if g.job_id.startswith("exg-")}
    assert set(found) == {"exg-gan", "exg-diff"}
    assert found["exg-gan"].path == out / "best.pt" and found["exg-gan"].family == "gan"
    assert found["exg-diff"].path == diffusion and "diffusion" in found["exg-diff"].label
