"""Memorization audit: does a synthetic image nearly copy a training image?

For each synthetic image: its nearest training image of the same class in feature space, and that
distance. The yardstick is the real data itself: each training image's distance to its nearest OTHER
training image of the same class (leave-one-out). A synthetic image is flagged as a near-copy when it
is closer to a training image than BOTH the ``quantile`` (default 1%) of those real-to-real distances
and a third of their median (the 1/3 distance ratio of Carlini et al. 2023, "Extracting training data
from diffusion models"): two different patients' images are almost never that close, so a generator
that lands there has likely memorised. The second bound keeps small sets, whose 1% quantile is just
their closest pair, from flagging ordinary samples.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

DEFAULT_QUANTILE = 0.01
RATIO = 1 / 3


def nearest(query: np.ndarray, reference: np.ndarray, exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(distance, index) of each query row's nearest reference row (Euclidean). ``exclude_self``:
    query and reference are the same set and a row may not match itself (leave-one-out)."""
    import torch

    if len(reference) == 0 or len(query) == 0:
        return np.full(len(query), np.nan), np.full(len(query), -1)
    d = torch.cdist(torch.as_tensor(query, dtype=torch.float64), torch.as_tensor(reference, dtype=torch.float64))
    if exclude_self:
        if len(reference) < 2:
            return np.full(len(query), np.nan), np.full(len(query), -1)
        d.fill_diagonal_(float("inf"))
    dist, idx = d.min(dim=1)
    return dist.numpy(), idx.numpy()


def nearest_by_class(query: np.ndarray, query_labels, reference: np.ndarray, reference_labels,
                     exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`nearest`, restricted to the same class; indices point into the whole reference.
    A query whose class has no reference rows gets NaN and -1."""
    query_labels, reference_labels = np.asarray(query_labels), np.asarray(reference_labels)
    dist, index = np.full(len(query), np.nan), np.full(len(query), -1, dtype=np.int64)
    for c in np.unique(query_labels):
        q, r = np.flatnonzero(query_labels == c), np.flatnonzero(reference_labels == c)
        if len(r) == 0:
            continue
        d, i = nearest(query[q], reference[r], exclude_self)
        dist[q], index[q] = d, np.where(i >= 0, r[np.clip(i, 0, None)], -1)
    return dist, index


def audit(train: np.ndarray, train_labels, synthetic: np.ndarray, synthetic_labels,
          quantile: float = DEFAULT_QUANTILE) -> tuple[pd.DataFrame, dict]:
    """(one row per synthetic image, summary). Rows: ``synthetic`` (index), ``train`` (index of the
    nearest training image, same class), ``distance``, ``ratio`` (distance over the class's median
    real-to-real distance) and ``flagged``. Summary: the threshold and the real-to-real distances."""
    if not 0 < quantile < 0.5:
        raise ValueError(f"quantile={quantile}: choose a small share of real-to-real distances, e.g. 0.01.")
    rr, _ = nearest_by_class(train, train_labels, train, train_labels, exclude_self=True)
    rr_ok = rr[np.isfinite(rr)]
    if len(rr_ok) == 0:
        raise ValueError("the memorization audit needs at least 2 training images in some class of the synthetic set.")
    threshold = float(min(np.quantile(rr_ok, quantile), np.median(rr_ok) * RATIO))
    d, idx = nearest_by_class(synthetic, synthetic_labels, train, train_labels)
    labels = np.asarray(train_labels)
    median_rr = {c: float(np.nanmedian(rr[labels == c])) if np.isfinite(rr[labels == c]).any() else np.nan
                 for c in np.unique(labels)}
    syn_labels = np.asarray(synthetic_labels)
    ratio = np.array([di / median_rr.get(c, np.nan) if median_rr.get(c) else np.nan for di, c in zip(d, syn_labels)])
    table = pd.DataFrame({"synthetic": np.arange(len(synthetic)), "train": idx, "class": syn_labels,
                          "distance": d, "ratio": ratio, "flagged": d < threshold})
    summary = {"threshold": threshold, "quantile": quantile, "real_real_median": float(np.median(rr_ok)),
               "real_real": rr_ok, "flagged": int(table["flagged"].sum()), "n": len(table)}
    return table, summary
