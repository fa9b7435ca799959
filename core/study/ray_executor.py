"""``python -m core study --executor ray``: a study's generators and cells as Ray tasks.

Only the scheduling lives here; a cell is :func:`core.study.run.run_cell` and a generator
:func:`core.study.sets.gan_checkpoint` (+ :func:`core.study.sets.gan_images`), as in the in-process
executor, and :func:`core.study.run.run_study` opens, resumes and tabulates the study for both.

- **Tasks.** One task per generator (GAN variant or the diffusion model) the pending cells need; it
  trains (or finds in ``OUT/gans/``) the checkpoint and generates the synthetic sets. One task per
  pending cell, whose arguments include its generator's ObjectRef, so Ray starts it once that
  generator is done; cells without a generator start at once. Each task asks for one GPU when the
  cluster has GPUs, else one CPU: as many run at once as the cluster has GPUs (or CPUs).
- **Faults.** A task whose worker dies (killed, out of memory, node lost) is retried by Ray
  (``max_retries``); an exception is not retried (``retry_exceptions=False``): that cell is marked
  failed with its reason and the others go on. A retried cell continues the MLflow child run its
  dead try left RUNNING (:func:`core.study.store.unfinished_cell_run` + the classifier's checkpoint),
  so there is one child per cell. Once the retries are spent, the cell is failed ("its worker died")
  and its child run marked KILLED.
- **Tracking.** Tasks get ``MLFLOW_TRACKING_URI`` (the driver's store, resolved) and ``MEDAUG_HOME``
  through the runtime environment and log into the study's parent run as child runs, exactly as the
  in-process executor does. A tracking server lost mid-cell is handled by :mod:`core.tracking` in each
  task: the cell trains on, queues, and spills under ``MEDAUG_HOME/tracking-spill/RUN_ID``; its result
  names the folder, and :func:`core.study.run.run_study` replays it if the store is back by the end,
  else writes no table and says what to run (``tracking-replay``, then ``--resume``).
- **Data.** ``data="object-store"`` puts the dataset record and the study's image arrays in Ray's
  object store once (every task reads them from there); ``"path"`` makes every task load ``--data``
  itself (a path every node must see: a shared file system); ``"auto"`` takes the object store
  below :data:`OBJECT_STORE_MAX_BYTES`. Either way each task checks the test split's hash against
  the study's. ``--out`` (the GAN cache, the cells' predictions) must be on a path every node sees.
- **Progress.** Each cell task writes ``OUT/cells/<cell>/ray-task.json`` when it starts, so the driver
  can tell running cells from pending ones (:class:`core.study.run.CellProgress` keeps status.json).

``ray`` is imported only inside the functions here, so ``core`` and the app never load it.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from typing import NamedTuple
from pathlib import Path

from core.study.grid import AUG_SETS, Cell, StudyConfig

RAY_PIN = "ray==2.60.0"
DATA_MODES = ("auto", "object-store", "path")
OBJECT_STORE_MAX_BYTES = 512 * 2**20
MARKER = "ray-task.json"
POLL_S = 2.0


class RayUnavailable(ValueError):
    """Ray is not installed or the cluster cannot be reached; the message says what to do."""


def import_ray():
    try:
        import ray
    except ImportError as e:
        raise RayUnavailable(f"--executor ray needs the ray package ({e}); install it with "
                             f"`pip install {RAY_PIN}` (it is in requirements.txt).") from None
    return ray


def check_available() -> None:
    """Raise :class:`RayUnavailable` when ray is not installed (without importing it)."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise RayUnavailable(f"--executor ray needs the ray package; install it with `pip install {RAY_PIN}` "
                             f"(it is in requirements.txt).")


def task_env() -> dict[str, str]:
    """What every task's process needs from the driver's environment: the tracking store (resolved,
    so the default local store is the driver's), the workspace, and ``core`` on the import path."""
    from core import tracking
    from core.workspace import workspace_root

    repo = str(Path(__file__).resolve().parents[2])
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {"MLFLOW_TRACKING_URI": tracking.tracking_uri(), "MEDAUG_HOME": str(workspace_root()),
           "PYTHONPATH": os.pathsep.join([repo] + [p for p in paths if p != repo])}
    for name in ("MEDAUG_DATA_ROOTS", "OMP_NUM_THREADS", *tracking.HTTP_DEFAULTS):
        if os.environ.get(name):
            env[name] = os.environ[name]
    return env


def connect(address: str | None, log=print) -> bool:
    """Connect to Ray: the session already open in this process, a local Ray with this machine's
    CPUs (and GPUs) when ``address`` is None, or the cluster at ``address`` (``auto``: the one
    ``ray start`` runs here; ``ray://host:10001``: Ray Client). True when this call connected (and
    the caller disconnects at the end)."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    try:
        if address:   # an existing cluster (or Ray Client): its own settings
            ray.init(address=address)
        else:
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, configure_logging=False)
    except Exception as e:  # noqa: BLE001 -- ConnectionError, a timeout, a version mismatch: say which
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        hint = ("start one with `ray start --head` (README: 'Studies on a Ray cluster'), check it with `ray status`, "
                "or leave out --address to start a local Ray with this machine's CPUs; a cluster with token "
                "authentication (Ray's default) needs RAY_AUTH_MODE=token here and its token in ~/.ray/auth_token "
                "or RAY_AUTH_TOKEN") if address else \
            "see the message; `ray start --head` then --address auto uses a Ray you start yourself"
        raise RayUnavailable(f"cannot start or reach {where} ({type(e).__name__}: {e}); {hint}.") from None
    res = ray.cluster_resources()
    log(f"ray: connected to {address or 'a local Ray'}: {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs, "
        f"{len(ray.nodes())} node(s)")
    return True


def generator_needs(config: StudyConfig, pending: list[Cell]) -> dict[str, set[str]]:
    """Variant -> the synthetic sets ("plan", "tstr") the pending cells take from it."""
    needs: dict[str, set[str]] = {}
    for cell in pending:
        variant, mode = cell_generator(config, cell)
        if variant:
            needs.setdefault(variant, set()).add(mode)
    return needs


def cell_generator(config: StudyConfig, cell: Cell) -> tuple[str | None, str]:
    aug = AUG_SETS[cell.set]
    if aug.kind == "tstr":
        return aug.variant, "tstr"
    return aug.variant or (config.combo_variant if aug.kind == "classic+gan" else None), "plan"


# --- inside a task ------------------------------------------------------------------------------

def _task_log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)   # the driver's stdout ends with the study's JSON line


class StudyHooks(NamedTuple):
    """What a task needs of :mod:`core.study.run`, handed in by it (so this module never imports it:
    run -> ray_executor is the only direction). Ray pickles them by reference; workers import them."""
    study: Callable    # core.study.run.Study
    load_data: Callable
    open_splits: Callable
    run_cell: Callable


def _open_study(spec: dict, data, hooks: StudyHooks):
    """The study as a task sees it: ``data`` (dataset, splits) from the object store, or loaded from
    the study's data path; either way its test split must hash to the study's."""
    from core.study.sets import array_hash
    from core.study.store import TestSplitMismatch

    config = StudyConfig.from_dict(spec["config"])
    if data is None:
        ds = hooks.load_data(spec["data"])
        splits = hooks.open_splits(ds, config, _task_log)
    else:   # the object store's arrays are read-only views: the trainers get their own copies
        import copy

        ds, splits = data
        splits = copy.copy(splits)
        for name in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
            setattr(splits, name, getattr(splits, name).copy())
    got = array_hash(splits.test_x, splits.test_y, splits.class_names)
    if got != spec["test_hash"]:
        raise TestSplitMismatch(f"the study's test split is {spec['test_hash']}, but this task got {got} from "
                                f"{spec['data']} on {os.uname().nodename}; every node must see the same dataset.")
    return hooks.study(ds, config, splits, Path(spec["out"]), spec["study_run_id"], _task_log)


def generator_task(spec: dict, data, hooks: StudyHooks, variant: str, modes: list[str]) -> dict:
    """A Ray task: this study's ``variant`` generator, trained (or taken from ``OUT/gans``) with its
    synthetic sets for ``modes`` generated, so its cells find them ready."""
    with contextlib.redirect_stdout(sys.stderr):
        study = _open_study(spec, data, hooks)
        t0 = time.perf_counter()
        for mode in modes:
            study.gan_source(variant, mode)
        return {"variant": variant, "modes": list(modes), "seconds": round(time.perf_counter() - t0, 2),
                "host": os.uname().nodename}


def cell_task(spec: dict, data, hooks: StudyHooks, cell: dict, *generators) -> dict:
    """A Ray task: one cell (:func:`core.study.run.run_cell`); ``generators`` (their tasks' results)
    are arguments only so that Ray starts it once they are done."""
    from core.files import write_json_atomic

    with contextlib.redirect_stdout(sys.stderr):
        c = Cell(cell["set"], cell["network"], int(cell["seed"]))
        folder = Path(spec["out"]) / "cells" / c.slug
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / MARKER, {"cell": c.key, "host": os.uname().nodename, "pid": os.getpid(),
                                            "started": time.time()})
        study = _open_study(spec, data, hooks)
        return {**hooks.run_cell(study, c), "host": os.uname().nodename, "pid": os.getpid()}


# --- the driver -----------------------------------------------------------------------------------

def run_cells_ray(study, pending: list[Cell], progress, hooks: StudyHooks, *, address: str | None = None,
                  max_retries: int = 3, data: str = "auto") -> None:
    """Run ``pending`` cells (and the generators they need) as Ray tasks; every outcome goes to
    ``progress`` (:class:`core.study.run.CellProgress`). Returns when every task has ended."""
    if data not in DATA_MODES:
        raise ValueError(f"ray data={data!r}: choose one of {', '.join(DATA_MODES)}.")
    if max_retries < 0:
        raise ValueError(f"max_retries={max_retries}: give 0 or more.")
    if not pending:   # a resumed study with every cell finished: no Ray to start
        return
    ray = import_ray()
    log = study.log
    ours = connect(address, log)
    refs: dict = {}
    since = time.time() - 1.0
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        resources = {"num_gpus": 1} if gpus else {"num_cpus": 1}
        options = {"max_retries": max_retries, "retry_exceptions": False, "runtime_env": {"env_vars": task_env()},
                   **resources}
        spec = {"study_run_id": study.run_id, "config": study.config.to_dict(), "data": str(study.ds.root),
                "out": str(study.out), "test_hash": study.splits.test_hash}
        nbytes = sum(getattr(study.splits, k).nbytes for k in ("train_x", "val_x", "test_x"))
        via_store = data == "object-store" or (data == "auto" and nbytes <= OBJECT_STORE_MAX_BYTES)
        data_ref = ray.put((study.ds, study.splits)) if via_store else None
        log(f"ray: {len(pending)} cells, one {'GPU' if gpus else 'CPU'} each; images "
            + (f"from the object store ({nbytes / 2**20:.0f} MB)" if via_store else f"loaded by each task from "
                                                                                     f"{study.ds.root}"))
        gen_fn = ray.remote(**options)(generator_task)
        cell_fn = ray.remote(**options)(cell_task)
        generators = {v: gen_fn.options(name=f"generator {v}").remote(spec, data_ref, hooks, v, sorted(modes))
                      for v, modes in generator_needs(study.config, pending).items()}
        for v, ref in generators.items():
            refs[ref] = ("generator", v)
        for cell in pending:
            variant, _ = cell_generator(study.config, cell)
            deps = [generators[variant]] if variant else []
            ref = cell_fn.options(name=f"cell {cell.key}").remote(
                spec, data_ref, hooks, {"set": cell.set, "network": cell.network, "seed": cell.seed}, *deps)
            refs[ref] = ("cell", cell)
        progress.status.update(force=True, message=f"{len(pending)} cells and {len(generators)} generators on Ray",
                               ray_slots=int(gpus or ray.cluster_resources().get("CPU", 1)))
        left = list(refs)
        while left:
            ready, left = ray.wait(left, num_returns=1, timeout=POLL_S)
            for ref in ready:
                what, item = refs[ref]
                try:
                    result = ray.get(ref)
                except Exception as e:  # noqa: BLE001 -- a task's error or its worker's death: recorded
                    reason = failure_reason(ray, e, max_retries)
                    if what == "generator":
                        log(f"ray: generator {item} FAILED: {reason}")
                    else:
                        progress.fail(item, reason)
                        _mark_dead_child(study.run_id, item.key, e, ray)
                    continue
                if what == "generator":
                    log(f"ray: generator {item} ready ({result['seconds']:.0f} s on {result['host']})")
                else:
                    progress.finished(item, result)
            _poll_started(study.out, pending, progress, since)
    except BaseException:
        for ref in refs:   # a cancelled study leaves nothing running on a cluster it did not start
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        raise
    finally:
        if ours:
            ray.shutdown()


def failure_reason(ray, e: Exception, max_retries: int) -> str:
    """One sentence for a failed task: its exception, its generator's, or its worker's death."""
    from core.cli import error_text

    if isinstance(e, ray.exceptions.RayTaskError):
        cause = getattr(e, "cause", None)
        text = error_text(cause) if isinstance(cause, BaseException) else str(e).splitlines()[-1]
        if getattr(e, "function_name", "").endswith("generator_task"):
            return f"its generator failed: {text}"
        return text
    died = tuple(getattr(ray.exceptions, n) for n in ("WorkerCrashedError", "NodeDiedError", "LocalRayletDiedError")
                 if hasattr(ray.exceptions, n))
    if isinstance(e, died):
        return (f"its worker died {max_retries + 1} time(s) (killed, out of memory or its node lost); "
                f"{type(e).__name__}")
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".strip()


def _mark_dead_child(parent_run_id: str, cell_key: str, e: Exception, ray) -> None:
    """A cell whose worker died for good leaves a RUNNING child run: it ends KILLED (a later
    ``--resume`` continues it)."""
    if isinstance(e, ray.exceptions.RayTaskError):
        return   # the task ran to an exception: its run already ended FAILED
    from core import tracking
    from core.study.store import unfinished_cell_run

    with contextlib.suppress(Exception):
        run_id = unfinished_cell_run(parent_run_id, cell_key)
        if run_id:
            tracking.mark_killed(run_id)


def _poll_started(out: Path, pending: list[Cell], progress, since: float) -> None:
    """Pending cells whose task has started (its marker is newer than this study's start) are running."""
    for cell in pending:
        if progress.states.get(cell.key) != "pending":
            continue
        try:
            started = json.loads((out / "cells" / cell.slug / MARKER).read_text()).get("started", 0)
        except (OSError, ValueError):
            continue
        if started >= since:
            progress.started(cell)
