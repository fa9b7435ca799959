"""MLflow tracking for every job: one place that knows the store, the tags and batching.

- Store: ``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<workspace>/mlflow.db`` with
  artifacts under ``<workspace>/mlartifacts``.
- A run starts from a config (a dataclass or a dict); its flattened params are logged once.
- Tags: ``medaug.kind`` (job kind), ``medaug.dataset_id`` / ``medaug.dataset_hash``,
  ``medaug.code_version`` (the git commit, ``-dirty`` when the tree has changes), and the process
  that logs (``medaug.pid``, ``medaug.host``, ``medaug.pid_start``), so a run whose process died
  (kill -9, a crash) is shown as DIED rather than RUNNING (:func:`shown_status`).
- A resumed job continues its run (:func:`continue_run`): RUNNING again, the steps it lacks
  logged; if that run cannot be continued (deleted, another store) the orphan is marked KILLED
  and a new run names it in ``medaug.resumed_from``.
- Metrics always carry ``step=`` and are buffered into ``log_batch`` calls (each call costs
  about 20 ms on SQLite), flushed every ``flush_every`` metrics or seconds and at the end.
- A store that cannot be reached fails fast at the start (:func:`check_store`); one lost
  mid-run never stops the job: data is queued, retried and, if the store is still gone at
  the end, saved to disk for ``python -m core tracking-replay`` (:class:`Run`).

mlflow is imported here only; ``core.gan`` and ``core.classify`` reach it through callbacks.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DEFAULT_EXPERIMENT = "medaug"
TAG_KIND = "medaug.kind"
TAG_DATASET_ID = "medaug.dataset_id"
TAG_DATASET_HASH = "medaug.dataset_hash"
TAG_CODE_VERSION = "medaug.code_version"
TAG_PID, TAG_HOST, TAG_PID_START = "medaug.pid", "medaug.host", "medaug.pid_start"
TAG_RESUMED_FROM = "medaug.resumed_from"
TAG_RESUMES = "medaug.resumes"          # how many times a run was continued by a resumed job
DIED = "DIED"                           # shown for a RUNNING run whose process is gone (not an MLflow status)
_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000


def tracking_uri() -> str:
    """The store every run goes to. Reads the environment each call, so tests can redirect it."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    from core.workspace import workspace_root

    return f"sqlite:///{workspace_root() / 'mlflow.db'}"


def artifact_root() -> str | None:
    """Artifact location for new experiments: under the workspace for the default local
    store; ``None`` (the server's own default) when a tracking server is configured."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return None
    from core.workspace import workspace_dir

    return workspace_dir("mlartifacts").as_uri()


def mlflow_ui_command() -> str:
    """The shell command that serves MLflow's own UI on this same store."""
    uri = tracking_uri()
    if uri.startswith("sqlite:"):
        art = artifact_root() or ""
        return f"mlflow server --backend-store-uri {uri} --default-artifact-root {art} --port 5000"
    return f"open {uri} (a tracking server is configured)"


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The git commit of the code, with ``-dirty`` for uncommitted changes; ``unknown`` outside git."""
    here = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def flatten(config: Any, prefix: str = "") -> dict[str, str]:
    """A dataclass or (nested) mapping -> ``{"a.b": "value"}``, the form params are logged in."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a dataclass or a mapping, got {type(config).__name__}.")
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if (dataclasses.is_dataclass(value) and not isinstance(value, type)) or isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        elif isinstance(value, (list, tuple)):
            out[name] = json.dumps(list(value), default=str)
        else:
            out[name] = str(value)
    return out


_READY_STORES: set[str] = set()
# MLflow's own defaults retry a failed request 7 times with growing back-off and wait 120 s
# for an answer: minutes per call while a server is down. Ours (the user's environment wins):
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def client():
    """An MlflowClient on :func:`tracking_uri`. The first use of a SQLite store in a process
    holds a file lock: the store creates its schema on first open, and two processes doing
    that at once (the app and a job, on a fresh workspace) collide with "table already exists"."""
    from mlflow import MlflowClient

    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        for name, value in HTTP_DEFAULTS.items():   # a lost server must not stall a job for minutes
            os.environ.setdefault(name, value)
    if uri in _READY_STORES or not uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri=uri)
    from core.files import file_lock

    db = Path(uri.removeprefix("sqlite:///"))
    with file_lock(db.with_name(db.name + ".lock")):
        c = MlflowClient(tracking_uri=uri)
        c.search_experiments(max_results=1)  # forces the store (and its schema) into being
    _READY_STORES.add(uri)
    return c


def experiment_id(name: str = DEFAULT_EXPERIMENT) -> str:
    """Get or create the experiment, with artifacts under the workspace for local stores."""
    c = client()
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return c.create_experiment(name, artifact_location=artifact_root())
    except Exception:  # created meanwhile by another process
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


class StoreUnavailable(ValueError):
    """The tracking store cannot be reached; the message names it and says what to do."""


def check_store(timeout_s: float = 3.0) -> None:
    """Fail fast, within about ``timeout_s``, when the store cannot be used.

    A tracking server (``http(s)://``) must answer at all (any HTTP status counts: only a
    refused connection, a bad host or a timeout mean it is gone); a SQLite store's folder
    must be writable. Raises :class:`StoreUnavailable`."""
    import urllib.error
    import urllib.request

    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s).close()
        except urllib.error.HTTPError:
            return   # it answered
        except (OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise StoreUnavailable(
                f"The MLflow tracking server at {uri} cannot be reached ({reason}; waited up to {timeout_s:g} s). "
                f"Start it (README: 'Team tracking server'), correct MLFLOW_TRACKING_URI, or unset "
                f"MLFLOW_TRACKING_URI to use the local store in the workspace.") from None
    elif uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreUnavailable(f"The MLflow store {uri} cannot be created ({e}); set MEDAUG_HOME to a "
                                   f"writable folder or MLFLOW_TRACKING_URI to another store.") from None
        if not os.access(folder, os.W_OK):
            raise StoreUnavailable(f"The MLflow store folder {folder} is not writable; set MEDAUG_HOME to a "
                                   f"writable folder or MLFLOW_TRACKING_URI to another store.")


def spill_dir(run_id: str) -> Path:
    """Where a run keeps what it could not send to an unreachable store (see :func:`replay`)."""
    from core.workspace import workspace_dir

    return workspace_dir("tracking-spill") / run_id


class Run:
    """A started MLflow run. Use through :func:`start_run`.

    Logging never stops a job: when the store fails (a lost server, a locked database), the
    run keeps metrics, tags and artifacts queued, reports the failure once through
    ``on_error(message)``, retries every ``retry_s`` seconds, and reports again when the
    store is back. What is still unsent when the run ends is written to :func:`spill_dir`,
    and ``python -m core tracking-replay DIR`` sends it later. ``error`` holds the current
    failure (None while healthy); ``spilled`` that folder once the run has ended (None: all sent)."""

    def __init__(self, mlflow_client, run_id: str, flush_every: int = 200, flush_seconds: float = 5.0,
                 on_error: Callable[[str], None] | None = None, retry_s: float = 30.0):
        self.client = mlflow_client
        self.run_id = run_id
        self.on_error = on_error or _print_error
        self.retry_s = retry_s
        self.error: str | None = None
        self._buffer: list = []
        self._pending: list[tuple[str, tuple]] = []   # tags and artifacts waiting for the store
        self._flush_every = flush_every
        self._flush_seconds = flush_seconds
        self._last_flush = time.monotonic()
        self._retry_at = 0.0
        self.logged_through: dict[str, int] = {}   # key -> last step the store held when a run was continued
        self.note = ""                             # how a resumed job's run came about (continue_run)
        self.spilled: Path | None = None           # where close() saved what the store did not take

    # -- failure handling -------------------------------------------------------------------

    def _failed(self, what: str, e: Exception) -> None:
        first = self.error is None
        self.error = f"{what} failed: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        self._retry_at = time.monotonic() + self.retry_s
        if first:
            self.on_error(f"MLflow store {tracking_uri()} failed ({self.error}). Training goes on; "
                          f"{len(self._buffer)} metric value(s) are queued and retried every {self.retry_s:g} s.")

    def _recovered(self) -> None:
        if self.error is not None:
            self.error = None
            self.on_error(f"MLflow store {tracking_uri()} is reachable again; queued tracking data sent.")

    def _waiting(self) -> bool:
        return self.error is not None and time.monotonic() < self._retry_at

    def _send_pending(self) -> bool:
        while self._pending:
            kind, args = self._pending[0]
            try:
                getattr(self, "_do_" + kind)(*args)
            except Exception as e:
                self._failed(kind.replace("_", " "), e)
                return False
            self._pending.pop(0)
        return True

    def _call(self, kind: str, *args) -> None:
        """Run ``_do_<kind>(*args)`` now, or queue it while the store is failing."""
        self._pending.append((kind, args))
        if not self._waiting() and self._send_pending():
            self._recovered()

    # -- logging ----------------------------------------------------------------------------

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Queue metrics at ``step``; they are written in batches."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._buffer += [Metric(k, float(v), now, int(step)) for k, v in metrics.items()
                         if int(step) > self.logged_through.get(k, -2**62)]   # a continued run has those
        if len(self._buffer) >= self._flush_every or time.monotonic() - self._last_flush > self._flush_seconds:
            self.flush()

    def flush(self, force: bool = False) -> bool:
        """Send queued metrics, tags and artifacts; False if the store is failing (they stay queued).
        While failing, only ``force`` tries before the retry time."""
        self._last_flush = time.monotonic()
        if self._waiting() and not force:
            return False
        if not self._send_pending():
            return False
        while self._buffer:
            batch = self._buffer[:_MAX_METRICS_PER_BATCH]
            try:
                self.client.log_batch(self.run_id, metrics=batch)
            except Exception as e:
                self._failed("logging metrics", e)
                return False
            del self._buffer[:len(batch)]
        self._recovered()
        return True

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._call("set_tags", {k: str(v) for k, v in tags.items()})

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        self._call("log_artifact", str(local_path), artifact_path)

    def log_figure(self, figure, artifact_file: str) -> None:
        """A plotly figure (saved as interactive HTML) or a matplotlib figure."""
        self._call("log_figure", figure, artifact_file)

    def log_image(self, image, artifact_file: str) -> None:
        self._call("log_image", image, artifact_file)

    def log_table(self, data, artifact_file: str) -> None:
        self._call("log_table", data, artifact_file)

    def on_step(self, step: int, metrics: Mapping[str, float]) -> None:
        """Callback form of :meth:`log_metrics` for trainers that must not import mlflow."""
        self.log_metrics(metrics, step)

    def _do_set_tags(self, tags: dict) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def _do_log_artifact(self, local_path: str, artifact_path: str | None) -> None:
        self.client.log_artifact(self.run_id, local_path, artifact_path)

    def _do_log_figure(self, figure, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, figure, artifact_file)

    def _do_log_image(self, image, artifact_file: str) -> None:
        self.client.log_image(self.run_id, image, artifact_file=artifact_file)

    def _do_log_table(self, data, artifact_file: str) -> None:
        self.client.log_table(self.run_id, data=data, artifact_file=artifact_file)

    def _do_terminate(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)

    # -- the end of a run -------------------------------------------------------------------

    def close(self, status: str) -> Path | None:
        """Send everything and end the run with ``status``. If the store still fails, write
        what is unsent to :func:`spill_dir` and return that folder (None when all was sent)."""
        self._pending.append(("terminate", (status,)))
        if self.flush(force=True):
            return None
        try:
            self.spilled = self._spill()
            return self.spilled
        except OSError as e:   # the disk is full too: say so, and never hide the job's own error
            self.on_error(f"MLflow store {tracking_uri()} still fails at the end of run {self.run_id} ({self.error}), "
                          f"and what is unsent cannot be saved to {spill_dir(self.run_id)} either ({e}); it is lost.")
            return None

    def _spill(self) -> Path:
        folder = spill_dir(self.run_id)
        (folder / "files").mkdir(parents=True, exist_ok=True)
        with open(folder / "metrics.jsonl", "a") as f:
            for m in self._buffer:
                f.write(json.dumps({"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step}) + "\n")
        actions = []
        for i, (kind, args) in enumerate(self._pending):
            if kind in ("set_tags", "terminate", "log_artifact"):
                actions.append({"kind": kind, "args": list(args)})
                continue
            obj, name = args      # a figure, image or table: keep it as a file to upload later
            local = folder / "files" / f"{i:04d}" / name
            local.parent.mkdir(parents=True, exist_ok=True)
            _save_object(obj, local)
            actions.append({"kind": "log_artifact", "args": [str(local), str(Path(name).parent).strip(".") or None]})
        (folder / "pending.json").write_text(json.dumps({"run_id": self.run_id, "tracking_uri": tracking_uri(),
                                                         "error": self.error, "actions": actions}, indent=1))
        self.on_error(f"MLflow store {tracking_uri()} still fails at the end of run {self.run_id} ({self.error}). "
                      f"{len(self._buffer)} metric value(s) and {len(actions)} other item(s) are saved in {folder}; "
                      f"send them when the store is back: python -m core tracking-replay {folder}")
        return folder


def _print_error(message: str) -> None:
    import sys

    print(f"tracking: {message}", file=sys.stderr, flush=True)


def _save_object(obj, path: Path) -> None:
    """A plotly/matplotlib figure, an image array/PIL image or a table (dict / DataFrame) as a file."""
    if hasattr(obj, "write_html"):
        obj.write_html(str(path))
    elif hasattr(obj, "savefig"):
        obj.savefig(str(path))
    elif hasattr(obj, "to_json"):
        obj.to_json(str(path), orient="split")
    elif isinstance(obj, Mapping):
        path.write_text(json.dumps(obj, default=str))
    else:
        from PIL import Image

        (obj if hasattr(obj, "save") else Image.fromarray(obj)).save(str(path))


def replay(folder: str | Path) -> dict:
    """Send what a run saved in :func:`spill_dir` while its store was unreachable; the folder
    is removed once everything is in the store."""
    import shutil

    from mlflow.entities import Metric

    folder = Path(folder)
    try:
        pending = json.loads((folder / "pending.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{folder}: not a tracking spill folder ({e}); it is written by a run whose store "
                         f"failed, under {spill_dir('RUN_ID').parent}.") from None
    metrics = []
    if (folder / "metrics.jsonl").is_file():
        metrics = [Metric(**json.loads(line)) for line in (folder / "metrics.jsonl").read_text().splitlines() if line]
    run = Run(client(), pending["run_id"], on_error=lambda message: None)
    run._buffer = metrics
    run._pending = [(a["kind"], tuple(a["args"])) for a in pending["actions"]]
    if not run.flush(force=True):
        raise StoreUnavailable(f"{folder}: the store {tracking_uri()} still fails ({run.error}); nothing was removed.")
    shutil.rmtree(folder)
    return {"run_id": pending["run_id"], "metrics": len(metrics), "items": len(pending["actions"])}


@contextmanager
def start_run(kind: str, config: Any, *, dataset=None, run_name: str | None = None,
              parent_run_id: str | None = None, tags: Mapping[str, Any] | None = None,
              experiment: str = DEFAULT_EXPERIMENT,
              on_error: Callable[[str], None] | None = None) -> Iterator[Run]:
    """Start a run of job ``kind``, log ``config`` once as params and the standard tags,
    and end it FINISHED (or FAILED if the body raises, or KILLED on Ctrl-C).

    A store that cannot be reached at the start raises :class:`StoreUnavailable` within a
    few seconds. Once the run has started, store failures never raise: they go to
    ``on_error(message)`` (default: stderr) and the data waits (see :class:`Run`)."""
    from mlflow.entities import Param

    check_store()
    c = client()
    all_tags = {TAG_KIND: kind, TAG_CODE_VERSION: code_version(), **process_tags(), **(tags or {})}
    if dataset is not None:
        all_tags[TAG_DATASET_ID] = dataset.id
        all_tags[TAG_DATASET_HASH] = dataset.content_hash
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    mlrun = c.create_run(experiment_id(experiment), run_name=run_name,
                         tags={k: str(v) for k, v in all_tags.items()})
    run = Run(c, mlrun.info.run_id, on_error=on_error)
    params = [Param(k, v[:6000]) for k, v in flatten(config).items()]
    for i in range(0, len(params), _MAX_PARAMS_PER_BATCH):
        c.log_batch(run.run_id, params=params[i:i + _MAX_PARAMS_PER_BATCH])
    with _ending(run):
        yield run


def process_tags() -> dict[str, str]:
    """Tags naming this process, so a listing can tell a run whose process is gone."""
    from core.jobs import process_identity

    ident = process_identity()
    return {TAG_PID: str(ident["pid"]), TAG_HOST: ident["host"], TAG_PID_START: str(ident["pid_start"] or "")}


def process_gone(tags: Mapping[str, str]) -> bool:
    """Whether the process a run's tags name has surely ended (False without the tags, or on another host)."""
    from core.jobs import process_gone as gone

    return bool(tags.get(TAG_PID) and tags.get(TAG_HOST)) and gone(tags[TAG_PID], tags[TAG_HOST],
                                                                   tags.get(TAG_PID_START) or None)


def shown_status(status: str, tags: Mapping[str, str]) -> str:
    """A run's status as pages show it: :data:`DIED` for a RUNNING run whose process is gone."""
    return DIED if status == "RUNNING" and process_gone(tags) else status


@contextmanager
def reopen_run(run_id: str, on_error: Callable[[str], None] | None = None,
               skip_logged_steps: bool = False) -> Iterator[Run]:
    """Continue an existing run (e.g. the parent of a resumed study): RUNNING again, then
    ended like :func:`start_run` ends a run. ``skip_logged_steps``: metrics at steps the run
    already holds (per key) are not logged again (a resumed trainer repeats some steps)."""
    check_store()
    c = client()
    c.update_run(run_id, status="RUNNING")
    run = Run(c, run_id, on_error=on_error)
    previous = c.get_run(run_id)
    resumes = int(previous.data.tags.get(TAG_RESUMES, "0") or 0) + 1
    run._do_set_tags({**process_tags(), TAG_RESUMES: str(resumes)})
    if skip_logged_steps:
        for key in previous.data.metrics:
            steps = [m.step for m in c.get_metric_history(run_id, key)]
            if steps:
                run.logged_through[key] = max(steps)
    with _ending(run):
        yield run


def why_not_continue(run_id: str) -> str | None:
    """Why a resumed job cannot continue MLflow run ``run_id`` (None: it can)."""
    from core.jobs import process_identity

    try:
        r = client().get_run(run_id)
    except Exception as e:  # noqa: BLE001 (MlflowException, a server error: it is not there)
        return f"it is not in the store {tracking_uri()}: {type(e).__name__}"
    if r.info.lifecycle_stage == "deleted":
        return "it was deleted and is in the trash"
    tags = r.data.tags
    me = process_identity()
    if (r.info.status == "RUNNING" and tags.get(TAG_HOST) == me["host"] and tags.get(TAG_PID) != str(me["pid"])
            and not process_gone(tags)):
        return f"its process {tags.get(TAG_PID)} on {tags.get(TAG_HOST)} is still running"
    return None


def mark_killed(run_id: str) -> bool:
    """End a RUNNING run whose process is gone as KILLED (a deleted one too: it stays in the
    trash). True if it was marked."""
    c = client()
    try:
        r = c.get_run(run_id)
    except Exception:  # noqa: BLE001 (not in this store)
        return False
    tags = r.data.tags
    alive_here = tags.get(TAG_HOST) == process_tags()[TAG_HOST] and not process_gone(tags)
    if r.info.status != "RUNNING" or alive_here:
        return False
    deleted = r.info.lifecycle_stage == "deleted"
    try:
        if deleted:
            c.restore_run(run_id)
        c.set_terminated(run_id, status="KILLED")
    finally:
        if deleted:
            c.delete_run(run_id)
    return True


@contextmanager
def continue_run(previous_run_id: str | None, kind: str, config: Any, *,
                 on_error: Callable[[str], None] | None = None, tags: Mapping[str, Any] | None = None,
                 **start_kwargs) -> Iterator[Run]:
    """The run of a resumed job: ``previous_run_id`` (from its checkpoint) RUNNING again, with the
    steps it lacks logged (:func:`reopen_run`, ``skip_logged_steps``). If that run cannot be
    continued (deleted, another store, still alive elsewhere: :func:`why_not_continue`), the orphan is
    marked KILLED when its process is gone and a new run (:func:`start_run`) is tagged
    ``medaug.resumed_from``. Without ``previous_run_id``: :func:`start_run`. ``run.note`` says which."""
    note = ""
    if previous_run_id:
        check_store()
        reason = why_not_continue(previous_run_id)
        if reason is None:
            with reopen_run(previous_run_id, on_error=on_error, skip_logged_steps=True) as run:
                run.note = f"continuing MLflow run {previous_run_id}"
                yield run
            return
        killed = mark_killed(previous_run_id)
        tags = {**(tags or {}), TAG_RESUMED_FROM: previous_run_id}
        note = (f"MLflow run {previous_run_id} cannot be continued ({reason})"
                + ("; marked it KILLED" if killed else "") + "; a new run records the rest")
    with start_run(kind, config, on_error=on_error, tags=tags, **start_kwargs) as run:
        run.note = note or f"started MLflow run {run.run_id}"
        yield run


@contextmanager
def _ending(run: Run) -> Iterator[None]:
    """End ``run`` FINISHED, FAILED if the body raises, or KILLED on Ctrl-C (see :meth:`Run.close`)."""
    status = "FINISHED"
    try:
        yield
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        run.close(status)


# --- reading runs back (pages, reports) ----------------------------------------------------

def metric_history(run_id: str, keys: list[str] | None = None):
    """Long table (key, step, value, timestamp) of a run's metrics, all keys by default."""
    import pandas as pd

    c = client()
    keys = keys if keys is not None else sorted(c.get_run(run_id).data.metrics)
    rows = [{"key": k, "step": m.step, "value": m.value, "timestamp": m.timestamp}
            for k in keys for m in c.get_metric_history(run_id, k)]
    return pd.DataFrame(rows, columns=["key", "step", "value", "timestamp"]).sort_values(["key", "step"])


def list_artifacts(run_id: str, folder: str = "") -> list[str]:
    """Artifact paths (files) directly inside ``folder`` of a run."""
    return sorted(f.path for f in client().list_artifacts(run_id, folder or None) if not f.is_dir)


def download_artifact(run_id: str, path: str, dst: str | Path | None = None) -> Path:
    """A local copy of one artifact (for local stores this is a plain file copy)."""
    import tempfile

    dst = Path(dst or tempfile.mkdtemp(prefix="medaug-art-"))
    return Path(client().download_artifacts(run_id, path, str(dst)))


def search_runs_page(experiment_ids: list[str], *, deleted: bool = False, max_results: int = 1000,
                     page_token: str | None = None, filter_string: str = "",
                     order_by: tuple[str, ...] = ("attributes.start_time DESC",), mlflow_client=None):
    """One page of the runs of these experiments (the trash with ``deleted``), as MLflow Run
    objects, and the token of the next page (None after the last)."""
    from mlflow.entities import ViewType

    c = mlflow_client or client()
    page = c.search_runs(list(experiment_ids), filter_string=filter_string,
                         run_view_type=ViewType.DELETED_ONLY if deleted else ViewType.ACTIVE_ONLY,
                         max_results=max_results, order_by=list(order_by), page_token=page_token)
    return list(page), page.token or None


def search_runs(kind: str | None = None, max_results: int = 200, experiment: str = DEFAULT_EXPERIMENT):
    """Runs of one job kind (all kinds by default), newest first, as MLflow Run objects."""
    c = client()
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return []
    filter_string = f"tags.`{TAG_KIND}` = '{kind}'" if kind else ""
    return c.search_runs([exp.experiment_id], filter_string=filter_string, max_results=max_results,
                         order_by=["attributes.start_time DESC"])


# --- command line ------------------------------------------------------------------------

def _cmd_replay(args) -> dict:
    done = replay(args.folder)
    print(f"Sent {done['metrics']} metric value(s) and {done['items']} other item(s) to run {done['run_id']}.")
    return done


def register(sub) -> None:
    s = sub.add_parser("tracking-replay", help="send what a run saved while its MLflow store was unreachable",
                       description="A run whose store failed keeps training and saves what it could not send "
                                   "under <workspace>/tracking-spill/RUN_ID. Send it once the store is back.")
    s.add_argument("folder", help="the spill folder a run reported")
    s.set_defaults(func=_cmd_replay)
