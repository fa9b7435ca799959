"""The study's answer in plain words, from its results table (:mod:`core.study.results`).

:func:`verdict_text` gives a few sentences: what was run (dataset, synthetic or not, seeds, test
images), every set that helped or hurt the table's metric with its paired Δ, 95% CI and Holm p,
per-class sensitivity changes that passed Holm, the sets with no detectable difference and the
smallest Δ the split could detect, TSTR rows read as utility, and unusable generators. Numbers are
the table's, rounded (Δ and CIs to 2 decimals); whichever way they go, they are reported as measured.
Pages and the HTML report open with these sentences; nothing here imports streamlit.
"""
from __future__ import annotations

import math

import pandas as pd

from core.study.grid import AUG_SETS, DIFFUSION

METRIC_NAMES = {"macro_f1": "macro-F1", "balanced_accuracy": "balanced accuracy", "accuracy": "accuracy",
                "macro_auroc": "macro AUROC"}


def fmt_p(p: float) -> str:
    if not isinstance(p, (int, float)) or not math.isfinite(p):
        return "p n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def fmt_delta(d: float, lo: float, hi: float) -> str:
    text = f"{d:+.2f}"
    if math.isfinite(lo) and math.isfinite(hi):
        text += f" [{lo:+.2f}, {hi:+.2f}]"
    return text


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _generator_name(variant: str) -> str:
    """"DCGAN", "WGAN-GP" (acronyms), but "diffusion" (a word)."""
    return variant if variant == DIFFUSION else variant.upper()


def _label(set_key: str) -> str:
    if set_key in AUG_SETS:
        aug = AUG_SETS[set_key]
        if aug.kind == "tstr":
            return f"training on {_generator_name(aug.variant)} images alone (TSTR)"
        if aug.kind == "gan":
            return f"{aug.label.replace(' synthetic', '')} images"
        if aug.kind == "classic":
            return f"the {aug.label} copies" if aug.op else "the classic pipeline"
        return aug.label
    return set_key


def _kind(set_key: str) -> str:
    return AUG_SETS[set_key].kind if set_key in AUG_SETS else "other"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def verdict_text(table: pd.DataFrame, dataset_meta: dict | None = None, sensitivity: pd.DataFrame | None = None,
                 alpha: float = 0.05) -> list[str]:
    """A few sentences answering the study's question from ``table`` (:func:`results_table`),
    ``dataset_meta`` (a dataset's ``meta``: name, kind, synthetic) and the per-class ``sensitivity``
    table (:func:`sensitivity_table`), when given."""
    if table is None or table.empty:
        return ["No finished cells yet: the study has no answer."]
    meta = dataset_meta or {}
    metric = str(table["metric"].iloc[0]) if "metric" in table else "macro_f1"
    mname = METRIC_NAMES.get(metric, metric)
    seeds = int(table["n_seeds"].max())
    n_test = table["n_test"].dropna()
    where = meta.get("name") or meta.get("id") or "this dataset"
    nature = "synthetic data" if meta.get("synthetic") else "real data"
    head = f"On {where} ({nature}), {seeds} seed{'s' if seeds != 1 else ''}"
    if len(n_test):
        head += f", {int(n_test.iloc[0])} test images"
    networks = list(dict.fromkeys(table["network"]))
    tested = int(table["p_value"].notna().sum())
    out = [head + f": Δ against real only, paired on the same test images, {mname}"
           + (f", Holm across {tested} comparison{'s' if tested != 1 else ''}." if tested else ".")]
    for net in networks:
        sub = table[(table["network"] == net) & (table["verdict_stat"] != "baseline")]
        lead = f"{net}: " if len(networks) > 1 else ""
        base = table[(table["network"] == net) & (table["verdict_stat"] == "baseline")]
        base_mean = float(base["mean"].iloc[0]) if len(base) else math.nan
        unusable = sub[sub["verdict"].str.startswith("generator unusable")]
        judged = sub.drop(unusable.index)
        tstr = judged[judged["set"].str.startswith("tstr")]
        judged = judged.drop(tstr.index)
        for r in judged[judged["verdict_stat"].isin(("helps", "hurts"))].itertuples():
            verb = "raised" if r.delta > 0 else "lowered"
            out.append(f"{lead}{_cap(_label(r.set))} {verb} {mname} by {fmt_delta(r.delta, r.delta_lo, r.delta_hi)} "
                       f"({fmt_p(r.p_holm)}, Holm; {mname} {r.mean:.2f} against {base_mean:.2f}).")
        if sensitivity is not None and not sensitivity.empty:
            sens = sensitivity[(sensitivity["network"] == net) & sensitivity["verdict"].isin(("helps", "hurts"))
                               & ~sensitivity["set"].isin(set(unusable["set"]))]
            for r in sens.to_dict("records"):
                verb = "raised" if r["delta"] > 0 else "lowered"
                out.append(f"{lead}{_cap(_label(r['set']))} {verb} {r['class']} sensitivity by "
                           f"{fmt_delta(r['delta'], r['delta_lo'], r['delta_hi'])} ({fmt_p(r['p_holm'])}, Holm across "
                           f"classes and sets).")
        null = judged[judged["verdict_stat"] == "no detectable difference"]
        for kind, noun in (("classic", "classic operation"), ("gan", "generator set"), ("classic+gan", "classic + generator set"),
                           ("other", "other set")):
            group = null[[_kind(s) == kind for s in null["set"]]]
            if group.empty:
                continue
            total = judged[[_kind(s) == kind for s in judged["set"]]]
            mde = group["mde"].dropna()
            bound = f" (smallest detectable Δ {mde.max():.2f})" if len(mde) else ""
            if len(group) == len(total) and len(group) > 1:
                out.append(f"{lead}No {noun} changed {mname} detectably{bound}.")
            else:
                out.append(f"{lead}{_cap(_join([_label(s) for s in group['set']]))} did not change {mname} "
                           f"detectably{bound}.")
        untested = judged[judged["verdict_stat"].str.startswith("not tested")]
        if len(untested):
            why = untested["verdict_stat"].iloc[0].removeprefix("not tested (").rstrip(")")
            out.append(f"{lead}Not tested ({why}): {_join([_label(s) for s in untested['set']])}; their Δ is a "
                       f"difference of seed means.")
        for r in tstr.itertuples():
            variant = _generator_name(AUG_SETS[r.set].variant) if r.set in AUG_SETS else r.set
            out.append(f"{lead}TSTR (train on {variant} images only, test on real): {mname} {r.mean:.2f} against "
                       f"{base_mean:.2f} for real only, Δ {fmt_delta(r.delta, r.delta_lo, r.delta_hi)} "
                       f"({fmt_p(r.p_holm)}, Holm): {r.verdict.removeprefix('utility: ')}.")
        for r in unusable.itertuples():
            why = r.gen_reason or "it failed its fidelity check"
            out.append(f"{lead}{_cap(_label(r.set))}: the generator was unusable ({why}); the row is not judged "
                       f"(measured Δ {fmt_delta(r.delta, r.delta_lo, r.delta_hi)}).")
    return out


def study_answer(run_id: str, metric: str | None = None, out=None, per_class: bool = True) -> dict:
    """Everything the study's answer needs, from MLflow (and the study folder's predictions):
    {"cells", "table", "sensitivity", "verdict", "metric"}. ``metric``: default the study's own;
    ``per_class`` False skips the per-class sensitivity tests (a live view, ~0.1 s per class and set)."""
    import json

    from core import tracking
    from core.study.results import results_table, sensitivity_table
    from core.study.store import collect_cells

    params = tracking.client().get_run(run_id).data.params
    metric = metric or params.get("metric") or "macro_f1"
    try:
        order = tuple(json.loads(params["sets"])) if params.get("sets") else None
    except (TypeError, ValueError):
        order = None
    cells = collect_cells(run_id, out)
    table = results_table(cells, metric, order=order)
    sens = sensitivity_table(cells, order=order) if per_class else None
    return {"cells": cells, "table": table, "sensitivity": sens, "metric": metric,
            "verdict": verdict_text(table, _dataset_meta(params.get("data")), sens)}


def _dataset_meta(data) -> dict:
    """Name and nature (synthetic or not) of the study's dataset folder; {} when it is gone."""
    if not data:
        return {}
    try:
        from core.data.datasets import load_dataset

        ds = load_dataset(data)
        return {**ds.meta, "name": ds.name}
    except Exception:  # noqa: BLE001 -- the verdict then names no dataset
        return {}
