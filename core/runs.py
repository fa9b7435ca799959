"""Runs in the tracking store, for the Runs page and reports: list, filter, group, compare, manage.

Works for every job kind generically (params, metrics, tags, artifacts) and knows one artifact
layout in particular: per-epoch images such as the GAN's ``grids/epoch_0007.png``.

- :func:`list_runs` reads a whole experiment set once into a table; :func:`filter_runs` filters
  that table in pandas (kind, dataset hash, tags, date, status, name), so a page fetches once and
  filters as the user clicks.
- :func:`group_runs` orders studies: a parent, then its children (``mlflow.parentRunId``).
- :func:`params_table`, :func:`metrics_summary` and :func:`curves` compare selected runs.
- :func:`epoch_images` finds image series with an epoch in their file names; :func:`image_at`
  picks each run's image for one shared epoch.
- :func:`rename_run`, :func:`delete_runs` (MLflow's soft delete: the run goes to the trash) and
  :func:`restore_runs`.
- :func:`run_summaries`: the runs of one job kind as plain :class:`RunSummary` records, for the run
  pickers of the GAN and Classify pages (pages never read MLflow objects).
- :func:`gan_grids` / :func:`folder_grids`: a GAN run's per-epoch sample grids, from its job folder
  or its artifacts (the GAN page and the quality job's fidelity over training read them so).

mlflow is reached only through :mod:`core.tracking`, lazily.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pandas as pd

from core import tracking

PARENT_TAG = "mlflow.parentRunId"
TRASH_NOTE = ("MLflow deletes softly: a deleted run moves to the trash, where it can be restored "
              "(Runs page > Trash). It is erased only when someone runs `mlflow gc` on the store.")
LIST_COLUMNS = ["run_id", "name", "kind", "status", "start_time", "duration_s", "dataset_id", "dataset_hash",
                "code_version", "parent_run_id", "experiment", "experiment_id", "lifecycle", "tags", "params",
                "metrics"]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif")
_EPOCH_RE = re.compile(r"epoch[_\-]?(\d+)", re.IGNORECASE)
GRIDS_DIR = "grids"   # core.gan.train writes <out>/grids/epoch_XXXX.png (and logs them there); not imported: torch

# Metric names whose best value is the largest (substring match, lower case); the rest of the
# known names are best when smallest. A metric matching neither has no "best".
_HIGHER_BETTER = ("acc", "auc", "f1", "precision", "recall", "ssim", "psnr", "iou", "dice", "kappa",
                  "sensitivity", "specificity", "img_per_s", "throughput")
_LOWER_BETTER = ("loss", "error", "err", "fid", "kid", "mse", "mae", "rmse", "seconds", "time_s", "memoriz")


# --- the store -----------------------------------------------------------------------------

def store_exists() -> bool:
    """False when the local SQLite store has never been created (nothing was ever logged).
    Remote stores count as existing; use :func:`core.tracking.check_store` to reach them."""
    uri = tracking.tracking_uri()
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).is_file()
    return True


def experiments() -> list[tuple[str, str]]:
    """(experiment id, name) of the active experiments, ``[]`` for a store never created."""
    if not store_exists():
        return []
    return [(e.experiment_id, e.name) for e in tracking.client().search_experiments()]


# --- listing -------------------------------------------------------------------------------

def list_runs(experiment_names: Iterable[str] | None = None, deleted: bool = False,
              max_results: int = 10_000) -> pd.DataFrame:
    """Every run of the experiments (all active ones by default), newest first, one row per
    run with the columns of :data:`LIST_COLUMNS`; ``deleted=True`` lists the trash instead.
    ``status`` is MLflow's, except DIED for a RUNNING run whose process is gone (kill -9, a crash;
    :func:`core.tracking.shown_status`).
    ``tags``, ``params`` and ``metrics`` hold dicts (latest metric values)."""
    exps = experiments()
    if experiment_names is not None:
        wanted = set(experiment_names)
        exps = [(i, n) for i, n in exps if n in wanted]
    if not exps:
        return _frame([])
    names = dict(exps)
    c = tracking.client()
    rows, token = [], None
    while len(rows) < max_results:
        page, token = tracking.search_runs_page(list(names), deleted=deleted, page_token=token, mlflow_client=c,
                                                max_results=min(1000, max_results - len(rows)))
        rows += [_row(r, names) for r in page]
        if not token:
            break
    return _frame(rows)


def _row(r, exp_names: Mapping[str, str]) -> dict:
    info, tags = r.info, r.data.tags
    end = info.end_time or None
    return {"run_id": info.run_id, "name": info.run_name or info.run_id[:8],
            "kind": tags.get(tracking.TAG_KIND, ""),
            "status": tracking.shown_status(info.status, tags),   # DIED: RUNNING, but its process is gone
            "start_time": info.start_time, "duration_s": (end - info.start_time) / 1000 if end else None,
            "dataset_id": tags.get(tracking.TAG_DATASET_ID, ""), "dataset_hash": tags.get(tracking.TAG_DATASET_HASH, ""),
            "code_version": tags.get(tracking.TAG_CODE_VERSION, ""), "parent_run_id": tags.get(PARENT_TAG, ""),
            "experiment": exp_names.get(info.experiment_id, info.experiment_id), "experiment_id": info.experiment_id,
            "lifecycle": info.lifecycle_stage, "tags": dict(tags), "params": dict(r.data.params),
            "metrics": dict(r.data.metrics)}


def _frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=LIST_COLUMNS)
    df["start_time"] = pd.to_datetime(df["start_time"].astype("float64"), unit="ms", utc=True)
    df["duration_s"] = df["duration_s"].astype("float64")
    return df


@dataclass(frozen=True)
class RunSummary:
    """One run as a page's run picker shows it: plain values, no MLflow objects."""
    run_id: str
    name: str                  # the run name (the id's first characters when it has none)
    status: str                # as shown: DIED for a RUNNING run whose process is gone
    dataset_id: str = ""       # tag medaug.dataset_id
    tags: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)


def run_summaries(kind: str, max_results: int = 100) -> list[RunSummary]:
    """The runs of one job kind (tag medaug.kind), newest first, as :class:`RunSummary`; ``[]`` when
    there are none (or the store was never created)."""
    if not store_exists():
        return []
    return [summary_of(r) for r in tracking.search_runs(kind, max_results=max_results)]


def summary_of(r) -> RunSummary:
    """An MLflow Run as a :class:`RunSummary`."""
    info, tags = r.info, dict(r.data.tags)
    return RunSummary(run_id=info.run_id, name=info.run_name or info.run_id[:8],
                      status=tracking.shown_status(info.status, tags),
                      dataset_id=tags.get(tracking.TAG_DATASET_ID, ""), tags=tags, params=dict(r.data.params))


@dataclass(frozen=True)
class RunFilter:
    """What the listing keeps; an empty field keeps everything."""
    kinds: tuple[str, ...] = ()             # job kinds (tag medaug.kind), any of them
    dataset_hashes: tuple[str, ...] = ()    # dataset content hashes (or their first characters)
    tags: Mapping[str, str] = field(default_factory=dict)  # tag -> value ("" = the tag is present)
    since: date | None = None               # first day kept (UTC), inclusive
    until: date | None = None               # last day kept (UTC), inclusive
    statuses: tuple[str, ...] = ()          # FINISHED, FAILED, KILLED, RUNNING, SCHEDULED, DIED (RUNNING, process gone)
    text: str = ""                          # case-insensitive substring of the name or run id
    experiments: tuple[str, ...] = ()       # experiment names
    keep_family: bool = True                # keep a kept child's parent (and a kept parent's children)


def filter_runs(runs: pd.DataFrame, f: RunFilter) -> pd.DataFrame:
    """The rows of a :func:`list_runs` table that pass ``f``. With ``keep_family`` a study stays
    whole: the children of a kept parent and the parent of a kept child stay too."""
    keep = pd.Series(True, index=runs.index)
    if f.kinds:
        keep &= runs["kind"].isin(f.kinds)
    if f.dataset_hashes:
        keep &= runs["dataset_hash"].map(lambda h: any(h and h.startswith(p) for p in f.dataset_hashes))
    for key, value in f.tags.items():
        keep &= runs["tags"].map(lambda t, k=key, v=value: k in t and (v == "" or t[k] == v))
    if f.since is not None:
        keep &= runs["start_time"] >= pd.Timestamp(f.since, tz="UTC")
    if f.until is not None:
        keep &= runs["start_time"] < pd.Timestamp(f.until, tz="UTC") + pd.Timedelta(days=1)
    if f.statuses:
        keep &= runs["status"].isin(f.statuses)
    if f.experiments:
        keep &= runs["experiment"].isin(f.experiments)
    if f.text:
        t = f.text.lower()
        keep &= runs["name"].str.lower().str.contains(t, regex=False) | runs["run_id"].str.startswith(t)
    if f.keep_family and keep.any() and not keep.all():
        kept_ids = set(runs.loc[keep, "run_id"])
        parents = set(runs.loc[keep, "parent_run_id"]) - {""}
        keep |= runs["run_id"].isin(parents) | runs["parent_run_id"].isin(kept_ids)
    return runs[keep]


def parse_tag_filter(text: str) -> dict[str, str]:
    """``"team=spine, seed"`` -> ``{"team": "spine", "seed": ""}`` (a tag alone: it is present)."""
    out: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, _, value = part.partition("=")
        if not key.strip():
            raise ValueError(f"Tag filter {part!r} has no tag name; write tag=value or tag, separated by commas.")
        out[key.strip()] = value.strip()
    return out


def filter_choices(runs: pd.DataFrame) -> dict[str, list[str]]:
    """The values a filter can offer, from a :func:`list_runs` table."""
    tag_keys = sorted({k for t in runs["tags"] for k in t if not k.startswith("mlflow.")})
    return {"experiments": sorted(runs["experiment"].unique()),
            "kinds": sorted(k for k in runs["kind"].unique() if k),
            "dataset_hashes": sorted(h for h in runs["dataset_hash"].unique() if h),
            "statuses": sorted(runs["status"].unique()), "tag_keys": tag_keys}


def group_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Studies grouped: each parent followed by its children (oldest first, nested studies
    deeper), the top-level runs newest first. Adds ``level`` (0 for a parent or lone run, 1 for
    a child, 2 for a grandchild...), ``group`` (the top-level run id) and ``children`` (how many
    direct children a run has in the table)."""
    if runs.empty:
        return runs.assign(level=pd.Series(dtype=int), group=pd.Series(dtype=str), children=pd.Series(dtype=int))
    ids = set(runs["run_id"])
    kids: dict[str, list] = {}
    by_start = runs.sort_values("start_time")
    for idx, parent in zip(by_start.index, by_start["parent_run_id"]):
        if parent in ids:
            kids.setdefault(parent, []).append(idx)
    run_id = runs["run_id"]
    roots = runs[~runs["parent_run_id"].isin(ids)].sort_values("start_time", ascending=False)
    rows, level, group, n_kids = [], [], [], []
    for idx in roots.index:
        top = run_id[idx]
        stack = [(idx, 0)]
        while stack:
            i, depth = stack.pop()
            family = kids.get(run_id[i], [])
            rows.append(i)
            level.append(depth)
            group.append(top)
            n_kids.append(len(family))
            stack += [(k, depth + 1) for k in reversed(family)]
    placed = set(rows)
    for i in runs.index.difference(list(placed), sort=False):  # parent tags in a loop: list them flat
        rows.append(i)
        level.append(0)
        group.append(run_id[i])
        n_kids.append(0)
    return runs.loc[rows].assign(level=level, group=group, children=n_kids)


def display_table(grouped: pd.DataFrame) -> pd.DataFrame:
    """The listing as shown: children indented under their parent, short hashes, local times."""
    if grouped.empty:
        return pd.DataFrame(columns=["run", "kind", "status", "started", "duration_s", "dataset", "dataset_hash",
                                     "code_version", "run_id"])
    name = [("    " * lvl + "↳ " if lvl else "") + n + (f"  ({c} runs)" if c else "")
            for n, lvl, c in zip(grouped["name"], grouped["level"], grouped["children"])]
    return pd.DataFrame({"run": name, "kind": grouped["kind"].to_numpy(), "status": grouped["status"].to_numpy(),
                         "started": grouped["start_time"].dt.tz_convert(None).dt.floor("s").to_numpy(),
                         "duration_s": grouped["duration_s"].round(1).to_numpy(),
                         "dataset": grouped["dataset_id"].to_numpy(),
                         "dataset_hash": grouped["dataset_hash"].str[:12].to_numpy(),
                         "code_version": grouped["code_version"].str[:12].to_numpy(),
                         "run_id": grouped["run_id"].to_numpy()})


def with_children(runs: pd.DataFrame, run_ids: Iterable[str]) -> list[str]:
    """``run_ids`` plus the children (in ``runs``) of any of them, in the order given."""
    out = list(dict.fromkeys(run_ids))
    for rid in list(out):
        out += [c for c in runs.loc[runs["parent_run_id"] == rid, "run_id"] if c not in out]
    return out


def get_runs(run_ids: Iterable[str]) -> pd.DataFrame:
    """:func:`list_runs` rows for these run ids (any experiment, deleted or not), in that order.
    An unknown id raises ValueError naming it."""
    c = tracking.client()
    rows = []
    names: dict[str, str] = {}
    for rid in run_ids:
        try:
            r = c.get_run(rid)
        except Exception as e:  # noqa: BLE001 (MlflowException or a server error: the id is not there)
            raise ValueError(f"Run {rid!r} is not in the tracking store {tracking.tracking_uri()} "
                             f"({type(e).__name__}); copy the run id from the Runs page or the MLflow UI.") from None
        if r.info.experiment_id not in names:
            names[r.info.experiment_id] = c.get_experiment(r.info.experiment_id).name
        rows.append(_row(r, names))
    return _frame(rows)


def children_of(run_id: str) -> list[str]:
    """Run ids of the (active) children of a run, oldest first."""
    c = tracking.client()
    parent = c.get_run(run_id)
    found = c.search_runs([parent.info.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{run_id}'",
                          max_results=10_000, order_by=["attributes.start_time ASC"])
    return [r.info.run_id for r in found]


def run_labels(runs: pd.DataFrame) -> dict[str, str]:
    """run id -> a short unique label, the name with the id's first characters."""
    return {rid: f"{name} ({rid[:6]})" for rid, name in zip(runs["run_id"], runs["name"])}


# --- comparing -----------------------------------------------------------------------------

def params_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Params of the runs side by side: one row per param, one column per run label; a param a
    run lacks is empty. Sorted so the params that differ come first."""
    labels = run_labels(runs)
    table = pd.DataFrame({labels[rid]: pd.Series(p, dtype=object) for rid, p in zip(runs["run_id"], runs["params"])})
    table = table.sort_index()
    diff = differing(table)
    return pd.concat([table[diff], table[~diff]]).fillna("")


def differing(table: pd.DataFrame) -> pd.Series:
    """True for the rows of a params table whose values are not all the same (a missing value
    differs from any value)."""
    if table.shape[1] < 2:
        return pd.Series(False, index=table.index)
    filled = table.astype(object).where(table.notna(), "\0missing")
    return filled.nunique(axis=1, dropna=False) > 1


def metric_goal(key: str) -> str | None:
    """'max' or 'min' when the metric's name says which is better, else None."""
    k = key.lower()
    if any(w in k for w in _HIGHER_BETTER):
        return "max"
    if any(w in k for w in _LOWER_BETTER):
        return "min"
    return None


def histories(run_ids: Iterable[str], keys: Iterable[str] | None = None) -> pd.DataFrame:
    """Long table (run_id, key, step, value) of the runs' metric histories."""
    frames = []
    for rid in run_ids:
        h = tracking.metric_history(rid, list(keys) if keys is not None else None)
        frames.append(h.assign(run_id=rid)[["run_id", "key", "step", "value"]])
    if not frames:
        return pd.DataFrame(columns=["run_id", "key", "step", "value"])
    return pd.concat(frames, ignore_index=True)


def epoch_of_steps(steps: pd.Series, params: Mapping[str, str], epoch_history: pd.DataFrame | None) -> pd.Series:
    """Steps as (fractional) epochs: by the run's ``steps_per_epoch`` param, else by its logged
    ``epoch`` metric (epoch e ends at the step it was logged at), else the step is the epoch."""
    import numpy as np

    try:
        spe = float(params.get("steps_per_epoch", ""))
    except ValueError:
        spe = 0.0
    if spe > 0:
        return steps / spe
    if epoch_history is not None and len(epoch_history):
        e = epoch_history.sort_values("step")
        xs = np.concatenate([[0.0], e["step"].to_numpy(float)])
        ys = np.concatenate([[0.0], e["value"].to_numpy(float)])
        return pd.Series(np.interp(steps.to_numpy(float), xs, ys), index=steps.index)
    return steps.astype(float)


def curves(runs: pd.DataFrame, keys: Iterable[str] | None = None) -> pd.DataFrame:
    """Long table (run_id, run, key, step, epoch, value) of the runs' metrics, for overlays."""
    keys = list(keys) if keys is not None else None
    want = None if keys is None else sorted(set(keys) | {"epoch"})
    h = histories(runs["run_id"], None)
    if want is not None:
        h = h[h["key"].isin(want)]
    labels = run_labels(runs)
    params = dict(zip(runs["run_id"], runs["params"]))
    parts = []
    for rid, g in h.groupby("run_id", sort=False):
        epochs = g[g["key"] == "epoch"]
        g = g.assign(epoch=epoch_of_steps(g["step"], params.get(rid, {}), epochs), run=labels.get(rid, rid))
        parts.append(g if keys is None or "epoch" in keys else g[g["key"] != "epoch"])
    cols = ["run_id", "run", "key", "step", "epoch", "value"]
    if not parts:
        return pd.DataFrame(columns=cols)
    return pd.concat(parts, ignore_index=True)[cols]


def metrics_summary(runs: pd.DataFrame, history: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (run, metric): the final value (at the last step), the best value and its
    step (by :func:`metric_goal`; empty when the name does not say), and the number of points.
    Rows follow the order of ``runs``; the ``epoch`` bookkeeping metric is left out."""
    h = history if history is not None else histories(runs["run_id"])
    h = h[h["key"] != "epoch"]  # the step -> epoch map, not a result
    labels = run_labels(runs)
    order = {rid: i for i, rid in enumerate(runs["run_id"])}
    rows = []
    for (rid, key), g in sorted(h.groupby(["run_id", "key"]), key=lambda kv: (order.get(kv[0][0], 0), kv[0][1])):
        g = g.sort_values("step")
        goal = metric_goal(key)
        best_i = (g["value"].idxmax() if goal == "max" else g["value"].idxmin()) if goal else None
        rows.append({"run": labels.get(rid, rid), "run_id": rid, "metric": key, "final": g["value"].iloc[-1],
                     "final_step": int(g["step"].iloc[-1]), "goal": goal or "",
                     "best": g.loc[best_i, "value"] if best_i is not None else float("nan"),
                     "best_step": int(g.loc[best_i, "step"]) if best_i is not None else None, "points": len(g)})
    out = pd.DataFrame(rows, columns=["run", "run_id", "metric", "final", "final_step", "goal", "best",
                                      "best_step", "points"])
    return out.astype({"best_step": "Int64"})


def metrics_wide(summary: pd.DataFrame) -> pd.DataFrame:
    """:func:`metrics_summary` as metric rows and (run, final/best) columns."""
    if summary.empty:
        return pd.DataFrame()
    wide = summary.pivot_table(index="metric", columns="run", values=["final", "best"], aggfunc="first",
                               dropna=False, sort=False)
    wide = wide.swaplevel(axis=1)
    runs = list(dict.fromkeys(summary["run"]))
    return wide.reindex(columns=pd.MultiIndex.from_product([runs, ["final", "best"]]))


# --- images per epoch ----------------------------------------------------------------------

def list_artifacts_tree(run_id: str, depth: int = 2) -> list[str]:
    """Artifact file paths of a run, folders opened up to ``depth`` levels."""
    c = tracking.client()
    out, todo = [], [("", 0)]
    while todo:
        folder, d = todo.pop()
        for f in c.list_artifacts(run_id, folder or None):
            if f.is_dir:
                if d + 1 < depth:
                    todo.append((f.path, d + 1))
            else:
                out.append(f.path)
    return sorted(out)


def epoch_of_path(path: str) -> int | None:
    """The epoch in a file name (``epoch_0007.png`` -> 7), None when it names none."""
    m = _EPOCH_RE.search(Path(path).stem)
    return int(m.group(1)) if m else None


def epoch_series(paths: Iterable[str]) -> list[tuple[int, str]]:
    """(epoch, path) of the images among ``paths`` with an epoch in their names, epochs ascending
    (one path per epoch: the last given wins)."""
    found: dict[int, str] = {}
    for p in paths:
        e = epoch_of_path(str(p))
        if e is not None and str(p).lower().endswith(IMAGE_SUFFIXES):
            found[e] = str(p)
    return sorted(found.items())


def epoch_images(run_id: str, paths: Iterable[str] | None = None) -> dict[str, list[tuple[int, str]]]:
    """Image series with an epoch in the file names, by folder: ``{"grids": [(1, "grids/epoch_0001.png"),
    ...]}``, epochs ascending. The GAN logs its fixed-noise grids this way (core.gan.train)."""
    paths = list_artifacts_tree(run_id) if paths is None else paths
    folders: dict[str, list[str]] = {}
    for p in paths:
        folders.setdefault(str(Path(p).parent).strip("."), []).append(p)
    series = {k: epoch_series(v) for k, v in sorted(folders.items())}
    return {k: v for k, v in series.items() if v}


def folder_grids(folder: str | Path) -> list[tuple[int, str]]:
    """(epoch, file path) of the per-epoch sample grids in a train-gan output folder
    (``<folder>/grids/epoch_XXXX.png``), epochs ascending; ``[]`` when it has none."""
    grids = Path(folder).expanduser() / GRIDS_DIR
    return epoch_series(str(p) for p in grids.iterdir() if p.is_file()) if grids.is_dir() else []


def gan_grids(job_dir: str | Path | None = None, run_id: str | None = None) -> list[tuple[int, str]]:
    """(epoch, path) of a GAN run's per-epoch fixed-noise grids: files of its job folder while that
    holds a grids folder, else the run's artifact paths (``grids/epoch_0001.png``, for
    :func:`artifact_bytes` or :func:`core.tracking.download_artifact`); ``[]`` with neither."""
    if job_dir is not None and (Path(job_dir) / GRIDS_DIR).is_dir():
        return folder_grids(job_dir)
    if run_id:
        return epoch_series(tracking.list_artifacts(run_id, GRIDS_DIR))
    return []


def other_images(paths: Iterable[str]) -> list[str]:
    """Image artifacts that are not part of an epoch series (e.g. an augment run's samples.png)."""
    return [p for p in paths if p.lower().endswith(IMAGE_SUFFIXES) and epoch_of_path(p) is None]


def shared_epochs(series: Iterable[list[tuple[int, str]]]) -> list[int]:
    """The epochs of a shared slider: every epoch any run has an image for, ascending."""
    return sorted({e for s in series for e, _ in s})


def image_at(series: list[tuple[int, str]], epoch: int) -> tuple[int, str] | None:
    """A run's image for the shared ``epoch``: that epoch, else the latest one before it, else
    (the run started later) its first one; None for an empty series."""
    if not series:
        return None
    before = [(e, p) for e, p in series if e <= epoch]
    return before[-1] if before else series[0]


def artifact_bytes(run_id: str, path: str) -> bytes:
    """One artifact's content (downloaded into a temporary folder, which is then removed)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="medaug-art-") as tmp:
        return tracking.download_artifact(run_id, path, tmp).read_bytes()


# --- managing ------------------------------------------------------------------------------

def rename_run(run_id: str, new_name: str) -> None:
    name = new_name.strip()
    if not name:
        raise ValueError("A run name cannot be empty; type a new name.")
    if len(name) > 250:
        raise ValueError(f"A run name has at most 250 characters (got {len(name)}); shorten it.")
    tracking.client().update_run(run_id, name=name)


def delete_runs(run_ids: Iterable[str]) -> list[str]:
    """Move runs to MLflow's trash (a soft delete, see :data:`TRASH_NOTE`); returns their ids."""
    c = tracking.client()
    done = []
    for rid in run_ids:
        c.delete_run(rid)
        done.append(rid)
    return done


def restore_runs(run_ids: Iterable[str]) -> list[str]:
    """Bring runs back from the trash."""
    c = tracking.client()
    done = []
    for rid in run_ids:
        c.restore_run(rid)
        done.append(rid)
    return done


def mlflow_ui_url(port: int = 5000) -> str:
    """Where MLflow's own UI for this store is: the server itself for an http store, else the
    local server that :func:`core.tracking.mlflow_ui_command` starts."""
    uri = tracking.tracking_uri()
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/")
    return f"http://127.0.0.1:{port}"


def mlflow_compare_url(runs: pd.DataFrame, port: int = 5000) -> str:
    """MLflow UI link comparing these runs (or showing the one run)."""
    import json
    import urllib.parse

    base = mlflow_ui_url(port)
    if len(runs) == 1:
        r = runs.iloc[0]
        return f"{base}/#/experiments/{r['experiment_id']}/runs/{r['run_id']}"
    q = urllib.parse.urlencode({"runs": json.dumps(list(runs["run_id"])),
                                "experiments": json.dumps(sorted(set(runs["experiment_id"])))})
    return f"{base}/#/compare-runs?{q}"

