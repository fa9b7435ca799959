"""A study's cells as stored: MLflow child runs of the study's parent run, and each cell's test
predictions (``<out>/cells/<cell>/predictions.json``, also logged as the run's artifact).

- :func:`child_runs` / :func:`finished_cells`: the parent's child runs; a FINISHED child with a
  cell key (``medaug.study.cell``) means that cell is done; :func:`unfinished_cell_run`: the child a
  retried cell continues (one child per cell, whichever executor ran it).
- :func:`write_predictions` / :func:`read_predictions`: a cell's predicted and true class
  indices in test-split order, tagged with the test split's hash.
- :func:`collect_cells`: one row per finished cell (the latest run of a cell wins), the input of
  the tables in :mod:`core.study.results` (which reads no runs itself).

:mod:`core.study.run` writes what this module reads; it imports this module, never the reverse.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from core.study.grid import Cell

KIND_CELL = "study-cell"
TAG_CELL = "medaug.study.cell"
TAG_TEST_HASH = "medaug.study.test_hash"
PREDICTIONS_FILE = "predictions.json"
PREDICTIONS_FORMAT = "medaug-cell-predictions/1"


class TestSplitMismatch(ValueError):
    """A cell would be tested on a different test split than the study's."""


# --- MLflow: the parent run's children ----------------------------------------------------------

def child_runs(parent_run_id: str, kind: str = KIND_CELL) -> list:
    """The parent's child runs of ``kind`` (all states), oldest first."""
    from core import tracking

    c = tracking.client()
    parent = c.get_run(parent_run_id)
    runs, token = [], None
    while True:
        page = c.search_runs([parent.info.experiment_id],
                             filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}' and "
                                           f"tags.`{tracking.TAG_KIND}` = '{kind}'",
                             max_results=1000, order_by=["attributes.start_time ASC"], page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def finished_cells(parent_run_id: str) -> dict[str, object]:
    """Cell key -> its latest FINISHED child run."""
    done = {}
    for r in child_runs(parent_run_id):
        key = r.data.tags.get(TAG_CELL)
        if key and r.info.status == "FINISHED":
            done[key] = r
    return done


def unfinished_cell_run(parent_run_id: str, cell_key: str) -> str | None:
    """The latest child run of cell ``cell_key`` that did not finish (a worker killed mid-cell, a
    crash), or None. A retried or resumed cell continues that run instead of adding a second child
    (:func:`core.tracking.continue_run`), so a cell has one child run however often it was tried."""
    runs = [r for r in child_runs(parent_run_id) if r.data.tags.get(TAG_CELL) == cell_key]
    if any(r.info.status == "FINISHED" for r in runs):
        return None
    return runs[-1].info.run_id if runs else None


# --- a cell's test predictions ------------------------------------------------------------------

def write_predictions(path: Path, result, test_ids: list[str], test_hash: str) -> None:
    """The cell's test predictions for paired comparisons: predicted and true class indices in
    test-split order (the same order in every cell: the test hash guarantees it)."""
    import numpy as np

    from core.files import write_text_atomic

    probs = np.asarray(result.test_probs)
    data = {"format": PREDICTIONS_FORMAT, "test_hash": test_hash, "class_names": list(result.class_names),
            "y_pred": probs.argmax(axis=1).astype(int).tolist(), "y_true": np.asarray(result.test_labels).astype(int).tolist(),
            "test_ids": list(test_ids)}
    write_text_atomic(path, json.dumps(data))


def read_predictions(path: Path) -> dict:
    data = json.loads(Path(path).read_text())
    if data.get("format") != PREDICTIONS_FORMAT:
        raise ValueError(f"{path}: not a cell's predictions file ({PREDICTIONS_FORMAT!r} expected).")
    return data


# --- the cells of a study, for the results table --------------------------------------------------

def collect_cells(parent_run_id: str, out: str | Path | None = None, predictions: bool = True):
    """Finished cells of the study ``parent_run_id`` from MLflow, one row each (a DataFrame): set,
    network, seed, the test metrics and their bootstrap CIs, per-class sensitivity (``sens:<class>``),
    the generator's fidelity (``gen_*``) and, with ``predictions``, the test predictions (``y_pred``,
    ``y_true``). ``out``: the study folder holding ``cells/<cell>/predictions.json`` (default: the
    parent run's ``medaug.out`` tag); a cell whose file is not there is read from its run's artifact.
    Raises :class:`TestSplitMismatch` when the cells were tested on different test splits."""
    import numpy as np
    import pandas as pd

    from core.study.results import GEN_COLUMNS, safe_name

    folder = Path(out) if out else _study_folder(parent_run_id)
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
        for col in GEN_COLUMNS:
            row[col] = m.get(col, math.nan)
        usable = t.get("medaug.gen.usable")
        row["gen_usable"] = None if usable is None else usable == "true"
        row["gen_reason"] = t.get("medaug.gen.reason", "")
        if predictions:
            pred = _cell_predictions(r, folder, row["cell"])
            row["y_pred"] = None if pred is None else np.asarray(pred["y_pred"], np.int64)
            row["y_true"] = None if pred is None else np.asarray(pred["y_true"], np.int64)
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    hashes = sorted(set(df["test_hash"]))
    if len(hashes) != 1:
        raise TestSplitMismatch(f"study {parent_run_id}: its cells were tested on {len(hashes)} different test "
                                f"splits ({', '.join(map(str, hashes))}); the table would compare unlike things.")
    return df.sort_values(["set", "network", "seed"]).reset_index(drop=True)


def _study_folder(parent_run_id: str) -> Path | None:
    from core import tracking

    try:
        out = tracking.client().get_run(parent_run_id).data.tags.get("medaug.out")
    except Exception:  # noqa: BLE001 -- the table still comes from the artifacts
        return None
    return Path(out) if out else None


def _cell_predictions(run, folder: Path | None, cell_key: str) -> dict | None:
    """The cell's predictions file: local (same test hash) first, else the run's artifact, else None."""
    test_hash = run.data.tags.get(TAG_TEST_HASH)
    if folder is not None:
        set_key, network, seed = cell_key.split("|")
        path = folder / "cells" / Cell(set_key, network, int(seed[1:])).slug / PREDICTIONS_FILE
        try:
            data = read_predictions(path)
            if data.get("test_hash") == test_hash:
                return data
        except (OSError, ValueError):
            pass
    try:
        from core.tracking import download_artifact

        data = read_predictions(download_artifact(run.info.run_id, PREDICTIONS_FILE))
        return data if data.get("test_hash") == test_hash else None
    except Exception:  # noqa: BLE001 -- an older cell without predictions: the table falls back to means
        return None
