"""The balancing planner: how many synthetic images each class needs to reach a target.

Counts come from the training split only (synthetic images never enter val or test).
"""
from __future__ import annotations

import pandas as pd

PLAN_COLUMNS = ("class", "real", "synthetic", "after", "synthetic_per_real")


def resolve_target(counts: dict[str, int], target: int | str) -> int:
    """``"max"`` (the largest class), ``"median"``, or a whole number of images per class."""
    present = sorted(c for c in counts.values() if c > 0)
    if not present:
        raise ValueError("the training split has no images, so there is nothing to balance.")
    if target == "max":
        return present[-1]
    if target == "median":
        return present[len(present) // 2]
    try:
        value = int(target)
    except (TypeError, ValueError):
        raise ValueError(f"target={target!r}: use 'max', 'median' or a whole number of images per class.") from None
    if not 1 <= value <= 1_000_000:
        raise ValueError(f"target={value}: choose between 1 and 1000000 images per class.")
    return value


def class_balance_plan(counts: dict[str, int], target: int | str = "max", classes: list[str] | None = None,
                       max_synthetic_per_real: float | None = None) -> pd.DataFrame:
    """One row per class: real images, synthetic images to add, the count after, and the
    synthetic-to-real ratio. Only ``classes`` (default: all) are topped up; a class already at
    or above the target gets none. ``max_synthetic_per_real`` caps the synthetic count of
    tiny classes (a GAN trained on 5 images should not supply 500)."""
    goal = resolve_target(counts, target)
    unknown = sorted(set(classes or []) - set(counts))
    if unknown:
        raise ValueError(f"classes {unknown} are not in the dataset; choose from {sorted(counts)}.")
    if max_synthetic_per_real is not None and max_synthetic_per_real < 0:
        raise ValueError(f"max_synthetic_per_real={max_synthetic_per_real}: must be 0 or more.")
    rows = []
    for name, real in counts.items():
        need = max(0, goal - real) if classes is None or name in classes else 0
        if max_synthetic_per_real is not None:
            need = min(need, int(real * max_synthetic_per_real))
        rows.append({"class": name, "real": real, "synthetic": need, "after": real + need,
                     "synthetic_per_real": round(need / real, 2) if real else float("nan")})
    plan = pd.DataFrame(rows, columns=list(PLAN_COLUMNS))
    plan.attrs["target"] = goal
    return plan
