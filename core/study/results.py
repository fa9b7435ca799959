"""The results table over a study's cells, whatever ran them (this process, a shell loop of
``run-cell``, a cluster queue). Pure tables and statistics: the cells come in as a DataFrame
(:func:`core.study.store.collect_cells` reads them from MLflow: one row per finished cell with
set, network, seed, the test metrics, their bootstrap CIs, per-class sensitivity, the
generator's fidelity ``gen_*`` and the per-image test predictions ``y_pred``/``y_true``); nothing
here reads runs.

- :func:`results_table`: one row per (set, network) (:data:`TABLE_COLUMNS`):
    * ``mean`` of the metric over seeds with a 95% CI (``ci_lo``/``ci_hi``): a Student-t interval
      over seeds (2+ seeds) or the cell's stratified-bootstrap CI on the test set (1 seed);
    * ``delta`` against real only of the same network, PAIRED image by image on the shared test
      split and seeds (:func:`core.study.stats.compare_cells`, ONE call over the whole table, so
      ``p_holm`` is Holm-adjusted across all its comparisons), with its bootstrap CI
      (``delta_lo``/``delta_hi``), the sign-flip ``p_value``, ``mde`` (smallest Δ detectable at 80%
      power) and ``seed_sd`` (the spread of the per-seed Δ, not inside the CI);
    * ``verdict``: ``helps`` / ``hurts`` / ``no detectable difference``; ``generator unusable: <reason>``
      when the row's generator failed its fidelity check; for TSTR rows (``set`` starting with
      ``tstr``) the same test read as utility (``utility: below real only (expected for TSTR)``, ...).
      ``verdict_stat`` always holds the statistical verdict;
    * GAN rows carry the generator's ``gen_kid``, ``gen_fid``, ``gen_precision``, ``gen_recall``
      (+ ``_lo``/``_hi``) and ``gen_usable``.
  Cells without predictions (older studies) fall back to the difference of the seed means, no CI.
- :func:`sensitivity_table`: the same paired Δ for each class's sensitivity (Holm across every
  class x set x network row); :func:`delta_sensitivity` pivots it for the heatmap.
- :func:`wide_table`: rows = augmentation sets, columns = networks, text cells ``mean [lo, hi]
  Δ ±d`` (what the page and the wide CSV show).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from core.study.grid import AUG_SETS, BASELINE

GEN_COLUMNS = tuple(f"gen_{k}{s}" for k in ("kid", "fid", "precision", "recall") for s in ("", "_lo", "_hi"))
TABLE_COLUMNS = ("set", "set_label", "network", "metric", "n_seeds", "n_test", "mean", "sd", "ci_lo", "ci_hi",
                 "ci_method", "delta", "delta_lo", "delta_hi", "p_value", "p_holm", "verdict", "verdict_stat",
                 "delta_method", "seed_sd", "mde", *GEN_COLUMNS, "gen_usable", "gen_reason", "text")
SENSITIVITY_COLUMNS = ("set", "set_label", "network", "class", "n_seeds", "n_test", "mean", "baseline_mean", "delta",
                       "delta_lo", "delta_hi", "p_value", "p_holm", "verdict", "seed_sd", "mde")
UNUSABLE = "generator unusable"
METRIC_BOUNDS = (0.0, 1.0)   # every metric of core.study.grid.METRICS is a proportion or an AUROC


def is_tstr(set_key: str) -> bool:
    return str(set_key).startswith("tstr")


def safe_name(name: str) -> str:
    """A class name as it appears in MLflow metric keys (core.classify.evaluate.flat_metrics)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def t_interval(values, bounds: tuple[float, float] = (-math.inf, math.inf)) -> tuple[float, float, float, float]:
    """(mean, sd, low, high) of a 95% Student-t interval; sd and the bounds are NaN for n < 2. The
    interval is cut to ``bounds``, the values the metric can take (every table metric lies in [0, 1]):
    that removes only impossible values, so it covers a possible true value exactly when the uncut
    interval does."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if len(v) == 0:
        return math.nan, math.nan, math.nan, math.nan
    mean = float(v.mean())
    if len(v) < 2:
        return mean, math.nan, math.nan, math.nan
    from scipy.stats import t

    sd = float(v.std(ddof=1))
    half = float(t.ppf(0.975, len(v) - 1)) * sd / math.sqrt(len(v))
    return mean, sd, max(mean - half, bounds[0]), min(mean + half, bounds[1])


def _ordered_sets(cells: pd.DataFrame, order) -> list[str]:
    sets = [s for s in (order or AUG_SETS) if s in set(cells["set"])]
    return sets + sorted(set(cells["set"]) - set(sets))


def _paired_inputs(cells: pd.DataFrame, pairs: list[tuple[tuple, tuple]]):
    """(y_true, {(set, network, seeds): (S, n) predictions}, [(base key, cell key)]) for the pairs
    ((base set, network), (set, network)) whose both cells have predictions for common seeds."""
    y_true, preds, keyed = None, {}, []
    have = cells[cells["y_pred"].notna()] if "y_pred" in cells else cells.iloc[0:0]
    for (bs, net), (s, _) in pairs:
        a = have[(have["set"] == bs) & (have["network"] == net)].set_index("seed")
        b = have[(have["set"] == s) & (have["network"] == net)].set_index("seed")
        seeds = tuple(sorted(set(a.index) & set(b.index)))
        if not seeds:
            continue
        if y_true is None:
            y_true = np.asarray(a["y_true"].iloc[0], np.int64)
        ka, kb = (bs, net, seeds), (s, net, seeds)
        for key, frame in ((ka, a), (kb, b)):
            if key not in preds:
                stack = np.stack([np.asarray(frame.loc[seed, "y_pred"], np.int64) for seed in seeds])
                if stack.shape[1] != len(y_true):
                    raise ValueError(f"cell {key[0]}|{key[1]}: {stack.shape[1]} test predictions, the study's test "
                                     f"split has {len(y_true)}; re-run the cell.")
                preds[key] = stack
        keyed.append(((bs, net), (s, net), ka, kb))
    return y_true, preds, keyed


def _gen_fields(sub: pd.DataFrame) -> dict:
    out = {}
    for col in GEN_COLUMNS:
        v = sub[col].dropna() if col in sub else pd.Series(dtype=float)
        out[col] = float(v.iloc[-1]) if len(v) else math.nan
    usable = sub["gen_usable"].dropna() if "gen_usable" in sub else pd.Series(dtype=object)
    out["gen_usable"] = bool(usable.iloc[-1]) if len(usable) else None
    reasons = [r for r in (sub["gen_reason"] if "gen_reason" in sub else []) if r]
    out["gen_reason"] = reasons[-1] if reasons else ""
    return out


def read_verdict(set_key: str, stat_verdict: str, gen_usable, gen_reason: str = "") -> str:
    """The row's verdict in words: an unusable generator first, TSTR rows as utility."""
    if gen_usable is False:
        return f"{UNUSABLE}: {gen_reason}" if gen_reason else UNUSABLE
    if is_tstr(set_key):
        return {"helps": "utility: above real only", "hurts": "utility: below real only (expected for TSTR)",
                "no detectable difference": "utility: on par with real only"}.get(stat_verdict, stat_verdict)
    return stat_verdict


def results_table(cells: pd.DataFrame, metric: str = "macro_f1", order=None, baseline: str = BASELINE, *,
                  n_boot: int = 2000, n_perm: int = 2000, seed: int = 0) -> pd.DataFrame:
    """The long results table (:data:`TABLE_COLUMNS`), one row per (set, network), sets in ``order``."""
    from core.study import stats

    if cells.empty:
        return pd.DataFrame(columns=list(TABLE_COLUMNS))
    if metric not in cells.columns:
        raise ValueError(f"metric={metric!r}: not in the study's cells; choose one of "
                         f"accuracy, balanced_accuracy, macro_f1, macro_auroc.")
    sets = _ordered_sets(cells, order)
    networks = list(dict.fromkeys(cells["network"]))
    pairs = [((baseline, net), (s, net)) for net in networks for s in sets if s != baseline
             and not cells[(cells["network"] == net) & (cells["set"] == s)].empty
             and not cells[(cells["network"] == net) & (cells["set"] == baseline)].empty]
    compared = {}
    if metric in stats.METRICS:   # macro_auroc needs probabilities: it keeps the difference of means
        y_true, preds, keyed = _paired_inputs(cells, pairs)
        if keyed:
            rows = stats.compare_cells(y_true, preds, [(ka, kb) for _, _, ka, kb in keyed], metric, n_boot=n_boot,
                                       n_perm=n_perm, seed=seed)
            compared = {cell: r for (_, cell, _, _), r in zip(keyed, rows)}
    n_test = len(next(iter(v for v in cells.get("y_true", pd.Series(dtype=object)) if v is not None), []))
    rows = []
    for net in networks:
        base = cells[(cells["network"] == net) & (cells["set"] == baseline)].set_index("seed")[metric]
        for s in sets:
            sub = cells[(cells["network"] == net) & (cells["set"] == s)]
            if sub.empty:
                continue
            mean, sd, lo, hi = t_interval(sub[metric], METRIC_BOUNDS)
            if len(sub) == 1:
                lo, hi = float(sub[f"{metric}_ci_low"].iloc[0]), float(sub[f"{metric}_ci_high"].iloc[0])
                method = "bootstrap 95% CI on the test set (1 seed)"
            else:
                method = f"t interval over {len(sub)} seeds"
            row = {"set": s, "set_label": AUG_SETS[s].label if s in AUG_SETS else s, "network": net,
                   "metric": metric, "n_seeds": len(sub), "n_test": n_test or math.nan, "mean": mean, "sd": sd,
                   "ci_lo": lo, "ci_hi": hi, "ci_method": method, "delta": math.nan, "delta_lo": math.nan,
                   "delta_hi": math.nan, "p_value": math.nan, "p_holm": math.nan, "verdict_stat": "",
                   "delta_method": "", "seed_sd": math.nan, "mde": math.nan, **_gen_fields(sub)}
            r = compared.get((s, net))
            if s == baseline:
                row.update(delta=0.0, verdict_stat="baseline")
            elif r is not None:
                row.update(delta=r["delta"], delta_lo=r["ci_lo"], delta_hi=r["ci_hi"], p_value=r["p_value"],
                           p_holm=r["p_holm"], verdict_stat=r["verdict"], seed_sd=r["seed_sd"], mde=r["mde"],
                           n_seeds=r["n_seeds"])
                row["delta_method"] = stats.CI_METHOD
            elif not base.empty:   # no predictions (older cells) or a metric without a paired test
                paired = sub.set_index("seed")[metric].sub(base).dropna()
                row["delta"] = float(paired.mean()) if len(paired) else math.nan
                why = "no paired predictions" if metric in stats.METRICS else f"{metric} needs probabilities"
                row["verdict_stat"] = f"not tested ({why})"
                row["delta_method"] = "difference of seed means, not tested"
            row["verdict"] = row["verdict_stat"] if s == baseline else read_verdict(
                s, row["verdict_stat"], row["gen_usable"], row["gen_reason"])
            row["text"] = cell_text(mean, lo, hi, row["delta"], s == baseline, row["delta_lo"], row["delta_hi"])
            rows.append(row)
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


def sensitivity_table(cells: pd.DataFrame, baseline: str = BASELINE, order=None, *, n_boot: int = 2000,
                      n_perm: int = 2000, seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
    """One row per (set, network, class): paired Δ sensitivity against real only with its bootstrap CI,
    sign-flip p, Holm across every row of this table, verdict and mde (:data:`SENSITIVITY_COLUMNS`)."""
    from core.study import stats

    if cells.empty or "y_pred" not in cells:
        return pd.DataFrame(columns=list(SENSITIVITY_COLUMNS))
    sets = [s for s in _ordered_sets(cells, order) if s != baseline]
    networks = list(dict.fromkeys(cells["network"]))
    pairs = [((baseline, net), (s, net)) for net in networks for s in sets]
    y_true, preds, keyed = _paired_inputs(cells, pairs)
    if not keyed:
        return pd.DataFrame(columns=list(SENSITIVITY_COLUMNS))
    classes = list(cells["classes"].iloc[0])
    present = set(np.unique(y_true).tolist())
    n_tests = sum(1 for _ in keyed) * len(present)
    rows = []
    for i, ((_, net), (s, _), ka, kb) in enumerate(keyed):
        for k, name in enumerate(classes):
            if k not in present:
                continue
            r = stats.paired_delta(y_true, preds[ka], preds[kb], ("sensitivity", k), n_boot=n_boot, n_perm=n_perm,
                                   seed=seed + 7 * (i * len(classes) + k), alpha=alpha, n_comparisons=n_tests)
            rows.append({"set": s, "set_label": AUG_SETS[s].label if s in AUG_SETS else s, "network": net,
                         "class": name, "n_seeds": r["n_seeds"], "n_test": r["n_test"], "mean": r["mean_b"],
                         "baseline_mean": r["mean_a"], "delta": r["delta"], "delta_lo": r["ci_lo"],
                         "delta_hi": r["ci_hi"], "p_value": r["p_value"], "seed_sd": r["seed_sd"], "mde": r["mde"]})
    table = pd.DataFrame(rows, columns=[c for c in SENSITIVITY_COLUMNS if c not in ("p_holm", "verdict")])
    table["p_holm"] = stats.holm(table["p_value"].to_numpy())
    table["verdict"] = [stats.verdict(d, lo, hi, p, alpha) for d, lo, hi, p in
                        zip(table["delta"], table["delta_lo"], table["delta_hi"], table["p_holm"])]
    return table[list(SENSITIVITY_COLUMNS)]


def cell_text(mean: float, lo: float, hi: float, delta: float, is_baseline: bool, delta_lo: float = math.nan,
              delta_hi: float = math.nan) -> str:
    if not math.isfinite(mean):
        return "—"
    text = f"{mean:.3f}"
    if math.isfinite(lo) and math.isfinite(hi):
        text += f" [{lo:.3f}, {hi:.3f}]"
    if is_baseline:
        return text + " (baseline)"
    if math.isfinite(delta):
        text += f" Δ {delta:+.3f}"
        if math.isfinite(delta_lo) and math.isfinite(delta_hi):
            text += f" [{delta_lo:+.3f}, {delta_hi:+.3f}]"
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
    method += "; Δ: " + "; ".join(sorted(m for m in set(table["delta_method"]) if m))
    verdicts = table[table["verdict"] != "baseline"][["set", "network", "verdict", "p_holm", "mde"]]
    return (f"{metric}: mean [95% CI] and paired Δ [95% CI] against real only ({method})\n"
            + wide_table(table).to_string() + "\n" + verdicts.to_string(index=False, float_format="%.3g"))


def delta_sensitivity(cells: pd.DataFrame, network: str, baseline: str = BASELINE, order=None,
                      sensitivity: pd.DataFrame | None = None) -> pd.DataFrame:
    """Rows = augmentation sets other than the baseline (labels), columns = classes: paired Δ sensitivity
    against real only (same network; :func:`sensitivity_table`, or ``sensitivity`` when given). Cells
    without predictions fall back to the difference of the seed means."""
    sub = cells[cells["network"] == network]
    if sub.empty:
        return pd.DataFrame()
    classes = list(sub["classes"].iloc[0])
    if sensitivity is None and "y_pred" in sub and sub["y_pred"].notna().all():
        sensitivity = sensitivity_table(sub, baseline, order, n_boot=200, n_perm=200)
    if sensitivity is not None and not sensitivity.empty:
        own = sensitivity[sensitivity["network"] == network]
        delta = own.pivot(index="set", columns="class", values="delta")
    else:
        cols = [f"sens:{c}" for c in classes]
        means = sub.groupby("set")[cols].mean()
        if baseline not in means.index:
            return pd.DataFrame()
        delta = means.drop(index=baseline) - means.loc[baseline]
        delta.columns = classes
    sets = [s for s in (order or AUG_SETS) if s in delta.index] + sorted(set(delta.index) - set(order or AUG_SETS))
    delta = delta.reindex(index=sets, columns=[c for c in classes if c in delta.columns])
    delta.index = [AUG_SETS[s].label if s in AUG_SETS else s for s in delta.index]
    return delta


CSV_COLUMNS = tuple(c for c in TABLE_COLUMNS if c != "text")


def write_results(table: pd.DataFrame, path, sensitivity: pd.DataFrame | None = None) -> tuple[str, str]:
    """``path``: the table, one row per (set, network) with every number (:data:`CSV_COLUMNS`);
    ``<stem>_wide.csv``: the wide text table as shown (sets x networks); with ``sensitivity``, also
    ``<stem>_sensitivity.csv`` (:data:`SENSITIVITY_COLUMNS`). Returns (path, wide path)."""
    path = Path(path)
    table.reindex(columns=list(CSV_COLUMNS)).to_csv(path, index=False)
    wide_path = path.with_name(path.stem + "_wide.csv")
    wide_table(table).to_csv(wide_path)
    if sensitivity is not None:
        sensitivity.to_csv(path.with_name(path.stem + "_sensitivity.csv"), index=False)
    return str(path), str(wide_path)
