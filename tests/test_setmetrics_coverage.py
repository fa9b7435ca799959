"""core.quality.setmetrics: the 95% intervals hold their nominal coverage over repeated draws from known
distributions, contain their own point value, and are not wide for it; features are checked and a
collapsed synthetic set is flagged.

The target of each interval (see the module docstring): KID -> the population MMD^2; FID, precision and
recall -> their expected value at the sets' sizes. Both are computed here by Monte Carlo over fresh draws
from the same two Gaussians (the average of an unbiased estimator is the population value for KID)."""
from __future__ import annotations

import numpy as np
import pytest

from core.quality import setmetrics

D, N_REAL, N_FAKE = 16, 240, 200        # feature dimension, set sizes
SHIFT, SCALE = 1.0, 0.9                  # synthetic ~ N(SHIFT e1, SCALE^2 I), real ~ N(0, I)
REPS, N_MC, N_BOOT = 100, 400, 40        # coverage draws, Monte-Carlo draws for the targets, half-samples
METRICS = ("fid", "kid", "precision", "recall")


def draw(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    real = rng.normal(size=(N_REAL, D))
    fake = rng.normal(size=(N_FAKE, D)) * SCALE
    fake[:, 0] += SHIFT
    return real, fake


@pytest.fixture(scope="module")
def targets() -> dict:
    """Monte-Carlo mean (the target) and sd of each point estimator over fresh sets of these sizes."""
    rng = np.random.default_rng(1234)
    vals = {m: [] for m in METRICS}
    for i in range(N_MC):
        real, fake = draw(rng)
        vals["fid"].append(setmetrics.fid_fast(real, fake))
        vals["kid"].append(setmetrics.kid(real, fake, subsets=1, seed=i)[0])
        p, r, _ = setmetrics.precision_recall(real, fake)
        vals["precision"].append(p)
        vals["recall"].append(r)
    return {m: (float(np.mean(v)), float(np.std(v))) for m, v in vals.items()}


@pytest.fixture(scope="module")
def repeated() -> list[dict]:
    rng = np.random.default_rng(99)
    return [setmetrics.set_metrics(*draw(rng), n_boot=N_BOOT, kid_subsets=5, seed=i) for i in range(REPS)]


@pytest.mark.parametrize("metric", METRICS)
def test_interval_covers_its_target_about_95_percent(metric, targets, repeated):
    target, sd = targets[metric]
    lo = np.array([m[f"{metric}_lo"] for m in repeated])
    hi = np.array([m[f"{metric}_hi"] for m in repeated])
    coverage = float(np.mean((lo <= target) & (target <= hi)))
    assert 0.88 <= coverage <= 0.99, f"{metric}: {coverage:.2f} of {REPS} intervals contain {target:.4g}"
    width = float(np.mean(hi - lo)) / (2 * setmetrics.Z_95 * sd)   # 1 = the width of an oracle interval
    assert 0.7 < width < 1.6, f"{metric}: intervals {width:.2f}x the oracle width"


@pytest.mark.parametrize("metric", METRICS)
def test_point_lies_inside_its_interval_every_time(metric, repeated):
    for m in repeated:
        assert m[f"{metric}_lo"] <= m[metric] <= m[f"{metric}_hi"], (metric, m)
        assert m["ci_method"] == setmetrics.CI_METHOD


def test_fid_inf_estimates_the_population_distance(repeated, targets):
    population = SHIFT ** 2 + D * (1 + SCALE ** 2 - 2 * SCALE)          # closed form for these Gaussians
    fid_inf = np.array([m["fid_inf"] for m in repeated])
    assert targets["fid"][0] - population > 0.1                         # the finite-n bias it removes
    assert abs(fid_inf.mean() - population) < 3 * fid_inf.std() / np.sqrt(REPS)


def test_old_bootstrap_missed_the_point_this_one_does_not():
    """The issue's case: resampling with replacement puts P/R about 0.1 low and the KID replicates far
    from the point value; half-samples repeat nothing, so their values centre near the point value."""
    rng = np.random.default_rng(5)
    real, fake = draw(rng)
    point = setmetrics.set_metrics(real, fake, n_boot=0)
    boot = [setmetrics.precision_recall(real[rng.integers(0, N_REAL, N_REAL)], fake[rng.integers(0, N_FAKE, N_FAKE)])[1]
            for _ in range(20)]
    assert point["recall"] - np.mean(boot) > 0.05                      # the bug this module no longer has
    m = setmetrics.set_metrics(real, fake, n_boot=N_BOOT, seed=0)
    assert m["recall_lo"] <= point["recall"] <= m["recall_hi"]


def test_half_splits_are_complementary_and_repeat_nothing():
    rows = setmetrics.half_splits(11, 6, np.random.default_rng(0))
    assert rows.shape == (6, 5)
    for a, b in zip(rows[::2], rows[1::2]):
        assert len(set(a)) == 5 and not set(a) & set(b)
    assert (np.diff(rows, axis=1) > 0).all()


def test_kid_from_kernels_matches_kid():
    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(60, 5)), rng.normal(size=(45, 5)) + 0.3
    kernels = [(a @ b.T / 5 + 1) ** 3 for a, b in ((real, real), (fake, fake), (fake, real))]
    expected = setmetrics.kid(real, fake, 7, 30, seed=2)
    assert setmetrics.kid_from_kernels(*kernels, 7, 30, seed=2) == pytest.approx(expected, rel=1e-10, abs=1e-12)
    m = setmetrics.set_metrics(real, fake, n_boot=10, kid_subsets=7, seed=2)
    assert (m["kid"], m["kid_std"], m["kid_subset"]) == pytest.approx(setmetrics.kid(real, fake, 7, seed=2), rel=1e-10)


def test_gram_route_fid_matches_covariance_route():
    rng = np.random.default_rng(4)
    real, fake = rng.normal(size=(30, 40)), rng.normal(size=(26, 40)) * 1.2 + 0.1   # D > half-sample size
    grams = [real @ real.T, fake @ fake.T, fake @ real.T]
    s, t = np.arange(0, 30, 2), np.arange(1, 26, 2)
    assert setmetrics._fid_from_grams(*grams, s, t) == pytest.approx(setmetrics.fid_fast(real[s], fake[t]), rel=1e-6)


def test_non_finite_features_are_refused_with_the_set_and_count():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(50, 4)), rng.normal(size=(50, 4))
    fake[[3, 7], 1] = np.nan
    with pytest.raises(ValueError, match=r"synthetic features: 2 of 50 rows .*NaN.*rows 3, 7"):
        setmetrics.set_metrics(real, fake)
    real[0, 0] = np.inf
    with pytest.raises(ValueError, match=r"real features: 1 of 50 rows"):
        setmetrics.set_metrics(real, fake)


def test_collapsed_set_warns_and_a_healthy_one_does_not():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(120, 8))
    collapsed = np.repeat(rng.normal(size=(1, 8)), 120, axis=0)
    m = setmetrics.set_metrics(real, collapsed, n_boot=10, kid_subsets=5)
    notes = " ".join(m["warnings"])
    assert "repeat another one exactly" in notes and "spread 0.0%" in notes and "recall 0.00" in notes
    near_copies = collapsed + rng.normal(0, 1e-3, collapsed.shape)              # collapse without exact repeats
    assert any("spread" in w for w in setmetrics.set_metrics(real, near_copies, n_boot=0)["warnings"])
    healthy = setmetrics.set_metrics(real, rng.normal(size=(120, 8)), n_boot=10, kid_subsets=5)
    assert not any(w.startswith("collapse") for w in healthy["warnings"])


def test_tiny_sets_or_no_resamples_give_nan_intervals():
    rng = np.random.default_rng(0)
    m = setmetrics.set_metrics(rng.normal(size=(6, 3)), rng.normal(size=(3, 3)), n_boot=20)
    assert np.isnan(m["fid_lo"]) and m["ci_method"] == "none" and any("too few to halve" in w for w in m["warnings"])
    m = setmetrics.set_metrics(rng.normal(size=(6, 3)), rng.normal(size=(5, 3)), n_boot=20)   # halves of 3 and 2
    assert all(m[f"{x}_lo"] <= m[x] <= m[f"{x}_hi"] for x in ("fid", "kid", "precision", "recall"))
    m = setmetrics.set_metrics(rng.normal(size=(40, 3)), rng.normal(size=(40, 3)), n_boot=0)
    assert np.isnan(m["kid_hi"]) and np.isnan(m["fid_inf"]) and m["ci_method"] == "none" and m["fid"] >= 0
