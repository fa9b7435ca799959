"""MLflow tracking for every job: one place that knows the store, the tags and batching.

- Store: ``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<workspace>/mlflow.db`` with
  artifacts under ``<workspace>/mlartifacts``.
- A run starts from a config (a dataclass or a dict); its flattened params are logged once.
- Tags: ``medaug.kind`` (job kind), ``medaug.dataset_id`` / ``medaug.dataset_hash``, and
  ``medaug.code_version`` (the git commit, ``-dirty`` when the tree has changes).
- Metrics always carry ``step=`` and are buffered into ``log_batch`` calls (each call costs
  about 20 ms on SQLite), flushed every ``flush_every`` metrics or seconds and at the end.

mlflow is imported here only; ``core.gan`` and ``core.classify`` reach it through callbacks.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DEFAULT_EXPERIMENT = "medaug"
TAG_KIND = "medaug.kind"
TAG_DATASET_ID = "medaug.dataset_id"
TAG_DATASET_HASH = "medaug.dataset_hash"
TAG_CODE_VERSION = "medaug.code_version"
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


def client():
    """An MlflowClient on :func:`tracking_uri`. The first use of a SQLite store in a process
    holds a file lock: the store creates its schema on first open, and two processes doing
    that at once (the app and a job, on a fresh workspace) collide with "table already exists"."""
    from mlflow import MlflowClient

    uri = tracking_uri()
    if uri in _READY_STORES or not uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri=uri)
    import fcntl

    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            c = MlflowClient(tracking_uri=uri)
            c.search_experiments(max_results=1)  # forces the store (and its schema) into being
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
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


class Run:
    """A started MLflow run. Use through :func:`start_run`."""

    def __init__(self, mlflow_client, run_id: str, flush_every: int = 200, flush_seconds: float = 5.0):
        self.client = mlflow_client
        self.run_id = run_id
        self._buffer: list = []
        self._flush_every = flush_every
        self._flush_seconds = flush_seconds
        self._last_flush = time.monotonic()

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Queue metrics at ``step``; they are written in batches."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._buffer += [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
        if len(self._buffer) >= self._flush_every or time.monotonic() - self._last_flush > self._flush_seconds:
            self.flush()

    def flush(self) -> None:
        while self._buffer:
            batch, self._buffer = self._buffer[:_MAX_METRICS_PER_BATCH], self._buffer[_MAX_METRICS_PER_BATCH:]
            self.client.log_batch(self.run_id, metrics=batch)
        self._last_flush = time.monotonic()

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, local_path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(local_path), artifact_path)

    def log_figure(self, figure, artifact_file: str) -> None:
        """A plotly (saved as interactive HTML) or matplotlib figure."""
        self.client.log_figure(self.run_id, figure, artifact_file)

    def log_image(self, image, artifact_file: str) -> None:
        self.client.log_image(self.run_id, image, artifact_file=artifact_file)

    def log_table(self, data, artifact_file: str) -> None:
        self.client.log_table(self.run_id, data=data, artifact_file=artifact_file)

    def on_step(self, step: int, metrics: Mapping[str, float]) -> None:
        """Callback form of :meth:`log_metrics` for trainers that must not import mlflow."""
        self.log_metrics(metrics, step)


@contextmanager
def start_run(kind: str, config: Any, *, dataset=None, run_name: str | None = None,
              parent_run_id: str | None = None, tags: Mapping[str, Any] | None = None,
              experiment: str = DEFAULT_EXPERIMENT) -> Iterator[Run]:
    """Start a run of job ``kind``, log ``config`` once as params and the standard tags,
    and end it FINISHED (or FAILED if the body raises, or KILLED on Ctrl-C)."""
    from mlflow.entities import Param

    c = client()
    all_tags = {TAG_KIND: kind, TAG_CODE_VERSION: code_version(), **(tags or {})}
    if dataset is not None:
        all_tags[TAG_DATASET_ID] = dataset.id
        all_tags[TAG_DATASET_HASH] = dataset.content_hash
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    mlrun = c.create_run(experiment_id(experiment), run_name=run_name,
                         tags={k: str(v) for k, v in all_tags.items()})
    run = Run(c, mlrun.info.run_id)
    params = [Param(k, v[:6000]) for k, v in flatten(config).items()]
    for i in range(0, len(params), _MAX_PARAMS_PER_BATCH):
        c.log_batch(run.run_id, params=params[i:i + _MAX_PARAMS_PER_BATCH])
    status = "FINISHED"
    try:
        yield run
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        try:
            run.flush()
        finally:
            c.set_terminated(run.run_id, status=status)


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


def search_runs(kind: str | None = None, max_results: int = 200, experiment: str = DEFAULT_EXPERIMENT):
    """Runs of one job kind (all kinds by default), newest first, as MLflow Run objects."""
    c = client()
    exp = c.get_experiment_by_name(experiment)
    if exp is None:
        return []
    filter_string = f"tags.`{TAG_KIND}` = '{kind}'" if kind else ""
    return c.search_runs([exp.experiment_id], filter_string=filter_string, max_results=max_results,
                         order_by=["attributes.start_time DESC"])
