"""Set metrics on features (N, D) of a real and a synthetic set, with 95% intervals tested for coverage.

Point values (they agree with pytorch-fid, torchmetrics and torch-fidelity on the same features):
- Fréchet distance (FID when the features are Inception's): ``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2))``
  computed as pytorch-fid's ``calculate_frechet_distance`` does (scipy's ``sqrtm``, an eps-offset retry
  when the product is singular, the real part when rounding leaves an imaginary one); the tests hold it to
  that reference formula to 1e-6 relative.
- KID (Binkowski et al. 2018): the unbiased MMD^2 with the cubic polynomial kernel
  ``k(x, y) = (x.y / d + 1)^3``, averaged over random subsets. The subset size is
  ``min(1000, n_real, n_synthetic)``, so small sets still get an estimate (with a wide spread).
- Precision / recall (Kynkäänniemi et al. 2019): a sample is inside a set's manifold when it lies within
  the k-th nearest-neighbour radius of some member. Precision: share of synthetic samples inside the real
  manifold (fidelity); recall: share of real samples inside the synthetic manifold (coverage). k = 3.

Intervals (``*_lo`` / ``*_hi``, 95%; ``ci_method`` says it in one line). Not the bootstrap: a resample
drawn with replacement repeats samples, and a repeat adds self-kernel terms to the unbiased KID, puts
zero distances among the k-NN radii (P and R come out low) and narrows the covariance (FID comes out
high), so percentile bootstrap intervals missed their own point value. Instead:

- Half-sampling, without replacement (the delete-d jackknife with d = n/2, Shao & Wu 1989; subsampling,
  Politis, Romano & Wolf 1999): a replicate takes a random half of the real set and a random half of the
  synthetic set, the complementary halves make a second replicate, and the metric is recomputed on each.
  No sample repeats. The pairwise distance, kernel and Gram matrices are computed once and indexed.
  Sets of 4 to 2k + 1 samples halve into fewer than k + 1, so their halves use k = half size - 1 (rough);
  below 4 there are no intervals (NaN).
- Rescaling: when a statistic's spread scales as 1/sqrt(n), subsets of b out of n drawn without
  replacement spread as sd(T_n) * sqrt((n - b) / b) around the full-set value (the finite-population
  factor; Politis-Romano-Wolf's sqrt(b/n) rate is its b << n limit). So se(T_n) = sqrt(b / (n - b)) * sd(T_b),
  and at b = n/2 the half-sample spread is the spread of T_n itself.
- Centring: FID, precision and recall are biased at finite n and the bias depends on n (FID by about +c/n,
  k-NN radii grow as n shrinks), so E[T_{n/2}] != E[T_n]. The standard error is the spread of the
  replicates around their own mean, so that shift does not move the interval.
- Interval: ``T_n -/+ 1.96 se``, clipped to the metric's range ([0, inf) for FID, [0, 1] for P/R). It
  always contains the point value. Normal rather than percentile: 50 replicates (the default) estimate
  a standard deviation well and a 2.5% quantile poorly.
- Measured (d = 16, 240 real / 200 synthetic, 100 draws): coverage 0.95 FID, 0.94 KID, 0.97 precision,
  0.95 recall, widths 1.1-1.2x an oracle interval's. Where the two distributions are identical, FID and
  KID fluctuate at rate 1/n rather than 1/sqrt(n) and the intervals come out about 1.8x wide
  (conservative); the old with-replacement bootstrap covered P/R in about 10% of draws.

What the intervals cover (tests/test_setmetrics_coverage.py checks each over 100 draws from known
Gaussians against a Monte-Carlo value of the target):
- KID: the population MMD^2 (the point value is unbiased). Its variance is the half-sample variance of
  the complete U-statistic plus ``kid_std^2 / subsets``, the noise of the point's own random subsets.
- FID, precision, recall: the metric's expected value AT THESE SET SIZES, i.e. its average over fresh
  sets of ``n_real`` and ``n_synthetic`` samples from the same two distributions. Sets of equal sizes can
  be compared on it. FID's n -> inf limit lies lower; ``fid_inf`` estimates it by extrapolating FID
  linearly in 1/n through the full sets and the halves (``2 FID_n - mean FID_{n/2}``, the two-point form of
  Chong & Forsyth 2020's fit). It has no interval.

Checks: non-finite features raise ValueError (which set, how many rows). Warnings: FID at small n or
singular covariance, and a collapsed synthetic set (many identical features, a spread far below the real
set's, or recall near 0). Memory: the pairwise matrices are (n_real + n_synthetic)^2 float64 numbers.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

MIN_STABLE_FID = 2000    # below this many samples FID values are biased; compare sets of equal size only
KID_MAX_SUBSET = 1000
PR_K = 3
Z_95 = 1.959963984540054
CI_METHOD = ("half-sampling without replacement (delete-d jackknife, d = n/2): normal 95% interval, "
             "se = spread of the half-sample values; KID covers the population MMD^2, FID/precision/recall "
             "their expected value at these set sizes")
COLLAPSE_SPREAD = 0.1      # synthetic mean pairwise distance below this share of the real set's: collapse
COLLAPSE_DUPLICATES = 0.5  # more than this share of synthetic rows repeat another row exactly: collapse
COLLAPSE_RECALL = 0.05     # recall below this: the synthetic set covers almost none of the real manifold


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (pytorch-fid's algorithm)."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"feature statistics differ in shape: means {mu1.shape} vs {mu2.shape}, "
                         f"covariances {sigma1.shape} vs {sigma2.shape}; use one extractor for both sets.")
    diff = mu1 - mu2
    covmean, _ = linalg.sqrtm(sigma1.dot(sigma2), disp=False)
    if not np.isfinite(covmean).all():   # singular product: offset both diagonals
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"Fréchet distance: imaginary component {np.max(np.abs(covmean.imag)):.3g} in the "
                             f"covariance square root; the feature sets are too small or degenerate.")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, dtype=np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def fid(real: np.ndarray, fake: np.ndarray) -> float:
    if len(real) < 2 or len(fake) < 2:
        raise ValueError(f"FID needs at least 2 samples per set, got {len(real)} real and {len(fake)} synthetic.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # scipy's sqrtm warns on near-singular inputs; handled above
        return frechet_distance(*feature_stats(real), *feature_stats(fake))


def frechet_distance_eigh(mu1, sigma1, mu2, sigma2) -> float:
    """The same distance through symmetric eigendecompositions: Tr sqrt(S1 S2) = sum sqrt(eig(A S2 A)),
    A = sqrt(S1). Agrees with :func:`frechet_distance` to rounding on well-conditioned inputs and is
    ~20x faster, so the half-samples use it."""
    w, v = np.linalg.eigh(np.asarray(sigma1, np.float64))
    a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    ev = np.linalg.eigvalsh(a @ np.asarray(sigma2, np.float64) @ a)
    diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.sqrt(np.clip(ev, 0, None)).sum())


def fid_fast(real: np.ndarray, fake: np.ndarray) -> float:
    if len(real) < 2 or len(fake) < 2:
        raise ValueError(f"FID needs at least 2 samples per set, got {len(real)} real and {len(fake)} synthetic.")
    return frechet_distance_eigh(*feature_stats(real), *feature_stats(fake))


def kid_subset_size(n_real: int, n_fake: int) -> int:
    return int(min(KID_MAX_SUBSET, n_real, n_fake))


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    m = x.shape[0]
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                 - 2 * kxy.mean())


def kid(real: np.ndarray, fake: np.ndarray, subsets: int = 50, subset_size: int | None = None,
        seed: int = 0) -> tuple[float, float, int]:
    """(mean, std over subsets, subset size) of the unbiased polynomial-kernel MMD^2."""
    m = subset_size or kid_subset_size(len(real), len(fake))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(real)} real and {len(fake)} synthetic.")
    rng = np.random.default_rng(seed)
    vals = [_mmd2_unbiased(real[rng.choice(len(real), m, replace=False)], fake[rng.choice(len(fake), m, replace=False)])
            for _ in range(subsets)]
    return float(np.mean(vals)), float(np.std(vals)), int(m)


def _kth_radius(x: np.ndarray, k: int) -> np.ndarray:
    return _radii(_pairwise(x, x), k)


def _radii(d_self: np.ndarray, k: int) -> np.ndarray:
    """k-th nearest-neighbour distance of each row of a square distance matrix (column k of the sorted
    row: column 0 is the point itself, distance 0)."""
    return np.partition(d_self, k, axis=1)[:, k]


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    import torch

    return torch.cdist(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)).numpy()


def _pr_from_distances(d_real: np.ndarray, d_fake: np.ndarray, d_cross: np.ndarray, k: int) -> tuple[float, float]:
    """(precision, recall) from real-real, synthetic-synthetic and synthetic-real (n_fake, n_real) distances."""
    r_real, r_fake = _radii(d_real, k), _radii(d_fake, k)
    precision = float((d_cross <= r_real[None, :]).any(axis=1).mean())
    recall = float((d_cross.T <= r_fake[None, :]).any(axis=1).mean())
    return precision, recall


def _pr_k(k: int, n_real: int, n_fake: int) -> int:
    k = int(min(k, n_real - 1, n_fake - 1))
    if k < 1:
        raise ValueError(f"precision/recall needs at least 2 samples per set, got {n_real} real and {n_fake}.")
    return k


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = PR_K) -> tuple[float, float, int]:
    """(precision, recall, k actually used): k shrinks to n - 1 for tiny sets."""
    k = _pr_k(k, len(real), len(fake))
    return (*_pr_from_distances(_pairwise(real, real), _pairwise(fake, fake), _pairwise(fake, real), k), k)


def check_features(features, name: str) -> np.ndarray:
    """``features`` as float64 (N, D); ValueError naming the set when rows hold NaN or inf values."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"{name} features: expected a (N, D) array, got shape {f.shape}.")
    bad = np.flatnonzero(~np.isfinite(f).all(axis=1))
    if len(bad):
        shown = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
        raise ValueError(f"{name} features: {len(bad)} of {len(f)} rows contain NaN or infinite values "
                         f"(rows {shown}); the extractor got broken images or diverged. Re-extract, or drop "
                         f"those images before scoring.")
    return f


def fid_warnings(n_real: int, n_fake: int, dim: int) -> list[str]:
    out = []
    n = min(n_real, n_fake)
    if n <= dim:
        out.append(f"FID: {n} samples for {dim}-d features: the covariance is singular, so the value is dominated "
                   f"by estimation noise; use more images or a lower-dimensional extractor.")
    if n < MIN_STABLE_FID:
        out.append(f"FID: only {n} samples (stable values need about {MIN_STABLE_FID}+); it is biased upwards at "
                   f"small n, so compare only sets of the same size, and read the interval (or fid_inf).")
    return out


def collapse_warnings(d_real: np.ndarray, d_fake: np.ndarray, fake: np.ndarray, recall: float) -> list[str]:
    """Warnings when the synthetic set looks mode-collapsed: exact repeats, a spread far below the real
    set's (mean pairwise feature distance), or recall near 0."""
    out = []
    n = len(fake)
    repeated = n - len(np.unique(fake, axis=0))
    if n > 1 and repeated / n > COLLAPSE_DUPLICATES:
        out.append(f"collapse: {repeated} of {n} synthetic samples repeat another one exactly; the generator "
                   f"produces few distinct images (mode collapse).")
    spread_real = d_real.sum() / max(1, len(d_real) * (len(d_real) - 1))
    spread_fake = d_fake.sum() / max(1, n * (n - 1))
    if spread_real > 0 and spread_fake < COLLAPSE_SPREAD * spread_real:
        out.append(f"collapse: the synthetic features spread {spread_fake / spread_real:.1%} as far as the real "
                   f"ones (mean pairwise distance); the set is nearly one image repeated (mode collapse).")
    if recall < COLLAPSE_RECALL:
        out.append(f"collapse: recall {recall:.2f}: the synthetic set covers almost none of the real data "
                   f"(mode collapse, or a generator far from the real images).")
    return out


# --- half-sampling --------------------------------------------------------------------------------

def half_splits(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n // 2) sorted indices: random halves of range(n) without replacement; rows 2i and 2i+1
    are complementary halves of one split (for odd n the middle element sits out)."""
    b = n // 2
    rows = []
    for _ in range((n_boot + 1) // 2):
        perm = rng.permutation(n)
        rows += [np.sort(perm[:b]), np.sort(perm[b:2 * b])]
    return np.asarray(rows[:n_boot], dtype=np.int64).reshape(n_boot, b)


def _fid_from_grams(g_rr, g_ff, g_fr, s, t) -> float:
    """FID of real rows ``s`` and synthetic rows ``t`` from Gram matrices (for D > half-sample size):
    Tr sqrt(S1 S2) is the sum of the singular values of the centred cross Gram / sqrt((b1-1)(b2-1))."""
    def centred(g):
        return g - g.mean(axis=0, keepdims=True) - g.mean(axis=1, keepdims=True) + g.mean()

    grr, gff, gfr = g_rr[np.ix_(s, s)], g_ff[np.ix_(t, t)], g_fr[np.ix_(t, s)]
    b1, b2 = len(s), len(t)
    mean_diff = grr.mean() + gff.mean() - 2 * gfr.mean()
    c = centred(gfr) / math.sqrt((b1 - 1) * (b2 - 1))
    cc = c @ c.T if b2 <= b1 else c.T @ c
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(cc), 0, None)).sum()
    return float(mean_diff + np.trace(centred(grr)) / (b1 - 1) + np.trace(centred(gff)) / (b2 - 1) - 2 * tr_sqrt)


def _cubic_kernels(grams: list[np.ndarray], dim: int) -> list[np.ndarray]:
    """KID's kernel ``(x.y / d + 1)^3`` from Gram matrices, in place (the Grams are consumed)."""
    for g in grams:
        g /= dim
        g += 1.0
        g **= 3
    return grams


def _mmd2_from_kernels(k_rr, k_ff, k_fr, w_r: np.ndarray, w_f: np.ndarray) -> np.ndarray:
    """Unbiased MMD^2 of the subsets given by 0/1 weights ``w_r`` (B, n_real) and ``w_f`` (B, n_fake)."""
    b1, b2 = w_r.sum(axis=1), w_f.sum(axis=1)
    within_r = ((w_r @ k_rr) * w_r).sum(axis=1) - w_r @ np.diag(k_rr)
    within_f = ((w_f @ k_ff) * w_f).sum(axis=1) - w_f @ np.diag(k_ff)
    cross = ((w_f @ k_fr) * w_r).sum(axis=1)
    return within_r / (b1 * (b1 - 1)) + within_f / (b2 * (b2 - 1)) - 2 * cross / (b1 * b2)


def _weights(rows: np.ndarray, n: int) -> np.ndarray:
    """(B, n) 0/1 weights of (B, b) row indices."""
    w = np.zeros((len(rows), n))
    np.put_along_axis(w, rows, 1.0, axis=1)
    return w


def kid_from_kernels(k_rr, k_ff, k_fr, subsets: int, subset_size: int, seed: int = 0) -> tuple[float, float, int]:
    """:func:`kid` on precomputed kernel matrices (real-real, synthetic-synthetic, synthetic-real): the same
    random subsets, the same value to rounding, without recomputing a kernel per subset."""
    m, n_r, n_f = int(subset_size), len(k_rr), len(k_ff)
    rng = np.random.default_rng(seed)
    picks = [(rng.choice(n_r, m, replace=False), rng.choice(n_f, m, replace=False)) for _ in range(subsets)]
    vals = np.concatenate([_mmd2_from_kernels(k_rr, k_ff, k_fr, _weights(np.stack([p[0] for p in chunk]), n_r),
                                              _weights(np.stack([p[1] for p in chunk]), n_f))
                           for chunk in (picks[i:i + 16] for i in range(0, subsets, 16))])
    return float(np.mean(vals)), float(np.std(vals)), m


def _half_fid(real, fake, grams, s_all, t_all) -> np.ndarray:
    """FID of each half-sample pair (rows of ``s_all``, ``t_all``); through the Gram matrices when the
    feature dimension exceeds the half-sample size (cheaper than D x D covariances)."""
    if real.shape[1] > min(s_all.shape[1], t_all.shape[1]):
        return np.array([_fid_from_grams(*grams, s, t) for s, t in zip(s_all, t_all)])
    return np.array([fid_fast(real[s], fake[t]) for s, t in zip(s_all, t_all)])


def _half_pr(d_rr, d_ff, d_fr, k: int, s_all, t_all) -> tuple[np.ndarray, np.ndarray]:
    """(precision, recall) of each half-sample pair, indexing the full distance matrices."""
    pr = np.array([_pr_from_distances(d_rr[np.ix_(s, s)], d_ff[np.ix_(t, t)], d_fr[np.ix_(t, s)], k)
                   for s, t in zip(s_all, t_all)])
    return pr[:, 0], pr[:, 1]


def half_sample_se(values: np.ndarray, n_real: int, n_fake: int) -> float:
    """Standard error of the full-set statistic from its half-sample values: the spread around their own
    mean times sqrt(b / (n - b)) (the finite-population factor; 1 when both sets halve exactly)."""
    ok = values[np.isfinite(values)]
    if len(ok) < 2:
        return math.nan
    factor = np.mean([(n // 2) / (n - n // 2) for n in (n_real, n_fake)])
    return float(ok.std(ddof=1) * math.sqrt(factor))


def normal_interval(point: float, se: float, lo: float = -math.inf, hi: float = math.inf) -> tuple[float, float]:
    """``point -/+ 1.96 se`` clipped to [lo, hi] (the metric's range); contains ``point``."""
    if not math.isfinite(se):
        return math.nan, math.nan
    return float(max(lo, point - Z_95 * se)), float(min(hi, point + Z_95 * se))


def set_metrics(real: np.ndarray, fake: np.ndarray, *, n_boot: int = 50, kid_subsets: int = 50, k: int = PR_K,
                seed: int = 0) -> dict:
    """FID, KID and precision/recall of one synthetic set against the real one, with 95% intervals
    (``*_lo`` / ``*_hi`` from ``n_boot`` half-samples; the module docstring says what each covers),
    ``fid_inf``, ``ci_method`` and readable warnings. ``n_boot < 2`` skips the intervals (NaN)."""
    real, fake = check_features(real, "real"), check_features(fake, "synthetic")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be (N, D) with the same D, got {real.shape} and {fake.shape}.")
    n_r, n_f, dim = len(real), len(fake), real.shape[1]
    out: dict = {"n_real": n_r, "n_synthetic": n_f, "feature_dim": dim}
    out["fid"] = fid(real, fake)
    k = _pr_k(k, n_r, n_f)
    d_rr, d_ff, d_fr = _pairwise(real, real), _pairwise(fake, fake), _pairwise(fake, real)
    out["precision"], out["recall"] = _pr_from_distances(d_rr, d_ff, d_fr, k)
    out["pr_k"] = k
    grams = [real @ real.T, fake @ fake.T, fake @ real.T]        # (n_r, n_r), (n_f, n_f), (n_f, n_r)
    notes = fid_warnings(n_r, n_f, dim)
    halves = n_boot >= 2 and min(n_r, n_f) // 2 >= 2
    if halves:   # rows 2i, 2i+1: complementary halves of one random split of each set
        rng = np.random.default_rng(seed + 1)
        s_all, t_all = half_splits(n_r, n_boot, rng), half_splits(n_f, n_boot, rng)
        half = {"fid": _half_fid(real, fake, grams, s_all, t_all)}
    kernels = _cubic_kernels(grams, dim)
    m = kid_subset_size(n_r, n_f)
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {n_r} real and {n_f} synthetic.")
    out["kid"], out["kid_std"], out["kid_subset"] = kid_from_kernels(*kernels, kid_subsets, m, seed)
    out["fid_inf"] = math.nan
    if halves:
        half["kid"] = _mmd2_from_kernels(*kernels, _weights(s_all, n_r), _weights(t_all, n_f))
        k_half = min(k, s_all.shape[1] - 1, t_all.shape[1] - 1)   # < k only for sets under 2(k + 1)
        half["precision"], half["recall"] = _half_pr(d_rr, d_ff, d_fr, k_half, s_all, t_all)
        se = {key: half_sample_se(v, n_r, n_f) for key, v in half.items()}
        se["kid"] = math.sqrt(se["kid"] ** 2 + out["kid_std"] ** 2 / kid_subsets)   # + the point's subset noise
        out["fid_lo"], out["fid_hi"] = normal_interval(out["fid"], se["fid"], 0.0)
        out["kid_lo"], out["kid_hi"] = normal_interval(out["kid"], se["kid"])
        for name in ("precision", "recall"):
            out[f"{name}_lo"], out[f"{name}_hi"] = normal_interval(out[name], se[name], 0.0, 1.0)
        out["fid_inf"] = float(2 * out["fid"] - np.nanmean(half["fid"]))
        out["ci_method"] = CI_METHOD
    else:
        for name in ("fid", "kid", "precision", "recall"):
            out[f"{name}_lo"] = out[f"{name}_hi"] = math.nan
        out["ci_method"] = "none"
        if n_boot >= 2:
            notes.append(f"intervals: {min(n_r, n_f)} samples per set are too few to halve; they need 4+.")
    out["warnings"] = notes + collapse_warnings(d_rr, d_ff, fake, out["recall"])
    return out
