"""The frame every long command runs in: a tracked job.

``train-gan``, ``train-classifier``, ``quality`` and ``study`` each own an output folder and run
for minutes to hours. They share one sequence, written here once (:func:`tracked_job`):

1. the folder, and its lock: one job per folder (:class:`core.jobs.FolderLock`, ``<out>/.lock``
   names the holder);
2. ``<out>/status.json`` (:class:`StatusFile`), which pages and the job runner read: merged
   field by field, rewritten atomically at most every 2 s and at every state change, with the
   process's identity (pid, host, start time) so a reader can tell a dead job from a running one
   (:func:`read_status`);
3. SIGTERM (a job runner's cancel) becomes a clean ``cancelled``: the MLflow run ends KILLED,
   the status says cancelled, and the error says how to continue;
4. a lost tracking store never stops the job (:meth:`TrackedJob.tracking_trouble`: the status
   carries the warning until the store is back);
5. any other failure ends the status as ``failed`` with one readable sentence (a terminal state
   the command wrote itself, such as ``diverged``, is kept), even on a full disk
   (:func:`core.files.write_json_final`); the lock is released only after that.

A command then reads as: parse and validate (before any side effect), ``with tracked_job(...)
as job:``, ``with job.run(...)`` for its MLflow run, call the trainer with callbacks, summarise.
"""
from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from core.cli import error_text, log
from core.files import write_json_atomic, write_json_final
from core.jobs import ACTIVE_STATUS, TERMINAL, FolderLock, process_gone, process_identity

STATUS_FILE = "status.json"
STATUS_EVERY_S = 2.0


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_status(out: str | Path) -> dict | None:
    """The status of a job folder, or None if it has none (yet). A status that says the job is at
    work while its process is gone reads as ``died``."""
    path = Path(out) / STATUS_FILE
    try:
        status = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if status.get("state") in ACTIVE_STATUS and process_gone(status.get("pid"), status.get("host"),
                                                              status.get("pid_start")):
        status = {**status, "state": "died", "message": f"its process {status.get('pid')} ended without "
                                                        f"reporting (killed?); continue with --resume --out {out}"}
    return status


class StatusFile:
    """``<out>/status.json``, merged field by field and rewritten at most every ``every`` seconds."""

    def __init__(self, folder: Path, kind: str, every: float = STATUS_EVERY_S, **fields):
        self.path = Path(folder) / STATUS_FILE
        self.every = every
        self.fields = {"kind": kind, **process_identity(), "started": now_iso(), **fields}
        self._last = 0.0

    def update(self, force: bool = False, **fields) -> None:
        self.fields.update(fields)
        if force or time.monotonic() - self._last >= self.every:
            write_json_atomic(self.path, {**self.fields, "updated": now_iso()})
            self._last = time.monotonic()

    def end(self, state: str, message: str, **fields) -> bool:
        """Record a terminal ``state``; never raises. On a full disk the file is overwritten in
        place (:func:`core.files.write_json_final`); False if even that failed, and the job
        runner then records the outcome from the command's JSON line."""
        self.fields.update(fields, state=state, message=message)
        ok = write_json_final(self.path, {**self.fields, "updated": now_iso()})
        if not ok:
            log(f"  status: could not record state {state!r} in {self.path} (the disk is full?)")
        return ok

    @property
    def ended(self) -> bool:
        return self.fields.get("state") in TERMINAL


class TrackedJob:
    """What the body of :func:`tracked_job` gets: the folder, its status file and its lock."""

    def __init__(self, command: str, out: Path, status: StatusFile, lock: FolderLock):
        self.command, self.out, self.status, self.lock = command, out, status, lock

    def tracking_trouble(self, message: str) -> None:
        """The store failed or recovered (:mod:`core.tracking` queues and retries): say so, keep working."""
        log(f"  tracking: {message}")
        self.status.update(force=True, warning=None if "reachable again" in message else message)

    @contextmanager
    def run(self, resume_from: str | None, kind: str, params, running: str = "training", **options) -> Iterator:
        """The job's MLflow run (:func:`core.tracking.continue_run`: a new one, or the one a resumed
        checkpoint names), with :meth:`tracking_trouble` as its error callback. Once it is open the
        lock and the status name it and the status says ``running`` (message ``running``)."""
        from core import tracking

        with tracking.continue_run(resume_from, kind, params, on_error=self.tracking_trouble, **options) as run:
            if resume_from:
                log(f"  resume: {run.note}")
            self.lock.note(run_id=run.run_id)
            self.status.update(force=True, state="running", message=running, run_id=run.run_id)
            yield run


@contextmanager
def tracked_job(command: str, out: Path, cancelled: Callable[[dict], str], **status_fields) -> Iterator[TrackedJob]:
    """Run the block as ``command``'s job in folder ``out`` (see the module docstring).

    ``cancelled(status fields)`` says where the job stopped and how to continue, for the error a
    cancel ends with (``"at step 40; continue with --resume --out OUT"``). ``status_fields`` are
    the status file's first fields (``state`` starts as ``starting``)."""
    out.mkdir(parents=True, exist_ok=True)
    lock = FolderLock(out, command).acquire()
    status = StatusFile(out, kind=command, out=str(out), **{"state": "starting", "message": "starting",
                                                             "run_id": None, **status_fields})
    job = TrackedJob(command, out, status, lock)

    def on_sigterm(signum, frame):   # a job runner's cancel: the run ends KILLED, the status cancelled
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        status.update(force=True)
        yield job
    except KeyboardInterrupt:
        status.end("cancelled", "cancelled")
        raise ValueError(f"{command} cancelled {cancelled(status.fields)}.") from None
    except BaseException as e:
        if not status.ended:    # a state the command recorded itself (diverged) stays
            status.end("failed", error_text(e))
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        lock.release()   # held until the outcome is on disk
