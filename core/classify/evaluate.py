"""Test-set metrics with bootstrap confidence intervals, in vectorised numpy (no scikit-learn).

``evaluate(y_true, probs, class_names)`` returns accuracy, balanced accuracy, macro-F1 and
macro AUROC; per class: support, sensitivity (recall), specificity, precision, F1 and
one-vs-rest AUROC; the confusion matrix (rows: true class, columns: predicted); and 95%
confidence intervals.

Definitions (the choices a reader needs to compare numbers):
- The prediction is the arg-max of ``probs``.
- A class ABSENT from ``y_true`` has no sensitivity and no AUROC (NaN, with a note); it is
  left out of balanced accuracy, macro-F1 and macro AUROC (which average over the classes
  present in the test set). Predictions INTO an absent class still count as errors.
- AUROC is the Mann-Whitney statistic of the class's probability, positives against all
  other images, ties counted one half.
- Confidence intervals: STRATIFIED bootstrap (each replicate resamples, with replacement,
  within each true class, so class supports are fixed and every present class is in every
  replicate), ``n_boot`` replicates, percentile 2.5-97.5 %. Each replicate is a vector of
  per-image counts, so all replicates are computed at once with ``bincount``.
"""
from __future__ import annotations

import math

import numpy as np

CI_METHOD = "stratified bootstrap by true class, percentile 95% interval"
SUMMARY_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auroc")
PER_CLASS_METRICS = ("sensitivity", "specificity", "precision", "f1", "auroc")


def _check(y_true, probs, class_names) -> tuple[np.ndarray, np.ndarray, list[str]]:
    names = [str(c) for c in class_names]
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != len(names):
        raise ValueError(f"probs: expected shape (N, {len(names)}) for {len(names)} classes, got {p.shape}.")
    if y.ndim != 1 or len(y) != len(p):
        raise ValueError(f"y_true: expected {len(p)} labels (one per row of probs), got shape {y.shape}.")
    if len(y) == 0:
        raise ValueError("y_true is empty: the test split has no images to evaluate.")
    if len(names) < 2:
        raise ValueError(f"class_names: need at least 2 classes, got {names}.")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= len(names):
        raise ValueError(f"y_true: labels must be class indices in [0, {len(names) - 1}].")
    if not np.isfinite(p).all():
        raise ValueError("probs contains NaN or infinite values; the model diverged or was fed bad inputs.")
    return y.astype(np.int64), p, names


def _confusions(y: np.ndarray, pred: np.ndarray, k: int, weights: np.ndarray) -> np.ndarray:
    """(B, K, K) confusion matrices, one per row of per-image ``weights`` (B, N)."""
    b = weights.shape[0]
    cell = (np.arange(b)[:, None] * k * k + (y * k + pred)[None, :]).ravel()
    return np.bincount(cell, weights=weights.ravel(), minlength=b * k * k).reshape(b, k, k)


def _divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def _from_confusions(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics of (B, K, K) confusion matrices; per-class arrays are (B, K), summaries (B,)."""
    tp = np.diagonal(cm, axis1=1, axis2=2)
    support = cm.sum(axis=2)               # true class counts
    predicted = cm.sum(axis=1)
    n = cm.sum(axis=(1, 2))
    fn, fp = support - tp, predicted - tp
    tn = n[:, None] - tp - fn - fp
    present = support > 0
    out = {
        "sensitivity": _divide(tp, support),
        "specificity": _divide(tn, tn + fp),
        "precision": _divide(tp, predicted),
        "f1": np.where(present, _divide(2 * tp, 2 * tp + fp + fn), np.nan),
        "accuracy": _divide(tp.sum(axis=1), n),
    }
    with np.errstate(invalid="ignore"):
        out["balanced_accuracy"] = np.nanmean(np.where(present, out["sensitivity"], np.nan), axis=1)
        out["macro_f1"] = np.nanmean(out["f1"], axis=1)
    return out


def _aurocs(y: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(B, K) one-vs-rest AUROC under per-image ``weights`` (B, N); NaN where a side is empty.

    U = sum over positives of (#negatives scoring lower + 0.5 * #negatives scoring equal),
    AUROC = U / (#pos * #neg), all counts weighted; ties are found through unique values."""
    b, _n = weights.shape
    k = probs.shape[1]
    out = np.full((b, k), np.nan)
    rows = np.arange(b)[:, None]
    for c in range(k):
        values, v = np.unique(probs[:, c], return_inverse=True)
        m = len(values)
        pos = (y == c).astype(np.float64)
        neg_w = weights * (1.0 - pos)[None, :]
        neg_at = np.bincount((rows * m + v[None, :]).ravel(), weights=neg_w.ravel(), minlength=b * m).reshape(b, m)
        neg_below = np.cumsum(neg_at, axis=1) - neg_at          # negatives strictly lower than each value
        pos_w = weights * pos[None, :]
        u = (pos_w * (neg_below[:, v] + 0.5 * neg_at[:, v])).sum(axis=1)
        n_pos, n_neg = pos_w.sum(axis=1), neg_w.sum(axis=1)
        out[:, c] = _divide(u, n_pos * n_neg)
    return out


def _stratified_counts(y: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, N) resampling counts: within each true class, n_c draws with replacement."""
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_boot, len(y)))
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        counts[:, members] = rng.multinomial(len(members), np.full(len(members), 1.0 / len(members)), size=n_boot)
    return counts


def _interval(samples: np.ndarray) -> list[float]:
    """Percentile 95% interval of bootstrap values (NaN replicates ignored)."""
    ok = samples[np.isfinite(samples)]
    if len(ok) == 0:
        return [math.nan, math.nan]
    lo, hi = np.percentile(ok, [2.5, 97.5])
    return [float(lo), float(hi)]


def evaluate(y_true, probs, class_names, n_boot: int = 1000, seed: int = 0) -> dict:
    """Metrics of class probabilities ``probs`` (N, K) against true class indices ``y_true`` (N,).

    Returns a JSON-able dict (NaN where undefined)::

        {"n", "classes", "accuracy", "balanced_accuracy", "macro_f1", "macro_auroc",
         "per_class": {name: {"support", "sensitivity", "specificity", "precision", "f1", "auroc"}},
         "confusion_matrix": [[...]] (rows true, columns predicted),
         "ci": {"accuracy": [lo, hi], ..., "per_class": {name: {"sensitivity": [lo, hi], ...}}},
         "ci_method": str, "n_boot": int, "notes": [str]}
    ``n_boot=0`` skips the intervals."""
    y, p, names = _check(y_true, probs, class_names)
    if not 0 <= n_boot <= 100_000:
        raise ValueError(f"n_boot={n_boot}: choose between 0 (no intervals) and 100000 replicates.")
    k = len(names)
    pred = p.argmax(axis=1)
    ones = np.ones((1, len(y)))
    cm = _confusions(y, pred, k, ones)
    m = _from_confusions(cm)
    auroc = _aurocs(y, p, ones)
    support = cm[0].sum(axis=1).astype(int)
    notes = []
    for c, name in enumerate(names):
        if support[c] == 0:
            notes.append(f"class {name!r} is absent from the test set: its sensitivity, F1 and AUROC are NaN "
                         f"and it is left out of the macro averages.")
        elif support[c] == len(y):
            notes.append(f"every test image is {name!r}: one-vs-rest AUROC is undefined (NaN).")
    with np.errstate(invalid="ignore"):
        macro_auroc = np.nanmean(auroc, axis=1) if np.isfinite(auroc).any() else np.array([math.nan])
    out = {
        "n": len(y), "classes": names,
        "accuracy": float(m["accuracy"][0]), "balanced_accuracy": float(m["balanced_accuracy"][0]),
        "macro_f1": float(m["macro_f1"][0]), "macro_auroc": float(macro_auroc[0]),
        "per_class": {name: {"support": int(support[c]), **{key: float(m[key][0, c]) for key in PER_CLASS_METRICS[:4]},
                             "auroc": float(auroc[0, c])} for c, name in enumerate(names)},
        "confusion_matrix": cm[0].astype(int).tolist(),
        "ci": {}, "ci_method": CI_METHOD if n_boot else "none", "n_boot": int(n_boot), "notes": notes,
    }
    if n_boot:
        w = _stratified_counts(y, n_boot, seed)
        bm = _from_confusions(_confusions(y, pred, k, w))
        bauc = _aurocs(y, p, w)
        with np.errstate(invalid="ignore"):
            bm["macro_auroc"] = np.nanmean(np.where(np.isfinite(bauc), bauc, np.nan), axis=1) \
                if np.isfinite(bauc).any() else np.full(n_boot, np.nan)
        bm["auroc"] = bauc
        out["ci"] = {key: _interval(bm[key]) for key in SUMMARY_METRICS}
        out["ci"]["per_class"] = {name: {key: _interval(bm[key][:, c]) for key in PER_CLASS_METRICS}
                                  for c, name in enumerate(names)}
    return out


def macro_f1(y_true, y_pred, num_classes: int) -> float:
    """Macro-F1 over the classes present in ``y_true`` (the trainer's early-stopping score)."""
    y = np.asarray(y_true, dtype=np.int64)
    pred = np.asarray(y_pred, dtype=np.int64)
    return float(_from_confusions(_confusions(y, pred, num_classes, np.ones((1, len(y)))))["macro_f1"][0])


def flat_metrics(result: dict, prefix: str = "test_") -> dict[str, float]:
    """One level of ``{name: number}`` for MLflow: summaries, CI bounds and per-class values
    (class names made key-safe: ``test_sensitivity.Disc_space_narrowing``)."""
    out = {f"{prefix}{key}": result[key] for key in SUMMARY_METRICS}
    for key in SUMMARY_METRICS:
        if key in result.get("ci", {}):
            lo, hi = result["ci"][key]
            out[f"{prefix}{key}_ci_lo"], out[f"{prefix}{key}_ci_hi"] = lo, hi
    for name, values in result["per_class"].items():
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
        for key in PER_CLASS_METRICS:
            out[f"{prefix}{key}.{safe}"] = values[key]
    return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(v)}
