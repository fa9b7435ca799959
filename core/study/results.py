"""The results table, rebuilt from MLflow whatever ran the cells (this process, a shell loop of
``run-cell``, a cluster queue).

- :func:`collect_cells`: one row per finished child run of a study (the latest run of a cell
  wins): set, network, seed, the test metrics, their bootstrap CIs and per-class sensitivity.
- :func:`results_table`: one row per (set, network): the mean of the metric over seeds and its
  95% CI, and Δ against real-only of the same network.
    * 2+ seeds: Student-t interval over seeds, mean ± t(0.975, n-1) · sd / √n; Δ is the mean of
      the per-seed differences (set − real, same seed) with its own t interval.
    * 1 seed: the cell's stratified-bootstrap CI on the test set (from ``evaluate``); Δ has
      no interval (it would need paired predictions).
- :func:`wide_table`: rows = augmentation sets, columns = networks, text cells ``mean [lo, hi]
  Δ ±d`` (what the page and the CSV show).
- :func:`delta_sensitivity`: per-class Δ sensitivity (set − real, mean over seeds) for a heatmap.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from core.study.grid import AUG_SETS, BASELINE

TABLE_COLUMNS = ("set", "set_label", "network", "n", "mean", "sd", "ci_low", "ci_high", "ci_method", "delta",
                 "delta_ci_low", "delta_ci_high", "text")


def safe_name(name: str) -> str:
    """A class name as it appears in MLflow metric keys (core.classify.evaluate.flat_metrics)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def collect_cells(parent_run_id: str) -> pd.DataFrame:
    """Finished cells of the study ``parent_run_id`` from MLflow, one row each."""
    from core.study.run import TAG_CELL, TAG_TEST_HASH, TestSplitMismatch, finished_cells

    rows = []
    for r in finished_cells(parent_run_id).values():
        t, m, p = r.data.tags, r.data.metrics, r.data.params
        classes = json.loads(p.get("class_names", "[]"))
        row = {"cell": t[TAG_CELL], "set": t.get("medaug.study.set"), "network": t.get("medaug.study.network"),
               "seed": int(t.get("medaug.study.seed", 0)), "run_id": r.info.run_id, "test_hash": t.get(TAG_TEST_HASH),
               "state": t.get("medaug.study.state"), "best_epoch": int(float(t.get("medaug.study.best_epoch", 0))),
               "n_train": int(p.get("n_train", 0)), "classes": classes}
        for metric in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auroc"):
            row[metric] = m.get(f"test_{metric}", math.nan)
            row[f"{metric}_ci_low"] = m.get(f"test_{metric}_ci_lo", math.nan)
            row[f"{metric}_ci_high"] = m.get(f"test_{metric}_ci_hi", math.nan)
        for c in classes:
            row[f"sens:{c}"] = m.get(f"test_sensitivity.{safe_name(c)}", math.nan)
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    hashes = sorted(set(df["test_hash"]))
    if len(hashes) != 1:
        raise TestSplitMismatch(f"study {parent_run_id}: its cells were tested on {len(hashes)} different test "
                                f"splits ({', '.join(map(str, hashes))}); the table would compare unlike things.")
    return df.sort_values(["set", "network", "seed"]).reset_index(drop=True)


def t_interval(values) -> tuple[float, float, float, float]:
    """(mean, sd, low, high) of a 95% Student-t interval; sd and the bounds are NaN for n < 2."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if len(v) == 0:
        return math.nan, math.nan, math.nan, math.nan
    mean = float(v.mean())
    if len(v) < 2:
        return mean, math.nan, math.nan, math.nan
    from scipy.stats import t

    sd = float(v.std(ddof=1))
    half = float(t.ppf(0.975, len(v) - 1)) * sd / math.sqrt(len(v))
    return mean, sd, mean - half, mean + half


def results_table(cells: pd.DataFrame, metric: str = "macro_f1", order=None, baseline: str = BASELINE) -> pd.DataFrame:
    """The long results table (:data:`TABLE_COLUMNS`), one row per (set, network), sets in ``order``."""
    if cells.empty:
        return pd.DataFrame(columns=list(TABLE_COLUMNS))
    if metric not in cells.columns:
        raise ValueError(f"metric={metric!r}: not in the study's cells; choose one of "
                         f"accuracy, balanced_accuracy, macro_f1, macro_auroc.")
    sets = [s for s in (order or AUG_SETS) if s in set(cells["set"])]
    sets += sorted(set(cells["set"]) - set(sets))
    networks = list(dict.fromkeys(cells["network"]))
    rows = []
    for net in networks:
        base = cells[(cells["network"] == net) & (cells["set"] == baseline)].set_index("seed")[metric]
        for s in sets:
            sub = cells[(cells["network"] == net) & (cells["set"] == s)]
            if sub.empty:
                continue
            mean, sd, lo, hi = t_interval(sub[metric])
            if len(sub) == 1:
                lo, hi = float(sub[f"{metric}_ci_low"].iloc[0]), float(sub[f"{metric}_ci_high"].iloc[0])
                method = "bootstrap 95% CI on the test set (1 seed)"
            else:
                method = f"t interval over {len(sub)} seeds"
            paired = sub.set_index("seed")[metric].sub(base).dropna()
            if s == baseline or base.empty:
                d, d_lo, d_hi = (0.0 if s == baseline else math.nan), math.nan, math.nan
            else:
                d, _, d_lo, d_hi = t_interval(paired)
            rows.append({"set": s, "set_label": AUG_SETS[s].label if s in AUG_SETS else s, "network": net,
                         "n": len(sub), "mean": mean, "sd": sd, "ci_low": lo, "ci_high": hi, "ci_method": method,
                         "delta": d, "delta_ci_low": d_lo, "delta_ci_high": d_hi,
                         "text": cell_text(mean, lo, hi, d, s == baseline)})
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


def cell_text(mean: float, lo: float, hi: float, delta: float, is_baseline: bool) -> str:
    if not math.isfinite(mean):
        return "—"
    text = f"{mean:.3f}"
    if math.isfinite(lo) and math.isfinite(hi):
        text += f" [{lo:.3f}, {hi:.3f}]"
    if is_baseline:
        return text + " (baseline)"
    if math.isfinite(delta):
        text += f" Δ {delta:+.3f}"
    return text


def wide_table(table: pd.DataFrame, column: str = "text") -> pd.DataFrame:
    """Rows = augmentation sets (labels, table order), columns = networks."""
    if table.empty:
        return pd.DataFrame()
    wide = table.pivot(index="set_label", columns="network", values=column)
    labels = list(dict.fromkeys(table["set_label"]))
    return wide.reindex(index=labels, columns=list(dict.fromkeys(table["network"]))).rename_axis(
        index="augmentation set", columns=None)


def table_text(table: pd.DataFrame, metric: str) -> str:
    if table.empty:
        return "(no finished cells)"
    method = "; ".join(sorted(set(table["ci_method"])))
    return f"{metric}: mean [95% CI] and Δ against real only ({method})\n" + wide_table(table).to_string()


def delta_sensitivity(cells: pd.DataFrame, network: str, baseline: str = BASELINE, order=None) -> pd.DataFrame:
    """Rows = augmentation sets other than the baseline, columns = classes: mean sensitivity of
    the set minus that of real only (same network, mean over seeds)."""
    sub = cells[cells["network"] == network]
    if sub.empty:
        return pd.DataFrame()
    classes = list(sub["classes"].iloc[0])
    cols = [f"sens:{c}" for c in classes]
    means = sub.groupby("set")[cols].mean()
    if baseline not in means.index:
        return pd.DataFrame()
    delta = means.drop(index=baseline) - means.loc[baseline]
    sets = [s for s in (order or AUG_SETS) if s in delta.index] + sorted(set(delta.index) - set(order or AUG_SETS))
    delta = delta.reindex(sets)
    delta.columns = classes
    delta.index = [AUG_SETS[s].label if s in AUG_SETS else s for s in delta.index]
    return delta


def write_results(table: pd.DataFrame, path) -> tuple[str, str]:
    """``path`` (the wide table as shown) and ``<stem>_long.csv`` (every number)."""
    from pathlib import Path

    path = Path(path)
    wide_table(table).to_csv(path)
    long_path = path.with_name(path.stem + "_long.csv")
    table.to_csv(long_path, index=False)
    return str(path), str(long_path)
