"""core.quality: metrics against scikit-image, the Fréchet distance against pytorch-fid's formula,
set metrics and the memorization audit on data the tests make, extractors, and the quality CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import linalg
from skimage.metrics import normalized_root_mse, peak_signal_noise_ratio, structural_similarity

from core.quality import memorization, metrics, setmetrics
from tests.quality_helpers import ENCODER_EPOCHS, quality_report


# Reference oracle: pytorch-fid's calculate_frechet_distance (src/pytorch_fid/fid_score.py,
# https://github.com/mseitzer/pytorch-fid, Apache License 2.0, (c) Maximilian Seitzer), copied verbatim
# apart from the print and the assert messages.
def reference_frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    mu1 = np.atleast_1d(mu1)
    mu2 = np.atleast_1d(mu2)
    sigma1 = np.atleast_2d(sigma1)
    sigma2 = np.atleast_2d(sigma2)
    assert mu1.shape == mu2.shape
    assert sigma1.shape == sigma2.shape
    diff = mu1 - mu2
    # Product might be almost singular
    covmean, _ = linalg.sqrtm(sigma1.dot(sigma2), disp=False)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    # Numerical error might give slight imaginary component
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            m = np.max(np.abs(covmean.imag))
            raise ValueError("Imaginary component {}".format(m))  # noqa: UP032 -- verbatim reference
        covmean = covmean.real
    tr_covmean = np.trace(covmean)
    return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean


def stats(f):
    return np.mean(f, axis=0), np.cov(f, rowvar=False)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("n,d,shift", [(500, 16, 0.3), (200, 64, 1.0), (40, 64, 0.5)])  # last: singular covariances
def test_frechet_distance_equals_pytorch_fid_formula(n, d, shift):
    rng = np.random.default_rng(d + n)
    a = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.3
    b = rng.normal(size=(n, d)) + shift
    ref = reference_frechet_distance(*stats(a), *stats(b))
    ours = setmetrics.frechet_distance(*stats(a), *stats(b))
    assert ours == pytest.approx(ref, rel=1e-6)
    assert setmetrics.fid(a, b) == pytest.approx(ref, rel=1e-6)
    if n > d:   # the eigen form used by the bootstrap agrees on well-conditioned covariances
        assert setmetrics.frechet_distance_eigh(*stats(a), *stats(b)) == pytest.approx(ref, rel=1e-6)


def test_frechet_distance_rejects_mismatched_features():
    with pytest.raises(ValueError, match="one extractor for both"):
        setmetrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def image_pairs(small_phantom, n=6):
    """Phantom radiographs (64 px) and degraded copies: noise, blur-like shifts, contrast change."""
    from core.data.cache import pixel_cache

    ref = np.asarray(pixel_cache(small_phantom, 64).array[:n])
    rng = np.random.default_rng(0)
    noisy = np.clip(ref + rng.normal(0, 25, ref.shape), 0, 255).astype(np.uint8)
    shifted = np.roll(ref, 3, axis=2)
    contrast = np.clip(ref.astype(float) * 0.7 + 40, 0, 255).astype(np.uint8)
    return ref, [noisy, shifted, contrast, ref.copy()]


@pytest.mark.parametrize("engine", ["separable", "torchmetrics"])
def test_ssim_and_psnr_match_scikit_image(small_phantom, engine):
    ref, tests = image_pairs(small_phantom)
    odd = np.random.default_rng(1).integers(0, 256, (3, 45, 70)).astype(np.uint8)   # not square, not a power of 2
    for x, y in [(ref, t) for t in tests] + [(odd, odd[::-1].copy())]:
        want = [structural_similarity(a, b, data_range=255, gaussian_weights=True, sigma=1.5,
                                      use_sample_covariance=False) for a, b in zip(x, y)]
        np.testing.assert_allclose(metrics.ssim(x, y, engine=engine), want, atol=1e-4, rtol=0)
        want_psnr = [peak_signal_noise_ratio(a, b, data_range=255) for a, b in zip(x, y)]
        np.testing.assert_allclose(metrics.psnr(x, y), want_psnr, atol=1e-4, rtol=0)
        np.testing.assert_allclose(metrics.nrmse(x, y), [normalized_root_mse(a, b) for a, b in zip(x, y)], atol=1e-9)
    assert np.all(metrics.ssim(ref, ref) == pytest.approx(1.0)) and np.isinf(metrics.psnr(ref, ref)).all()


def _skimage_ssim_psnr(x, y, data_range):
    s = [structural_similarity(a, b, data_range=data_range, gaussian_weights=True, sigma=1.5,
                               use_sample_covariance=False) for a, b in zip(x, y)]
    return np.array(s), np.array([peak_signal_noise_ratio(a, b, data_range=data_range) for a, b in zip(x, y)])


# The fast path (separable engine, ssim_psnr) against scikit-image. Tolerances: SSIM 1e-5 (float32 maps; measured
# <= 2e-6), PSNR 1e-9 dB for uint8 (exact integer sums) and 1e-4 dB for float inputs.
@pytest.mark.parametrize("shape", [(13, 13), (16, 16), (45, 70), (64, 64), (100, 37), (131, 258)])
@pytest.mark.parametrize("kind", ["uint8", "float32", "float64"])
def test_separable_ssim_psnr_match_scikit_image_on_random_pairs(shape, kind):
    rng = np.random.default_rng(sum(shape))
    x = rng.integers(0, 256, (5, *shape)).astype(np.uint8)
    y = np.clip(x + rng.normal(0, 30, x.shape), 0, 255).astype(np.uint8)
    y[1] = rng.integers(0, 256, shape)                           # unrelated pair: SSIM near 0
    data_range = 255.0
    if kind != "uint8":
        x, y, data_range = x.astype(kind) / 255, y.astype(kind) / 255, 1.0
    want_s, want_p = _skimage_ssim_psnr(x, y, data_range)
    s, p = metrics.ssim_psnr(x, y, data_range, engine="separable")
    np.testing.assert_allclose(s, want_s, atol=1e-5, rtol=0)
    np.testing.assert_allclose(p, want_p, atol=1e-9 if kind == "uint8" else 1e-4, rtol=0)
    np.testing.assert_array_equal(metrics.ssim(x, y, data_range), s)


def test_separable_chunks_and_workers_do_not_change_values():
    """Chunk boundaries (a short last chunk with stale slots, one-pair chunks, one chunk) and 1 or 3 workers
    give the same numbers as each other and scikit-image; the caller's torch thread count is left as it was."""
    import torch

    rng = np.random.default_rng(7)
    x = rng.integers(0, 256, (11, 40, 33)).astype(np.uint8)
    y = np.clip(x * 0.8 + rng.normal(0, 20, x.shape), 0, 255).astype(np.uint8)
    want_s, want_p = _skimage_ssim_psnr(x, y, 255)
    threads = torch.get_num_threads()
    ref = metrics.ssim_psnr(x, y, chunk=4, threads=1)
    for chunk, workers in [(1, 1), (4, 3), (11, 2), (64, 1), (3, 3)]:
        got = metrics.ssim_psnr(x, y, chunk=chunk, threads=workers)
        np.testing.assert_allclose(got[0], ref[0], atol=1e-12, rtol=0)
        np.testing.assert_array_equal(got[1], ref[1])
    np.testing.assert_allclose(ref[0], want_s, atol=1e-5, rtol=0)
    np.testing.assert_allclose(ref[1], want_p, atol=1e-9, rtol=0)
    assert torch.get_num_threads() == threads
    one = metrics.ssim_psnr(x[:1], y[:1], threads=4)
    assert one[0][0] == pytest.approx(ref[0][0], abs=1e-12) and one[1][0] == ref[1][0]
    same = metrics.ssim_psnr(x, x)
    assert np.allclose(same[0], 1.0, atol=1e-6) and np.isinf(same[1]).all()


def test_separable_ssim_psnr_on_256px_phantom_pairs():
    """The benchmark's case: phantom radiographs at 256 px against noisy, shifted, rescaled copies."""
    from core.data.io import to_uint8
    from core.data.phantom import CLASS_NAMES, render_phantom

    rng = np.random.default_rng(3)
    ref = np.stack([to_uint8(render_phantom(CLASS_NAMES[i % len(CLASS_NAMES)], size=256, seed=i).image)
                    for i in range(6)])
    noisy = ref * rng.uniform(0.7, 1.1, (6, 1, 1)) + rng.normal(0, 12, ref.shape)
    test = np.clip(np.stack([np.roll(t, tuple(rng.integers(-4, 5, 2)), axis=(0, 1)) for t in noisy]), 0, 255)
    test = test.astype(np.uint8)
    want_s, want_p = _skimage_ssim_psnr(ref, test, 255)
    s, p = metrics.ssim_psnr(ref, test)
    np.testing.assert_allclose(s, want_s, atol=1e-5, rtol=0)
    np.testing.assert_allclose(p, want_p, atol=1e-9, rtol=0)
    np.testing.assert_allclose(p, metrics.psnr(ref, test), atol=1e-9, rtol=0)


def test_pair_metrics_order_and_errors():
    a = np.random.default_rng(0).integers(0, 256, (4, 64, 64)).astype(np.uint8)
    good = np.clip(a + 5, 0, 255).astype(np.uint8)
    bad = np.random.default_rng(1).integers(0, 256, (4, 64, 64)).astype(np.uint8)
    m_good, m_bad = metrics.pair_metrics(a, good), metrics.pair_metrics(a, bad)
    for k in ("ssim", "ms_ssim", "psnr"):
        assert (m_good[k] > m_bad[k]).all(), k
    assert (m_good["mse"] < m_bad["mse"]).all()
    with pytest.raises(ValueError, match="same shape"):
        metrics.ssim(a, a[:, :32])
    with pytest.raises(ValueError, match="engine"):
        metrics.ssim(a, a, engine="fast")


def test_ms_ssim_scales_fit_the_size():
    assert [metrics.ms_ssim_scales(s, s) for s in (8, 16, 32, 64, 128, 256)] == [0, 2, 2, 3, 4, 5]
    x = np.random.default_rng(0).integers(0, 256, (2, 8, 8)).astype(np.uint8)
    values, scales = metrics.ms_ssim(x, x)
    assert scales == 0 and np.isnan(values).all()


def test_diversity_separates_a_collapsed_set(small_phantom):
    from core.data.cache import pixel_cache

    varied = np.asarray(pixel_cache(small_phantom, 64).array[:24])
    collapsed = np.repeat(varied[:1], 24, axis=0)
    d_var = metrics.mean_pairwise_ms_ssim(varied, 60)
    d_col = metrics.mean_pairwise_ms_ssim(collapsed, 60)
    assert d_col["value"] == pytest.approx(1.0) and d_var["value"] < 0.9 and d_var["metric"] == "ms_ssim"


def test_set_metrics_identical_vs_shifted_sets():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(120, 8))
    same = setmetrics.set_metrics(real, real.copy(), n_boot=20, kid_subsets=10)
    assert same["fid"] == pytest.approx(0.0, abs=1e-6)
    assert same["precision"] == 1.0 and same["recall"] == 1.0
    near = setmetrics.set_metrics(real, rng.normal(size=(120, 8)), n_boot=20, kid_subsets=10)
    far = setmetrics.set_metrics(real, rng.normal(size=(120, 8)) + 3.0, n_boot=20, kid_subsets=10)
    assert abs(same["kid"]) < 0.02 * far["kid"]   # unbiased: noise around 0 for identical sets
    assert near["fid"] < far["fid"] and near["kid"] < far["kid"]
    assert far["precision"] < near["precision"] and far["recall"] < near["recall"]
    assert far["precision"] < 0.2 and near["precision"] > 0.6
    for m in ("fid", "kid", "precision", "recall"):
        assert far[f"{m}_lo"] <= far[m] + 1e-9 or m == "fid"   # a bootstrap FID interval sits above (bias)
        assert far[f"{m}_lo"] <= far[f"{m}_hi"]
    assert any("2000" in w for w in near["warnings"])   # small n: a stability warning


def test_kid_subset_and_k_adapt_to_small_sets():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(12, 4)), rng.normal(size=(7, 4))
    assert setmetrics.kid(a, b, subsets=5)[2] == 7
    assert setmetrics.precision_recall(a, b[:3], k=5)[2] == 2
    with pytest.raises(ValueError, match="at least 2"):
        setmetrics.precision_recall(a, b[:1])


def test_memorization_flags_a_planted_copy_not_ordinary_samples():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(200, 16))
    labels = np.array(["a", "b"] * 100)
    ordinary = rng.normal(size=(60, 16))                 # fresh draws from the same distribution
    planted = train[7] + rng.normal(0, 1e-3, 16)         # a near-copy of training image 7
    synthetic = np.vstack([ordinary, planted])
    syn_labels = np.array(["a", "b"] * 30 + [labels[7]])
    table, summary = memorization.audit(train, labels, synthetic, syn_labels)
    assert table["flagged"].iloc[-1] and table["train"].iloc[-1] == 7
    assert table["flagged"].iloc[:-1].sum() <= 1          # ~1% of ordinary samples may fall below the 1% line
    assert summary["flagged"] == table["flagged"].sum() and summary["threshold"] > 0
    # the nearest image is searched within the class only
    _, idx = memorization.nearest_by_class(train[:2], ["a", "b"], train, labels, exclude_self=True)
    assert labels[idx[0]] == "a" and labels[idx[1]] == "b" and idx[0] != 0


def test_grid_tiles_round_trip():
    import torch
    from torchvision.utils import make_grid

    from core.quality.evaluate import grid_tiles

    tiles = np.random.default_rng(0).integers(0, 256, (10, 32, 32)).astype(np.uint8)
    grid = make_grid(torch.from_numpy(tiles)[:, None].float() / 127.5 - 1, nrow=4, padding=2, pad_value=-1.0)[0]
    grid = ((grid + 1) * 127.5).round().to(torch.uint8).numpy()
    np.testing.assert_array_equal(grid_tiles(grid, 32, 10, 4), tiles)
    with pytest.raises(ValueError, match="does not hold"):
        grid_tiles(grid, 64, 10, 4)


def test_inception_extractor_reads_a_local_weights_file(tmp_path, monkeypatch):
    import torch
    from torchvision.models import inception_v3

    from core.quality.features import ENV_INCEPTION, find_inception_weights, inception_extractor

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(ENV_INCEPTION, raising=False)
    with pytest.raises(ValueError, match=ENV_INCEPTION):
        inception_extractor()
    # a randomly initialised model saved under the standard torchvision file name in the hub cache
    torch.manual_seed(0)
    model = inception_v3(weights=None, aux_logits=True, init_weights=False)
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(model.state_dict(), hub / "inception_v3_google-0cc3c7bd.pth")
    assert find_inception_weights() == hub / "inception_v3_google-0cc3c7bd.pth"
    ex = inception_extractor()
    imgs = np.random.default_rng(0).integers(0, 256, (1, 48, 48)).astype(np.uint8)   # 299 px forwards are slow
    f = ex(imgs)
    assert f.shape == (1, 2048) and np.isfinite(f).all() and ex.name == "inception"
    # the same features through the env setting; the pool features are the model's own
    monkeypatch.setenv(ENV_INCEPTION, str(hub / "inception_v3_google-0cc3c7bd.pth"))
    model.eval()
    model.fc = torch.nn.Identity()
    x = torch.nn.functional.interpolate(torch.from_numpy(imgs).float()[:, None] / 127.5 - 1, size=(299, 299),
                                        mode="bilinear", antialias=True).expand(-1, 3, -1, -1)
    with torch.inference_mode():
        want = model(x)
    np.testing.assert_allclose(inception_extractor()(imgs), want.double().numpy(), rtol=1e-4, atol=1e-5)
    # pytorch-fid's file (pt_inception-2015-12-05-*.pth): 1008 classes, no auxiliary head
    fid_style = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008).state_dict(),
               fid_style)
    assert inception_extractor(fid_style)(imgs).shape == (1, 2048)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a weights file")
    with pytest.raises(ValueError, match="bad.pth"):
        inception_extractor(bad)


def test_domain_encoder_is_cached_per_dataset(small_phantom):
    from core.quality.features import domain_encoder, encoder_path

    ex = domain_encoder(small_phantom, 64, ENCODER_EPOCHS)
    assert encoder_path(small_phantom.content_hash, 64, ENCODER_EPOCHS, 0).is_file()
    assert "domain encoder" in ex.description and small_phantom.id in ex.description
    imgs = np.asarray(__import__("core.data.cache", fromlist=["x"]).pixel_cache(small_phantom, 64).array[:3])
    np.testing.assert_allclose(domain_encoder(small_phantom, 64, ENCODER_EPOCHS)(imgs), ex(imgs))


def test_quality_cli_two_gan_runs_epochs_and_a_planted_copy(small_phantom):
    """End to end through the CLI: two GAN runs + a synthetic set with a planted copy of a training image;
    report files, MLflow metrics and artifacts; the copy is flagged, the other images are not."""
    from core import tracking
    from core.quality.report import load_report

    out, runs, copied = quality_report(small_phantom)
    rep = load_report(out)
    assert len(rep.sets) == 3 and set(rep.sets["extractor"]) == {"domain"}
    assert rep.sets["fid"].notna().all() and (rep.sets["fid_lo"] <= rep.sets["fid_hi"]).all()
    assert list(rep.epochs["epoch"]) == [1, 2, 3] and rep.epochs["fid"].notna().all()
    planted = rep.memorization[rep.memorization["set"] == "planted copy (test)"]
    assert planted.loc[planted["synthetic_id"] == "s8", "flagged"].item()
    assert planted["flagged"].sum() == 1, planted
    assert planted.loc[planted["synthetic_id"] == "s8", "train_id"].item() == copied
    gan_sets = rep.memorization[rep.memorization["set"] != "planted copy (test)"]
    assert gan_sets["flagged"].sum() == 0   # barely trained GAN noise copies nothing
    per = rep.per_image
    assert {"ssim", "psnr", "ms_ssim", "nrmse", "nearest_real_id"} <= set(per.columns)
    assert per.loc[per["image_id"] == "s8", "ssim"].item() > 0.95
    assert (out / "pairs").is_dir() and len(list((out / "pairs").glob("*.png"))) > 0
    assert "domain encoder" in rep.summary["extractor_description"]
    assert {str(r.resolve()) for r in runs} <= {str(Path(s).parent) for s in rep.sets["source"]}

    run = next(r for r in tracking.search_runs("quality") if r.data.tags.get("medaug.out") == str(out))
    assert any(k.endswith(".fid") for k in run.data.metrics) and "epoch.fid" in run.data.metrics
    arts = tracking.list_artifacts(run.info.run_id, "quality")
    assert "quality/sets.csv" in arts and "quality/sets_table.json" in arts


def test_quality_cli_bad_inputs(small_phantom, tmp_path, capsys):
    """Missing sets, junk checkpoints: {"ok": false} with a message naming the input."""
    from core.cli import main

    assert main(["quality", "--real", str(small_phantom.root), "--synthetic", str(tmp_path / "nope")]) == 2
    assert "no such file or folder" in json.loads(capsys.readouterr().out.splitlines()[-1])["error"]
    assert main(["quality", "--real", str(small_phantom.root)]) == 2
    assert "--synthetic" in json.loads(capsys.readouterr().out.splitlines()[-1])["error"]
    (tmp_path / "x.pt").write_bytes(b"junk")
    assert main(["quality", "--real", str(small_phantom.root), "--synthetic", str(tmp_path / "x.pt")]) == 2
    assert "x.pt" in json.loads(capsys.readouterr().out.splitlines()[-1])["error"]
