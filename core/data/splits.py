"""Train/val/test splits by study: every image of a study lands on the same side."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

DEFAULT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}


def study_split(df: pd.DataFrame, fractions: dict[str, float] | None = None, seed: int = 0) -> pd.Series:
    """Assign a split to every row, grouped by ``study_id`` and stratified by class.

    Each study is stratified by its rarest label (so scarce classes reach every split).
    Within a stratum, studies are shuffled with ``seed`` and dealt to the split that is
    furthest below its target share of images. Returns a Series aligned with ``df``.
    """
    fractions = dict(fractions or DEFAULT_FRACTIONS)
    if set(fractions) - {"train", "val", "test"} or any(v < 0 for v in fractions.values()):
        raise ValueError(f"fractions must be non-negative and keyed by train/val/test, got {fractions}.")
    total = sum(fractions.values())
    if total <= 0:
        raise ValueError("fractions must not all be zero.")
    fractions = {k: v / total for k, v in fractions.items() if v > 0}

    freq = Counter(lab for labels in df["labels"] for lab in (labels or ["?"]))
    studies: dict[str, list[int]] = {}
    stratum: dict[str, str] = {}
    for pos, (study, label, labels) in enumerate(zip(df["study_id"], df["label"], df["labels"])):
        studies.setdefault(study, []).append(pos)
        rarest = min(labels or [label], key=lambda lab: (freq.get(lab, 0), lab))
        if study not in stratum or freq.get(rarest, 0) < freq.get(stratum[study], 0):
            stratum[study] = rarest

    rng = np.random.default_rng(seed)
    out = np.empty(len(df), dtype=object)
    names = list(fractions)
    for s in sorted(set(stratum.values())):
        members = sorted(st for st, lab in stratum.items() if lab == s)
        rng.shuffle(members)
        got = dict.fromkeys(names, 0)
        for study in members:
            n = sum(got.values()) + len(studies[study])
            # the split with the largest shortfall against its target gets the study
            name = max(names, key=lambda k: (fractions[k] * n - got[k], fractions[k]))
            got[name] += len(studies[study])
            out[studies[study]] = name
    return pd.Series(out, index=df.index, name="split")
