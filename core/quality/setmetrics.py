"""Set metrics on features (N, D) of a real and a synthetic set.

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
- Confidence intervals: percentile bootstrap over both sets (resampled with replacement, jointly).
  Bootstrap resamples repeat samples, which biases FID upwards a little; the interval shows the spread.
- Warnings: FID is biased at small n and its covariance is singular when n <= D.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

MIN_STABLE_FID = 2000    # below this many samples FID values are biased; compare sets of equal size only
KID_MAX_SUBSET = 1000
PR_K = 3


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
    ~20x faster, so the bootstrap uses it."""
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
    d = _pairwise(x, x)
    return np.sort(d, axis=1)[:, k]   # column 0 is the point itself (distance 0)


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    import torch

    return torch.cdist(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)).numpy()


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = PR_K) -> tuple[float, float, int]:
    """(precision, recall, k actually used): k shrinks to n - 1 for tiny sets."""
    k = int(min(k, len(real) - 1, len(fake) - 1))
    if k < 1:
        raise ValueError(f"precision/recall needs at least 2 samples per set, got {len(real)} real and {len(fake)}.")
    r_real, r_fake = _kth_radius(real, k), _kth_radius(fake, k)
    d = _pairwise(fake, real)                    # (n_fake, n_real)
    precision = float((d <= r_real[None, :]).any(axis=1).mean())
    recall = float((d.T <= r_fake[None, :]).any(axis=1).mean())
    return precision, recall, k


def fid_warnings(n_real: int, n_fake: int, dim: int) -> list[str]:
    out = []
    n = min(n_real, n_fake)
    if n <= dim:
        out.append(f"FID: {n} samples for {dim}-d features: the covariance is singular, so the value is dominated "
                   f"by estimation noise; use more images or a lower-dimensional extractor.")
    if n < MIN_STABLE_FID:
        out.append(f"FID: only {n} samples (stable values need about {MIN_STABLE_FID}+); it is biased upwards at "
                   f"small n, so compare only sets of the same size, and read the bootstrap interval.")
    return out


def bootstrap(fn, real: np.ndarray, fake: np.ndarray, n_boot: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of ``fn(real*, fake*)`` over bootstrap resamples of both sets."""
    if n_boot < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        try:
            vals.append(fn(real[rng.integers(0, len(real), len(real))], fake[rng.integers(0, len(fake), len(fake))]))
        except ValueError:
            continue
    if len(vals) < 2:
        return math.nan, math.nan
    a = (1 - level) / 2
    return float(np.quantile(vals, a)), float(np.quantile(vals, 1 - a))


def set_metrics(real: np.ndarray, fake: np.ndarray, *, n_boot: int = 50, kid_subsets: int = 50, k: int = PR_K,
                seed: int = 0) -> dict:
    """FID, KID and precision/recall of one synthetic set against the real one, with 95% bootstrap
    intervals (``*_lo`` / ``*_hi``) and readable warnings."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be (N, D) with the same D, got {real.shape} and {fake.shape}.")
    out: dict = {"n_real": len(real), "n_synthetic": len(fake), "feature_dim": real.shape[1]}
    out["fid"] = fid(real, fake)
    out["fid_lo"], out["fid_hi"] = bootstrap(fid_fast, real, fake, n_boot, seed)
    out["kid"], out["kid_std"], out["kid_subset"] = kid(real, fake, kid_subsets, seed=seed)
    m = out["kid_subset"]
    out["kid_lo"], out["kid_hi"] = bootstrap(lambda a, b: kid(a, b, max(2, kid_subsets // 10), m, seed)[0],
                                             real, fake, n_boot, seed + 1)
    out["precision"], out["recall"], out["pr_k"] = precision_recall(real, fake, k)
    pr = {"precision": 0, "recall": 1}
    for name, i in pr.items():
        out[f"{name}_lo"], out[f"{name}_hi"] = bootstrap(lambda a, b, i=i: precision_recall(a, b, k)[i], real, fake,
                                                         n_boot, seed + 2 + i)
    out["warnings"] = fid_warnings(len(real), len(fake), real.shape[1])
    return out
