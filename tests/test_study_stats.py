"""core.study.stats: the paired bootstrap against a direct computation on every resample of a tiny
split, the sign-flip test against its enumeration, Holm against a hand-computed example, verdicts on
planted effects, and the false-positive rate, CI coverage and detectable Δ on simulated cells."""
from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, recall_score

from core.study import stats

K = 4          # classes of the simulated splits


def balanced_labels(n: int) -> np.ndarray:
    return np.arange(n) % K


def simulate(y: np.ndarray, p_correct, seeds: int, rng: np.random.Generator) -> np.ndarray:
    """(seeds, n) predictions: image i is right with probability p_correct[i], else a random wrong class."""
    right = rng.random((seeds, len(y))) < np.broadcast_to(p_correct, y.shape)
    wrong = (y + rng.integers(1, K, (seeds, len(y)))) % K
    return np.where(right, y, wrong)


# --- the paired bootstrap and the test, on a split small enough to enumerate -----------------------

Y4 = np.array([0, 0, 1, 1])
A4 = np.array([[0, 1, 1, 2], [0, 0, 0, 1]])      # 2 seeds; class 2 is predicted but absent from y
B4 = np.array([[0, 0, 1, 1], [1, 0, 1, 0]])


def direct(metric, y, pred) -> float:
    labels = np.unique(y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if metric == "accuracy":
            return accuracy_score(y, pred)
        if metric == "balanced_accuracy":
            return balanced_accuracy_score(y, pred)
        if metric == "macro_f1":
            return f1_score(y, pred, labels=labels, average="macro", zero_division=0)
        return recall_score(y, pred, labels=[metric[1]], average="macro") if metric[1] in labels else np.nan


@pytest.mark.parametrize("metric", ["accuracy", "balanced_accuracy", "macro_f1", ("sensitivity", 1)])
def test_paired_bootstrap_equals_direct_computation_on_all_256_resamples(metric):
    resamples = np.array(list(itertools.product(range(4), repeat=4)))            # every index vector
    counts = np.stack([np.bincount(r, minlength=4) for r in resamples])
    got = stats.paired_bootstrap(Y4, A4, B4, metric, counts=counts)
    want = [np.mean([direct(metric, Y4[r], B4[s][r]) - direct(metric, Y4[r], A4[s][r]) for s in range(2)])
            for r in resamples]
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_sign_flip_p_is_the_share_of_all_swap_patterns():
    delta = lambda a, b: np.mean([accuracy_score(Y4, b[s]) - accuracy_score(Y4, a[s]) for s in range(2)])  # noqa: E731
    observed = abs(delta(A4, B4))
    extreme = 0
    for flip in itertools.product((False, True), repeat=4):
        f = np.array(flip)
        extreme += abs(delta(np.where(f, B4, A4), np.where(f, A4, B4))) >= observed - 1e-12
    assert stats.sign_flip_pvalue(Y4, A4, B4, "accuracy") == pytest.approx(extreme / 16)


def test_holm_matches_a_hand_computed_example():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.06
    np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(stats.holm([0.5, np.nan, 0.6]), [1.0, np.nan, 1.0])     # capped; NaN not counted
    assert stats.holm([]).shape == (0,)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        stats.holm([0.2, 1.5])


# --- verdicts -----------------------------------------------------------------------------------

def test_identical_cells_show_no_difference():
    rng = np.random.default_rng(0)
    y = balanced_labels(120)
    a = simulate(y, 0.7, 3, rng)
    for metric in ("macro_f1", "accuracy", ("sensitivity", 2)):
        r = stats.paired_delta(y, a, a.copy(), metric, n_boot=500)
        assert r["delta"] == 0 and r["ci_lo"] <= 0 <= r["ci_hi"] and r["p_value"] == 1.0 and r["seed_sd"] == 0
        assert stats.verdict(r["delta"], r["ci_lo"], r["ci_hi"], r["p_value"]) == "no detectable difference"


def test_a_planted_effect_helps_and_swapped_hurts():
    rng = np.random.default_rng(1)
    y = balanced_labels(160)
    a = simulate(y, 0.55, 3, rng)
    b = a.copy()
    fix = rng.random(a.shape[1]) < 0.3 / 0.45                          # b is right on ~30% more of the images
    b[:, fix] = y[fix]
    rows = stats.compare_cells(y, {"real": a, "aug": b}, [("real", "aug"), ("aug", "real")], "macro_f1", n_boot=1000)
    helps, hurts = rows
    assert helps["delta"] > 0.2 and helps["ci_lo"] > 0 and helps["verdict"] == "helps"
    assert hurts["delta"] == pytest.approx(-helps["delta"]) and hurts["verdict"] == "hurts"
    assert helps["p_holm"] == pytest.approx(min(1.0, 2 * helps["p_value"]))
    assert helps["n_seeds"] == 3 and helps["n_test"] == 160 and helps["mean_b"] > helps["mean_a"]
    sens = stats.paired_delta(y, a, b, ("sensitivity", 0), n_boot=500)
    assert sens["metric"] == "sensitivity[0]" and sens["delta"] > 0


def test_verdict_needs_the_test_and_the_interval_to_agree():
    assert stats.verdict(0.05, 0.01, 0.09, 0.01) == "helps"
    assert stats.verdict(-0.05, -0.09, -0.01, 0.01) == "hurts"
    assert stats.verdict(0.05, -0.01, 0.09, 0.01) == "no detectable difference"    # CI straddles 0
    assert stats.verdict(0.05, 0.01, 0.09, 0.2) == "no detectable difference"      # not significant after Holm
    assert stats.verdict(float("nan"), 0.01, 0.09, 0.01) == "no detectable difference"
    assert stats.verdict(-0.05, -0.09, -0.01, 0.01, higher_is_better=False) == "helps"


# --- calibration on simulated cells -------------------------------------------------------------

def test_null_false_positive_rate_and_ci_coverage_of_a_known_delta():
    """Each test image has probabilities p_a, p_b of being classified right (per seed, independently);
    the population Δ accuracy is E[p_b - p_a]. Under the null the cells are exchangeable."""
    rng = np.random.default_rng(2024)
    y = balanced_labels(120)
    false_pos = 0
    for i in range(600):
        p = rng.uniform(0.4, 0.9, len(y))
        a, b = simulate(y, p, 3, rng), simulate(y, p, 3, rng)
        false_pos += stats.sign_flip_pvalue(y, a, b, "accuracy", n_perm=400, seed=i) < 0.05
    assert false_pos / 600 <= 0.06                                          # valid test: size <= 0.05
    covered = 0
    for i in range(200):
        p_a = rng.uniform(0.45, 0.85, len(y))
        a, b = simulate(y, p_a, 3, rng), simulate(y, p_a + 0.08, 3, rng)       # true Δ = 0.08
        boot = stats.paired_bootstrap(y, a, b, "accuracy", n_boot=600, seed=i)
        lo, hi = np.percentile(boot, [2.5, 97.5])
        covered += lo <= 0.08 <= hi
    assert 0.88 <= covered / 200 <= 0.99


def test_detectable_delta_shrinks_with_the_test_split():
    rng = np.random.default_rng(3)
    mde = {}
    for n in (80, 320):
        y = balanced_labels(n)
        mde[n] = stats.min_detectable_delta(y, simulate(y, 0.7, 3, rng), "accuracy", n_boot=1000)
    assert 0.35 < mde[320] / mde[80] < 0.7                                        # about 1/sqrt(4)
    # independent cells: the paired se of a real comparison is about sqrt(2) x the baseline's
    y = balanced_labels(320)
    a, b = simulate(y, 0.7, 3, rng), simulate(y, 0.7, 3, rng)
    paired = stats.paired_delta(y, a, b, "accuracy", n_boot=1000)
    assert paired["mde"] == pytest.approx(stats.min_detectable_delta(y, a, "accuracy", n_boot=1000), rel=0.2)
    assert stats.paired_delta(y, a, b, "accuracy", n_boot=1000, n_comparisons=13)["mde"] > paired["mde"]


def test_inputs_are_checked():
    y = balanced_labels(8)
    a = np.zeros((3, 8), int)
    with pytest.raises(ValueError, match="same seed list"):
        stats.paired_delta(y, a, a[:2])
    with pytest.raises(ValueError, match=r"\(seeds, 8\)"):
        stats.paired_delta(y, a, np.zeros((3, 7), int))
    with pytest.raises(ValueError, match="choose one of"):
        stats.paired_delta(y, a, a, "auroc")
    with pytest.raises(ValueError, match="no predictions"):
        stats.compare_cells(y, {"real": a}, [("real", "gan")])


# --- the results table's interval over seeds (core.study.results.t_interval) ------------------------

def test_seed_t_interval_equals_scipy_and_is_cut_to_the_metrics_range():
    from scipy import stats as sps

    from core.study.results import METRIC_BOUNDS, t_interval

    values = [0.31, 0.27, 0.36]
    mean, sd, lo, hi = t_interval(values)
    ref = sps.t.interval(0.95, 2, loc=np.mean(values), scale=sps.sem(values))
    assert (lo, hi) == pytest.approx(ref, rel=1e-12) and sd == pytest.approx(np.std(values, ddof=1))
    # near 0 the uncut interval reaches below 0, which no macro-F1 can be; the cut keeps the rest
    near_zero = [0.0, 0.02, 0.21]
    _, _, raw_lo, raw_hi = t_interval(near_zero)
    m, _, lo, hi = t_interval(near_zero, METRIC_BOUNDS)
    assert raw_lo < 0 and lo == 0.0 and hi == raw_hi and lo <= m <= hi
    _, _, lo, hi = t_interval([1.0, 0.97, 0.80], METRIC_BOUNDS)
    assert hi == 1.0 and lo > 0


def test_seed_t_interval_coverage_over_repeated_draws():
    """3 seeds a cell: 95% coverage when the per-seed scores are normal, and the cut changes no
    decision about a possible true value (macro-F1 near 0: Beta draws with mean 0.04)."""
    from core.study.results import METRIC_BOUNDS, t_interval

    rng = np.random.default_rng(7)
    hits = np.mean([lo <= 0.3 <= hi for lo, hi in
                    (t_interval(rng.normal(0.3, 0.05, 3))[2:] for _ in range(4000))])
    assert 0.94 <= hits <= 0.96   # 4000 draws: SE 0.0034
    a, b = 0.4, 9.6
    truth = a / (a + b)
    cut = uncut = 0
    for _ in range(4000):
        v = rng.beta(a, b, 3)
        _, _, lo, hi = t_interval(v, METRIC_BOUNDS)
        _, _, rlo, rhi = t_interval(v)
        assert 0 <= lo <= hi <= 1
        cut += lo <= truth <= hi
        uncut += rlo <= truth <= rhi
    assert cut == uncut
