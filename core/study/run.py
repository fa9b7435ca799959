"""Running a study: one parent MLflow run, one child run per cell, resume, and fan-out specs.

- The parent run (kind ``study``) holds the config as params and the tags ``medaug.study.key``
  (what the study computes) and ``medaug.study.test_hash``. ``<out>/study.json`` names it, so
  ``--resume`` reopens the same parent.
- Each cell is a child run (kind ``study-cell``, ``mlflow.parentRunId``) tagged with its cell key
  ``set|network|s<seed>`` (``medaug.study.cell``) and the hash of the test array it was tested on.
  A FINISHED child with a cell key means that cell is done: resume and ``run-cell`` skip it.
- The test split is the same array for every cell: each cell recomputes its hash and refuses
  to run when it differs from the study's (a changed dataset or cache), and the results table
  refuses to mix cells of different test hashes.
- ``plan_only``: the parent run is created and one JSON job spec per pending cell is written
  to ``<out>/specs/``, for a shell loop, a job array or a cluster queue to run with
  ``python -m core run-cell SPEC``. GANs are trained by the first cell that needs them (under a
  file lock in ``<out>/gans/``, so point every cell at a shared ``--out``).
- The cells' runs and test predictions are written and read through :mod:`core.study.store`;
  the tables come from :mod:`core.study.results` (pure: it never imports this module).
- ``<out>/status.json`` (atomic) keeps pages and job runners current: cells done/total, the
  current cell and its epoch, the ETA, the parent run id and, at the end, the results CSV.
- A tracking store lost mid-study: each cell trains on and spills what the store did not take
  (:class:`core.tracking.Run`); at the end the study sends those spills if the store is back, else it
  writes no table and ends ``failed``, naming each spill folder to replay and then ``--resume``
  (:func:`tracking_lost_message`).
"""
from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.study.grid import AUG_SETS, Cell, StudyConfig, cells
from core.study.store import (KIND_CELL, PREDICTIONS_FILE, TAG_CELL, TAG_TEST_HASH, TestSplitMismatch, collect_cells,
                              finished_cells, unfinished_cell_run, write_predictions)

KIND_STUDY = "study"
TAG_STUDY_KEY = "medaug.study.key"
TAG_MODE = "medaug.study.mode"
STUDY_FILE = "study.json"
SPEC_FORMAT = "medaug-study-cell/1"
RESULTS_FILE = "results.csv"
VERDICT_FILE = "verdict.txt"
GEN_KEYS = ("kid", "fid", "precision", "recall")   # a generator's fidelity, logged into each of its cells
Log = Callable[[str], None]


@dataclass(eq=False)
class Study:
    """An opened study: dataset, config, splits at the study's size, its folder and parent run."""

    ds: object
    config: StudyConfig
    splits: object
    out: Path
    run_id: str
    log: Log = print

    def __post_init__(self):
        self._gan_images: dict[tuple, tuple] = {}

    def gan_source(self, variant: str, mode: str = "plan", on_step=None):
        """The synthetic training images of ``variant`` (trained or taken from the cache once);
        ``mode`` "plan" (the planner's top-up) or "tstr" (as many per class as the real split)."""
        if (variant, mode) not in self._gan_images:
            from core.study.sets import gan_checkpoint, gan_images

            ckpt = gan_checkpoint(variant, self.splits, self.config, self.out / "gans", parent_run_id=self.run_id,
                                  log=self.log, on_step=on_step)
            self._gan_images[variant, mode] = gan_images(variant, ckpt, self.splits, self.config, self.out / "gans",
                                                         log=self.log, mode=mode)
        return self._gan_images[variant, mode]

    def gan_quality(self, variant: str) -> dict | None:
        """The fidelity of this study's ``variant`` GAN (``quality.json`` beside its checkpoint: kid, fid,
        precision, recall with _lo/_hi, usable, reason), or None when none was measured."""
        from core.study import sets

        reader = getattr(sets, "gan_quality", None)   # written by the GAN fidelity work; absent in older trees
        if reader is None:
            return None
        try:
            return reader(variant, self.splits, self.config, self.out / "gans")
        except (OSError, ValueError) as e:
            self.log(f"  {variant}: no generator quality ({e})")
            return None


def check_networks(config: StudyConfig) -> None:
    from core.classify.models import MODELS, input_size

    for n in config.networks:
        if n not in MODELS:
            raise ValueError(f"networks: unknown network {n!r}; choose from {', '.join(MODELS)}.")
        input_size(n, config.image_size)   # raises when image_size is below the network's minimum


def load_data(data: str | Path):
    from core.data.datasets import load_dataset

    path = Path(data).expanduser()
    if not path.exists():
        raise ValueError(f"--data {data}: no such folder; create a dataset with `python -m core phantom --out {data}` "
                         f"or point --data at a dataset folder.")
    return load_dataset(path)


def cell_epochs(config: StudyConfig, n_real: int, n_train: int) -> int:
    """Epochs of a cell: ``config.epochs``, or with ``equal_budget`` scaled so that every cell
    trains on about ``epochs x n_real`` images (at least one epoch)."""
    if not config.equal_budget:
        return config.epochs
    return max(1, round(config.epochs * n_real / max(n_train, 1)))


def classifier_config(config: StudyConfig, cell: Cell, epochs: int | None = None):
    from core.classify.train import ClassifierConfig

    return ClassifierConfig(model=cell.network, image_size=config.image_size, epochs=epochs or config.epochs,
                            batch_size=config.batch_size, lr=config.lr, weight_decay=config.weight_decay,
                            seed=cell.seed, balance=config.balance, patience=config.patience, device=config.device,
                            precision=config.precision, n_boot=config.n_boot,
                            shuffle_labels=config.shuffle_labels)


# --- opening a study --------------------------------------------------------------------------

def read_study_file(out: Path) -> dict | None:
    try:
        return json.loads((out / STUDY_FILE).read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as e:
        raise ValueError(f"{out / STUDY_FILE}: unreadable ({e}); delete the folder or choose another --out.") from e


def open_splits(ds, config: StudyConfig, log: Log):
    from core.study.sets import load_splits

    t0 = time.perf_counter()
    splits = load_splits(ds, config.image_size)
    log(f"{ds.id}: {len(splits.train_y)} train / {len(splits.val_y)} val / {len(splits.test_y)} test real images at "
        f"{config.image_size} px, {len(splits.class_names)} classes ({time.perf_counter() - t0:.1f} s); "
        f"test split hash {splits.test_hash}")
    return splits


# --- one cell -----------------------------------------------------------------------------------

def run_cell(study: Study, cell: Cell, *, on_epoch=None, on_stage=None, on_plan=None) -> dict:
    """Train and test one cell as a child run of the study; returns a short summary."""
    from core import tracking
    from core.classify.evaluate import flat_metrics
    from core.classify.train import train_classifier
    from core.study.sets import array_hash, training_set

    splits, config = study.splits, study.config
    aug = AUG_SETS[cell.set]
    variant = aug.variant or (config.combo_variant if aug.kind == "classic+gan" else None)
    if variant and on_stage:
        on_stage(f"GAN {variant}")
    x, y, added = training_set(cell.set, splits, config, cell.seed,
                               lambda v, mode="plan": study.gan_source(
                                   v, mode, on_step=(lambda s, t: on_stage(f"GAN {v} step {s}/{t}")) if on_stage
                                   else None))
    quality = study.gan_quality(variant) if variant else None
    cfg = classifier_config(config, cell, cell_epochs(config, len(splits.train_y), len(y)))
    if on_stage:
        on_stage(f"training {cell.key}: {len(y)} images, {cfg.epochs} epochs")
    if on_plan:
        on_plan(cfg.epochs)
    test_hash = array_hash(splits.test_x, splits.test_y, splits.class_names)
    folder = study.out / "cells" / cell.slug
    params = {**cfg.to_dict(), "set": cell.set, "set_label": aug.label, "network": cell.network, "n_train": len(y),
              "n_real_train": len(splits.train_y), "n_added": int(sum(added.values())),
              "class_names": json.dumps(splits.class_names)}
    tags = {TAG_CELL: cell.key, TAG_STUDY_KEY: config.key(), TAG_TEST_HASH: test_hash,
            "medaug.study.set": cell.set, "medaug.study.network": cell.network, "medaug.study.seed": cell.seed,
            "medaug.study.train_hash": array_hash(x, y, splits.class_names),
            "medaug.study.added": json.dumps(added)}
    if variant:
        tags["medaug.gen.variant"] = variant
    if quality:
        tags["medaug.gen.usable"] = str(bool(quality.get("usable", True))).lower()
        if quality.get("reason"):
            tags["medaug.gen.reason"] = str(quality["reason"])[:500]
    t0 = time.perf_counter()
    # a child left unfinished by an earlier try of this cell (a killed worker, a crash) is continued,
    # with the classifier's checkpoint: one child run per cell, whichever executor retried it
    tracking.check_store()   # a store lost before this cell began: one clear reason, not MLflow's retries
    previous = unfinished_cell_run(study.run_id, cell.key)
    with tracking.continue_run(previous, KIND_CELL, params, dataset=study.ds, parent_run_id=study.run_id, tags=tags,
                               run_name=f"{cell.set} · {cell.network} · s{cell.seed}") as run:
        if previous and run.run_id == previous:
            study.log(f"  {cell.key}: {run.note}")
        def epoch_cb(epoch: int, metrics: dict) -> None:
            run.log_metrics(metrics, epoch)
            if on_epoch:
                on_epoch(epoch, metrics)

        result = train_classifier(cfg, (x, y), (splits.val_x, splits.val_y), (splits.test_x, splits.test_y),
                                  splits.class_names, on_epoch=epoch_cb, checkpoint_dir=folder, resume=True)
        if not result.metrics:
            raise ValueError(f"cell {cell.key}: no weights to test ({result.message}).")
        run.log_metrics(flat_metrics(result.metrics), step=result.best_epoch)
        if quality:
            run.log_metrics(gen_metrics(quality), step=0)
        run.set_tags({"medaug.study.state": result.state, "medaug.study.best_epoch": result.best_epoch})
        folder.mkdir(parents=True, exist_ok=True)
        report = {"cell": cell.key, "state": result.state, "message": result.message, "best_epoch": result.best_epoch,
                  "seconds": result.seconds, "images_per_s": result.images_per_s, "added": added,
                  "test_hash": test_hash, "metrics": result.metrics, "history": result.history}
        if quality:
            report["generator"] = quality
        (folder / "metrics.json").write_text(json.dumps(report, indent=1, default=_json_default))
        run.log_artifact(folder / "metrics.json")
        write_predictions(folder / PREDICTIONS_FILE, result, splits.ids.get("test", []), test_hash)
        run.log_artifact(folder / PREDICTIONS_FILE)
    for name in ("checkpoint.pt", "model.pt"):   # weights are not kept (a paper grid would hold tens of GB)
        (folder / name).unlink(missing_ok=True)
    seconds = round(time.perf_counter() - t0, 2)
    metric = result.metrics.get(config.metric)
    return {"cell": cell.key, "run_id": run.run_id, "state": result.state, config.metric: metric,
            "best_epoch": result.best_epoch, "epochs": cfg.epochs, "seconds": seconds, "n_train": len(y),
            "spilled": str(run.spilled) if run.spilled else None}


def gen_metrics(quality: dict) -> dict[str, float]:
    """The generator's fidelity as ``gen_<key>`` metrics (finite numbers only)."""
    out = {}
    for key in GEN_KEYS:
        for suffix in ("", "_lo", "_hi"):
            v = quality.get(key + suffix)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                out[f"gen_{key}{suffix}"] = float(v)
    return out


def _json_default(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if hasattr(v, "tolist"):
        return v.tolist()
    return str(v)


# --- the whole study ----------------------------------------------------------------------------

def check_study(data: str | Path, config: StudyConfig, out: str | Path, resume: bool = False):
    """(dataset, study.json of ``out`` or None) once everything a study needs is checked: networks,
    given GAN checkpoints, the device, the dataset, and ``out`` (a new study, or the same one to
    resume). Writes nothing, so the CLI calls it before creating ``out`` or its status file."""
    from core.device import resolve_device
    from core.study.sets import resolve_checkpoint

    check_networks(config)
    for variant in config.gan_variants():   # given GAN checkpoints: fail before any training
        if variant in config.gan_checkpoints:
            resolve_checkpoint(config.gan_checkpoints[variant])
    resolve_device(config.device)
    ds = load_data(data)
    out = Path(out).expanduser().resolve()
    existing = read_study_file(out)
    if existing and not resume:
        raise ValueError(f"{out}: already holds study run {existing['study_run_id']}; pass --resume to continue it, "
                         f"or choose another --out.")
    if resume and not existing:
        raise ValueError(f"{out}: no study to resume ({STUDY_FILE} is missing); run without --resume first.")
    if existing and existing["study_key"] != config.key():
        raise ValueError(f"{out}: holds a study with other settings (key {existing['study_key']}, this one "
                         f"{config.key()}); resume it with the same preset and options, or choose another --out.")
    return ds, existing


EXECUTORS = ("local", "ray")


def run_study(data: str | Path, config: StudyConfig, out: str | Path, *, resume: bool = False,
              plan_only: bool = False, log: Log = print, status=None, executor: str = "local",
              ray_options: dict | None = None) -> dict:
    """Run every pending cell of ``config`` on ``data`` (or, with ``plan_only``, write their job
    specs), then rebuild the results table from MLflow. ``status``: an object with
    ``update(force=False, **fields)`` (the CLI's status.json writer).

    ``executor``: ``"local"`` runs the cells one after another in this process (a cell that raises
    stops the study); ``"ray"`` runs generators and cells as Ray tasks (:mod:`core.study.ray_executor`,
    ``ray_options``: address, max_retries, data), where a failed cell is recorded with its reason
    (``summary["failed"]``) and the others go on. Both executors open, resume and tabulate the study
    here, so they give the same table."""
    from core import tracking
    from core.files import write_json_atomic

    if executor not in EXECUTORS:
        raise ValueError(f"executor={executor!r}: choose one of {', '.join(EXECUTORS)}.")
    ds, existing = check_study(data, config, out, resume)
    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    status = status or _NoStatus()
    status.update(force=True, state="running", message="loading the dataset", out=str(out))
    splits = open_splits(ds, config, log)
    if existing and existing["test_hash"] != splits.test_hash:
        raise TestSplitMismatch(f"{out}: the study was planned on test split {existing['test_hash']}, but {ds.root} "
                                f"now gives {splits.test_hash}; the dataset or its split changed. Start a new study.")
    grid = cells(config)
    tags = {TAG_STUDY_KEY: config.key(), TAG_TEST_HASH: splits.test_hash, TAG_MODE: "plan-only" if plan_only else "run",
            "medaug.out": str(out), "medaug.study.cells": len(grid)}
    params = {**config.to_dict(), "data": str(ds.root), "n_cells": len(grid), "class_names": splits.class_names,
              "n_train": len(splits.train_y), "n_val": len(splits.val_y), "n_test": len(splits.test_y)}

    def tracking_trouble(message: str) -> None:   # the study run's own store trouble, in the study's log
        log(f"  tracking: {message}")

    if existing:
        ctx = tracking.reopen_run(existing["study_run_id"], on_error=tracking_trouble)
    else:
        ctx = tracking.start_run(KIND_STUDY, params, dataset=ds, tags=tags, on_error=tracking_trouble,
                                 run_name=f"study {ds.name} {len(grid)} cells")
    t_start = time.perf_counter()
    with ctx as parent:
        study = Study(ds, config, splits, out, parent.run_id, log)
        write_json_atomic(out / STUDY_FILE, {"format": "medaug-study/1", "study_run_id": parent.run_id,
                                             "study_key": config.key(), "data": str(ds.root),
                                             "dataset_id": ds.id, "test_hash": splits.test_hash,
                                             "config": config.to_dict(), "cells": [c.key for c in grid]})
        done = finished_cells(parent.run_id) if existing else {}
        pending = [c for c in grid if c.key not in done]
        log(f"study {parent.run_id} ({config.key()}): {len(grid)} cells, {len(done)} finished before, "
            f"{len(pending)} to run -> {out}")
        status.update(force=True, run_id=parent.run_id, cells_total=len(grid), cells_done=len(done),
                      cells_skipped=len(done), message=f"{len(pending)} cells to run")
        if plan_only:
            specs = write_specs(study, pending)
            status.update(force=True, state="finished", message=f"wrote {len(specs)} cell specs", eta_s=0.0)
            return {"study_run_id": parent.run_id, "study_key": config.key(), "out": str(out),
                    "cells": len(grid), "skipped": len(done), "specs": [str(p) for p in specs],
                    "specs_dir": str(out / "specs"), "test_hash": splits.test_hash}
        progress = CellProgress(grid, done, status, parent, config.metric, log, executor)
        if executor == "ray":
            from core.study.ray_executor import StudyHooks, run_cells_ray

            hooks = StudyHooks(Study, load_data, open_splits, run_cell)
            run_cells_ray(study, pending, progress, hooks, **(ray_options or {}))
        else:
            run_cells_here(study, pending, progress)
        spills, tabulate = list(progress.spilled.values()), True
        try:   # the table comes from MLflow: made only when the store holds every finished cell
            tracking.check_store()
            spills = send_spilled(spills, log)
            tabulate = not spills
        except tracking.StoreUnavailable as e:
            tabulate = False
            log(f"  tracking: {e}")
        csv = wide_csv = table = verdict = None
        if tabulate:
            csv, wide_csv, table, verdict = write_tables(study, parent)
    if parent.spilled:   # the study run's own data (cells_done, its end) the store did not take
        spills.append(str(parent.spilled))
    seconds = round(time.perf_counter() - t_start, 1)
    failed = dict(progress.failed)
    problems = [failed_message(failed, len(grid), out)] if failed else []
    if spills or not tabulate:
        problems.append(tracking_lost_message(spills, tabulate, parent.run_id, out))
    message = " ".join(problems) or None
    if message:
        status.update(force=True, state="failed", message=message, eta_s=0.0, results_csv=csv,
                      tracking_spilled=spills)
        log(message)
    else:
        status.update(force=True, state="finished", message=f"{len(grid)} cells in {seconds} s", eta_s=0.0,
                      results_csv=csv)
    return {"study_run_id": parent.run_id, "study_key": config.key(), "out": str(out), "cells": len(grid),
            "skipped": len(done), "ran": len(pending) - len(failed), "failed": failed, "executor": executor,
            "seconds": seconds, "results_csv": csv, "results_wide_csv": wide_csv,
            "metric": config.metric, "test_hash": splits.test_hash, "verdict": verdict,
            "table": summary_rows(table) if table is not None else [], "tracking_spilled": spills,
            "message": message}


def failed_message(failed: dict[str, str], total: int, out: Path) -> str:
    reasons = "; ".join(f"{key}: {reason}" for key, reason in failed.items())
    return (f"{len(failed)} of {total} cells failed ({reasons}). The table holds the other cells; "
            f"`python -m core study --resume --out {out}` with the same options runs the failed ones again.")


def send_spilled(folders: list[str], log: Log) -> list[str]:
    """Send what cells saved while the tracking store was lost (:func:`core.tracking.replay`), now that
    it answers again; returns the folders still unsent (one on another node's disk, say)."""
    from core import tracking

    unsent = []
    for folder in folders:
        try:
            done = tracking.replay(folder)
        except (ValueError, OSError) as e:   # StoreUnavailable is a ValueError
            log(f"  tracking: {folder} not sent: {e}")
            unsent.append(folder)
            continue
        log(f"  tracking: the store is back; sent what run {done['run_id']} saved in {folder}")
    return unsent


def tracking_lost_message(spills: list[str], tabulated: bool, run_id: str, out: Path) -> str:
    """What a study whose tracking store was lost (and not back, or not for everything) tells the user to run."""
    from core import tracking

    lost = (f"The tracking store {tracking.tracking_uri()} was lost: "
            + ("the table is written, but the study run's last tracking data is not in MLflow yet. " if tabulated else
               "every cell that ran trained to its end, but the table is made from MLflow, which does not hold them "
               "all yet, so it was not written. "))
    replays = "".join(f"`python -m core tracking-replay {folder}`, " for folder in spills)
    return (lost + f"Once the store is back, run {replays}then `python -m core study --resume --out {out}` with the "
            f"same options (it runs only the cells that did not finish, writes the table and logs it to study run "
            f"{run_id}), or `python -m core study-results --study {run_id}` for the table alone.")


def run_cells_here(study: Study, pending: list[Cell], progress: CellProgress) -> None:
    """The in-process executor: the pending cells one after another (a cell that raises stops it)."""
    config, status = study.config, progress.status
    for cell in pending:
        progress.started(cell)
        study.log(f"[{progress.n_finished + 1}/{len(progress.states)}] {cell.key}")
        status.update(force=True, current=cell.key, cell_epoch=0, cell_epochs=config.epochs,
                      message=f"cell {cell.key}")

        def on_epoch(epoch, m):
            status.update(cell_epoch=epoch, last={"val_macro_f1": round(m.get("val_macro_f1", math.nan), 4),
                                                  "train_loss": round(m.get("train_loss", math.nan), 4)})

        summary = run_cell(study, cell, on_epoch=on_epoch, on_stage=lambda text: status.update(message=text),
                           on_plan=lambda n: status.update(force=True, cell_epochs=n))
        progress.finished(cell, summary, current=None)


def write_tables(study: Study, parent) -> tuple:
    """The results table, its per-class Δ and the verdict from the study's finished cells in MLflow
    (whichever executor ran them), written to ``OUT`` and logged to the parent run."""
    from core.study.results import results_table, sensitivity_table, table_text, write_results
    from core.study.verdict import verdict_text

    out, config, ds = study.out, study.config, study.ds
    cells_df = collect_cells(parent.run_id, out)
    table = results_table(cells_df, config.metric, order=config.sets)
    sens = sensitivity_table(cells_df, order=config.sets)
    csv, wide_csv = write_results(table, out / RESULTS_FILE, sens)
    verdict = verdict_text(table, {**ds.meta, "name": ds.name}, sens)
    (out / VERDICT_FILE).write_text("\n".join(verdict) + "\n")
    for path in (csv, wide_csv, out / VERDICT_FILE):
        parent.log_artifact(path)
    if not sens.empty:
        parent.log_artifact(Path(csv).with_name(Path(csv).stem + "_sensitivity.csv"))
    study.log(table_text(table, config.metric))
    study.log("\n".join(verdict))
    return csv, wide_csv, table, verdict


CELL_STATES = ("pending", "running", "finished", "failed")


class CellProgress:
    """The cells' states (pending, running, finished, failed) and the ETA, for both executors: kept in
    ``status.json`` (``cell_states``, ``cells_pending`` / ``_running`` / ``_done`` / ``_failed``,
    ``failed`` reasons, ``eta_s``) and as the parent run's ``cells_done`` metric. The ETA is the wall
    time per finished cell so far (which counts the parallel cells) times the cells still to run."""

    def __init__(self, grid: list[Cell], done: dict, status, parent, metric: str, log: Log = print,
                 executor: str = "local"):
        self.states = {c.key: ("finished" if c.key in done else "pending") for c in grid}
        self.failed: dict[str, str] = {}
        self.spilled: dict[str, str] = {}   # cell -> the folder its unsent tracking data went to (a lost store)
        self.status, self.parent, self.metric, self.log = status, parent, metric, log
        self.n_before = len(done)
        self.ran = 0
        self.t0 = time.perf_counter()
        self.status.update(force=True, executor=executor, **self.fields())

    @property
    def n_finished(self) -> int:
        return sum(s == "finished" for s in self.states.values())

    def counts(self) -> dict[str, int]:
        return {state: sum(s == state for s in self.states.values()) for state in CELL_STATES}

    def eta_s(self) -> float | None:
        left = sum(s in ("pending", "running") for s in self.states.values())
        if not left:
            return 0.0
        if not self.ran:
            return None
        return round((time.perf_counter() - self.t0) / self.ran * left, 1)

    def fields(self) -> dict:
        n = self.counts()
        return {"cells_done": n["finished"], "cells_pending": n["pending"], "cells_running": n["running"],
                "cells_failed": n["failed"], "cell_states": dict(self.states), "failed": dict(self.failed),
                "eta_s": self.eta_s()}

    def started(self, cell: Cell) -> None:
        if self.states.get(cell.key) == "pending":
            self.states[cell.key] = "running"
            self.status.update(force=True, **self.fields())

    def finished(self, cell: Cell, summary: dict, **extra) -> None:
        self.states[cell.key] = "finished"
        self.ran += 1
        value = summary.get(self.metric)
        self.log(f"    {cell.key}: {self.metric} "
                 + (f"{value:.4f}" if isinstance(value, (int, float)) else str(value))
                 + f"  best epoch {summary.get('best_epoch')}  {summary.get('seconds', math.nan):.1f} s  "
                 f"({summary.get('n_train')} training images, {summary.get('epochs')} epochs)")
        if summary.get("spilled"):
            self.spilled[cell.key] = summary["spilled"]
        n = self.n_finished
        self.parent.log_metrics({"cells_done": n}, step=n)
        self.status.update(force=True, **self.fields(), **extra)

    def fail(self, cell: Cell, reason: str) -> None:
        self.states[cell.key] = "failed"
        self.failed[cell.key] = reason
        self.log(f"    {cell.key}: FAILED: {reason}")
        self.status.update(force=True, **self.fields())


SUMMARY_COLUMNS = ("set", "network", "n_seeds", "mean", "ci_lo", "ci_hi", "delta", "delta_lo", "delta_hi", "p_holm",
                   "verdict")


def summary_rows(table) -> list[dict]:
    """The table's headline columns as JSON-ready records (NaN as None)."""
    rows = table[list(SUMMARY_COLUMNS)].to_dict("records")
    return [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()} for r in rows]


class _NoStatus:
    def update(self, force: bool = False, **fields) -> None:
        pass


# --- fan-out: job specs and run-cell ------------------------------------------------------------

def write_specs(study: Study, pending: list[Cell]) -> list[Path]:
    from core.files import write_json_atomic

    folder = study.out / "specs"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    paths = []
    for i, cell in enumerate(pending):
        spec = {"format": SPEC_FORMAT, "study_run_id": study.run_id, "study_key": study.config.key(),
                "data": str(study.ds.root), "out": str(study.out), "test_hash": study.splits.test_hash,
                "cell": {"set": cell.set, "network": cell.network, "seed": cell.seed},
                "config": study.config.to_dict()}
        path = folder / f"{i:03d}-{cell.slug}.json"
        write_json_atomic(path, spec)
        paths.append(path)
    return paths


def read_spec(path: str | Path) -> dict:
    path = Path(path).expanduser()
    try:
        spec = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such cell spec; write them with `python -m core study --plan-only`.") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); re-plan the study.") from e
    if not isinstance(spec, dict) or spec.get("format") != SPEC_FORMAT:
        raise ValueError(f"{path}: not a study cell spec (format {SPEC_FORMAT!r} expected).")
    missing = [k for k in ("study_run_id", "study_key", "data", "out", "test_hash", "cell", "config") if k not in spec]
    if missing:
        raise ValueError(f"{path}: the spec lacks {', '.join(missing)}; re-plan the study.")
    return spec


def run_cell_spec(path: str | Path, *, log: Log = print, status=None) -> dict:
    """``python -m core run-cell SPEC``: run one planned cell (skipped when already finished)."""
    spec = read_spec(path)
    config = StudyConfig.from_dict(spec["config"])
    if config.key() != spec["study_key"]:
        raise ValueError(f"{path}: its config does not match its study key; re-plan the study.")
    c = spec["cell"]
    cell = Cell(c["set"], c["network"], int(c["seed"]))
    if cell.set not in config.sets or cell.network not in config.networks or cell.seed not in config.seeds:
        raise ValueError(f"{path}: cell {cell.key} is not in the study's grid; re-plan the study.")
    status = status or _NoStatus()
    done = finished_cells(spec["study_run_id"])
    if cell.key in done:
        log(f"{cell.key}: already finished in run {done[cell.key].info.run_id}; skipped.")
        return {"cell": cell.key, "skipped": True, "run_id": done[cell.key].info.run_id,
                "study_run_id": spec["study_run_id"]}
    check_networks(config)
    ds = load_data(spec["data"])
    splits = open_splits(ds, config, log)
    if splits.test_hash != spec["test_hash"]:
        raise TestSplitMismatch(f"{path}: the study's test split is {spec['test_hash']}, but {ds.root} gives "
                                f"{splits.test_hash} here; the dataset changed since planning. Re-plan the study.")
    study = Study(ds, config, splits, Path(spec["out"]), spec["study_run_id"], log)
    status.update(force=True, state="running", current=cell.key, cells_total=1, cells_done=0,
                  run_id=spec["study_run_id"], cell_epochs=config.epochs)
    summary = run_cell(study, cell, on_epoch=lambda e, m: status.update(cell_epoch=e),
                       on_stage=lambda text: status.update(message=text),
                       on_plan=lambda n: status.update(force=True, cell_epochs=n))
    status.update(force=True, state="finished", cells_done=1, eta_s=0.0)
    log(f"{cell.key}: {config.metric} {summary[config.metric]:.4f} in {summary['seconds']} s (run {summary['run_id']})")
    return {**summary, "skipped": False, "study_run_id": spec["study_run_id"]}
