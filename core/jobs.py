"""Background jobs: long work (GAN and classifier training, studies) runs in a child process,
never in the Streamlit script thread.

Layout, one folder per job under ``<workspace>/jobs/<job id>/``:
    job.json     lifecycle, written by this module only (atomic): state, argv, pid, times, exit code
    status.json  progress, written by the job's own command (atomic): step, epoch, eta_s, losses, run_id
    log.txt      the command's stdout and stderr
    config.json  the job's config, when it was submitted with one (passed as ``--config``)

A job is started as ``python -m core job-run <id>``: a small supervisor in a new session
(detached from the server's process group) that runs ``python -m core <argv>``, records the
outcome, and then starts the next queued job. So the queue advances with no page open, and
the job list is rebuilt from the folders after a page reload or a server restart.

States: queued -> running -> finished | failed | cancelled | died (the supervisor vanished, or
the command was killed by a signal). A command may report its own terminal state in status.json
(e.g. ``diverged``); it wins. When the command ends without a terminal status (a full disk left
it unable to write one, kill -9), the supervisor writes the outcome into status.json itself.

Also here, for every command that owns a folder: :class:`FolderLock` (one job per output
folder, ``<out>/.lock`` names its holder) and :func:`process_gone` (is the process a status file
or an MLflow run names still there?). Atomic writes and the lock itself are :mod:`core.files`.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from core.files import file_lock, write_json_atomic, write_json_final

ACTIVE = ("queued", "running")
TERMINAL = ("finished", "failed", "cancelled", "died", "diverged")
ENV_MAX_JOBS = "MEDAUG_MAX_JOBS"
ENV_JOB_ID = "MEDAUG_JOB_ID"         # set by the supervisor for its command (named in <out>/.lock)
LOCK_FILE = ".lock"
ACTIVE_STATUS = ("starting", "running", "queued")   # status.json states of a command still at work
_ROOT = Path(__file__).resolve().parent.parent


def jobs_dir() -> Path:
    from core.workspace import workspace_dir

    return workspace_dir("jobs")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def max_concurrent() -> int:
    """``MEDAUG_MAX_JOBS``, else one per GPU, else 1 (a demo server is not flooded)."""
    env = os.environ.get(ENV_MAX_JOBS)
    if env:
        try:
            value = int(env)
        except ValueError:
            raise ValueError(f"{ENV_MAX_JOBS}={env!r}: expected a whole number of jobs, like 1 or 2.") from None
        if value < 1:
            raise ValueError(f"{ENV_MAX_JOBS}={value}: at least 1 job must be allowed to run.")
        return value
    return max(1, gpu_count())


def gpu_count() -> int:
    """NVIDIA GPUs on this machine, read from the driver (no torch import just to count them)."""
    gpus = Path("/proc/driver/nvidia/gpus")
    return len(list(gpus.iterdir())) if gpus.is_dir() else 0


@dataclass
class Job:
    id: str
    dir: Path
    meta: dict                                    # job.json
    status: dict = field(default_factory=dict)    # status.json (the command's progress)

    @property
    def state(self) -> str:
        return self.meta["state"]

    @property
    def command(self) -> str:
        return self.meta["argv"][0]

    @property
    def label(self) -> str:
        return self.meta.get("label") or " ".join(self.meta["argv"][:1])

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.dir / "log.txt", "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 64_000))
                return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def summary(self) -> dict:
        """The command's JSON summary line, once it has finished (``{}`` before)."""
        for line in reversed(self.log_tail(5).splitlines()):
            if line.startswith("{"):
                try:
                    return json.loads(line)
                except json.JSONDecodeError:
                    return {}
        return {}


def _load(folder: Path) -> Job | None:
    meta = _read_json(folder / "job.json")
    if not meta:
        return None
    job = Job(id=folder.name, dir=folder, meta=meta, status=_read_json(folder / "status.json"))
    if job.meta["state"] == "running" and not _alive(job) and not _child_alive(job):
        # the supervisor is gone without recording an outcome (machine restart, kill -9): the
        # command's own terminal status, if it wrote one, else died
        own = job.status.get("state")
        if own in TERMINAL:
            job.meta = _update(folder, state=own, ended=time.time(),
                               **({"error": job.status.get("message") or _last_error(folder)}
                                  if own != "finished" else {}))
        else:
            job.meta = _update(folder, state="died", ended=time.time(),
                               error="The job's process ended without reporting; see log.txt.")
            _end_status(folder, job.status, "died", job.meta["error"])
    if job.state in TERMINAL and job.status.get("state") in ACTIVE_STATUS:
        # the command could not record its end (full disk, kill -9): show the job's outcome instead
        job.status = {**job.status, "state": job.state, "message": job.meta.get("error") or job.state}
    return job


def get_job(job_id: str) -> Job:
    job = _load(jobs_dir() / job_id)
    if job is None:
        raise ValueError(f"No job {job_id!r} in {jobs_dir()}; list jobs with `python -m core jobs`.")
    return job


def list_jobs() -> list[Job]:
    """All jobs, newest first, rebuilt from the job folders."""
    jobs = [j for d in jobs_dir().iterdir() if d.is_dir() and (j := _load(d))]
    return sorted(jobs, key=lambda j: j.meta.get("created", 0), reverse=True)


# commands whose jobs are validated before they are queued: command -> module with ``validate(fields)``,
# the same checks the command itself runs on its --config before its first side effect
VALIDATED = {"train-gan": "core.gan.commands", "train-diffusion": "core.diffusion.commands",
             "train-classifier": "core.classify.commands",
             "quality": "core.quality.commands", "study": "core.study.commands", "balance": "core.balance"}


def validate(command: str, config: Mapping):
    """Raise ValueError (naming the field and what to do) unless ``config`` is a valid job of ``command``;
    returns what the command's ``validate`` returns (e.g. the parsed config)."""
    import importlib

    if command not in VALIDATED:
        raise ValueError(f"{command!r} is not a job command with a config; choose one of {', '.join(VALIDATED)}.")
    return importlib.import_module(VALIDATED[command]).validate(dict(config))


def submit(command: str, config: Mapping | None = None, label: str = "", argv: Sequence[str] = ()) -> Job:
    """Queue ``python -m core <command> [argv] [--config config.json]`` and start it if a slot is free.

    ``config`` (the command's ``--config`` fields, e.g. a config dataclass's ``to_dict()`` plus
    ``data`` and ``out``) is validated first (:func:`validate`), so a bad value is an error here,
    not a failed job; the commands of :data:`VALIDATED` need one. It is written to the job folder
    as JSON and passed as ``--config``; put ``out`` in it as ``"{job_dir}"`` to have the command
    write into the job folder. ``argv``: flags for commands without a config (``phantom``)."""
    if not isinstance(command, str) or not command:
        raise ValueError("command must be a core command name, like 'train-gan'.")
    if command in VALIDATED:
        if config is None:
            raise ValueError(f"{command} jobs are submitted with a config (its --config fields).")
        validate(command, config)
    job_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    folder = jobs_dir() / job_id
    folder.mkdir(parents=True)
    argv = [command, *(a.replace("{job_dir}", str(folder)) for a in argv)]
    if config is not None:
        config = json.loads(json.dumps(dict(config)).replace("{job_dir}", str(folder).replace("\\", "\\\\")))
        write_json_atomic(folder / "config.json", config)
        argv += ["--config", str(folder / "config.json")]
    write_json_atomic(folder / "job.json", {"state": "queued", "argv": argv, "label": label,
                                            "created": time.time()})
    schedule()
    return get_job(job_id)


def _queue_lock():
    return file_lock(jobs_dir() / LOCK_FILE)


class FolderBusy(ValueError):
    """Another live process holds a folder's lock; the message names it and says what to do."""


class FolderLock:
    """One job per output folder: an exclusive flock on ``<folder>/.lock``, held for the job's life
    (the kernel drops it when the process ends, even on kill -9). The file names the holder:
    command, pid, host, start time, job id and (once known, :meth:`note`) MLflow run id, so a
    second job refuses with :class:`FolderBusy` naming the first."""

    def __init__(self, folder: str | Path, command: str):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.command = command
        self.record: dict = {}
        self._stack: ExitStack | None = None

    def acquire(self) -> FolderLock:
        stack = ExitStack()
        try:
            stack.enter_context(file_lock(self.path, wait=False))
        except BlockingIOError:
            raise FolderBusy(self._busy()) from None
        self._stack = stack
        self.record = {"command": self.command, **process_identity(),
                       "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "job_id": os.environ.get(ENV_JOB_ID),
                       "run_id": None}
        self.note()
        return self

    def note(self, **fields) -> None:
        """Add ``fields`` (e.g. ``run_id``) to the holder's record; best effort, as a full disk must
        not stop the job (the lock itself needs no disk space)."""
        self.record.update(fields)
        try:
            with open(self.path, "r+") as f:   # the lock is ours: rewrite the holder in place
                f.truncate()
                f.write(json.dumps(self.record))
        except OSError:
            pass

    def release(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _busy(self) -> str:
        holder = _read_json(self.path)
        parts = [f"pid {holder['pid']}" + (f" on {holder['host']}" if holder.get("host") else "")
                 if holder.get("pid") else "",
                 f"started {holder['started']}" if holder.get("started") else "",
                 f"job {holder['job_id']}" if holder.get("job_id") else "",
                 f"MLflow run {holder['run_id']}" if holder.get("run_id") else ""]
        details = ", ".join(p for p in parts if p) or "details not written yet"
        who = f"{holder.get('command') or 'another job'} ({details})"
        cancel = (f"cancel it (`python -m core jobs --cancel {holder['job_id']}`)" if holder.get("job_id")
                  else f"stop it (kill {holder['pid']})" if holder.get("pid") else "stop it")
        return (f"{self.folder} is in use by {who}; two jobs writing one folder would overwrite each other's "
                f"checkpoint. Wait for it to end, {cancel}, or choose another --out.")


def schedule() -> list[str]:
    """Start queued jobs (oldest first) while fewer than :func:`max_concurrent` are running."""
    started = []
    with _queue_lock():
        jobs = sorted(list_jobs(), key=lambda j: j.meta.get("created", 0))
        free = max_concurrent() - sum(j.meta["state"] == "running" for j in jobs)
        for job in [j for j in jobs if j.meta["state"] == "queued"][:max(0, free)]:
            proc = subprocess.Popen([sys.executable, "-m", "core", "job-run", job.id], cwd=_ROOT,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
            _update(job.dir, state="running", pid=proc.pid, started=time.time())
            started.append(job.id)
    return started


def cancel(job_id: str, grace_s: float = 5.0) -> Job:
    """Stop a queued or running job: its whole process group gets SIGTERM, then SIGKILL."""
    job = get_job(job_id)
    if job.meta["state"] == "queued":
        _update(job.dir, state="cancelled", ended=time.time())
    elif job.meta["state"] == "running":
        pid = job.meta["pid"]
        _update(job.dir, state="cancelled", ended=time.time())  # first, so the supervisor keeps it
        _signal_group(pid, signal.SIGTERM)
        deadline = time.time() + grace_s
        while _pid_alive(pid) and time.time() < deadline:
            time.sleep(0.05)
        if _pid_alive(pid):
            _signal_group(pid, signal.SIGKILL)
        schedule()
    return get_job(job_id)


def run_supervised(job_id: str) -> int:
    """Body of ``python -m core job-run``: run the job's command, record the outcome, then
    start what is queued. Runs in its own session, so cancel() can stop the whole group."""
    folder = jobs_dir() / job_id
    meta = _read_json(folder / "job.json")
    if meta.get("state") not in ("running", "queued"):
        return 0
    _update(folder, state="running", pid=os.getpid(), started=meta.get("started") or time.time())
    with open(folder / "log.txt", "ab") as log:
        child = subprocess.Popen([sys.executable, "-m", "core", *meta["argv"]], cwd=_ROOT,
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 env={**os.environ, ENV_JOB_ID: job_id})
        _update(folder, child_pid=child.pid, child_start=process_start(child.pid))
        code = child.wait()
    meta = _read_json(folder / "job.json")
    status = _read_json(folder / "status.json")
    running = meta.get("state") == "running"   # not cancelled meanwhile
    error = None
    if running:
        if status.get("state") in TERMINAL:
            state = status["state"]
        else:
            state = "finished" if code == 0 else "died" if code < 0 else "failed"
        error = (_signal_error(code, status) if code < 0 and state == "died"
                 else _last_error(folder) if state == "failed" else None)
    else:
        state = meta.get("state", "failed")
        error = meta.get("error")
    if status.get("state") in ACTIVE_STATUS:
        # the command ended without recording it (its disk is full, it was killed): say how it ended, before
        # job.json does, so whoever sees the job ended reads the same outcome in its status
        _end_status(folder, status, state, error or (state if state in ("finished", "cancelled")
                                                     else f"exit code {code}"))
    if running:
        _update(folder, state=state, exit_code=code, ended=time.time(), **({"error": error} if error else {}))
    schedule()
    return code


def _signal_error(code: int, status: dict) -> str:
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    where = f" at step {status['step']}" if status.get("step") else ""
    hint = ("; it exceeded the file size limit (ulimit -f)" if name == "SIGXFSZ"
            else "; another program or the system (out of memory?) killed it" if name == "SIGKILL" else "")
    return f"The command was killed by {name}{where}{hint}. Continue from its last checkpoint with --resume."


def _end_status(folder: Path, status: dict, state: str, message: str) -> None:
    """Record a terminal ``state`` in a job's status.json that still says it is at work."""
    path = folder / "status.json"
    if path.is_file():
        write_json_final(path, {**status, "state": state, "message": message,
                                "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def _last_error(folder: Path) -> str:
    job = Job(id=folder.name, dir=folder, meta={})
    summary = job.summary()
    if summary.get("error"):
        return summary["error"]
    tail = [ln for ln in job.log_tail(40).splitlines() if ln.strip()]
    return tail[-1] if tail else "The command failed without output."


def _update(folder: Path, **changes) -> dict:
    meta = {**_read_json(folder / "job.json"), **changes}
    write_json_atomic(folder / "job.json", meta)
    return meta


def _pid_alive(pid: int) -> bool:
    if not pid or pid <= 0:   # os.kill(0, ...) would ask about our own process group
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot, field 22 of /proc/PID/stat); None if unknown."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def process_identity() -> dict:
    """This process as status files, lock files and MLflow tags record it: pid, host, pid_start."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "pid_start": process_start(os.getpid())}


def process_gone(pid, host: str | None = None, pid_start=None) -> bool:
    """True when the process that ``pid`` (+ ``host``, ``pid_start``) names has surely ended: it is
    on this host (None: assumed) and no process has that pid, or another one has reused it.
    Another host's process cannot be checked: False."""
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return False
    if pid <= 0 or (host and host != socket.gethostname()):
        return False
    if not _pid_alive(pid):
        return True
    if pid_start not in (None, ""):
        now = process_start(pid)
        return now is not None and str(now) != str(pid_start)
    return False


def _alive(job: Job) -> bool:
    """The job's supervisor is still running (and the pid was not reused by another program)."""
    pid = job.meta.get("pid")
    if not pid or not _pid_alive(pid):
        return False
    if time.time() - job.meta.get("started", 0) < 30:
        return True  # just started: /proc may still show the parent's command line (fork before exec)
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return True
    return job.id in cmdline


def _child_alive(job: Job) -> bool:
    """The job's command still runs (its supervisor may be gone: kill -9 of the supervisor alone)."""
    pid = job.meta.get("child_pid")
    return bool(pid) and not process_gone(pid, None, job.meta.get("child_start"))


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(os.getpgid(pid), sig)
    except (ProcessLookupError, PermissionError):
        pass


# --- CLI -------------------------------------------------------------------------------------

def _cmd_jobs(args) -> dict:
    from core.cli import log

    if args.cancel:
        job = cancel(args.cancel)
        log(f"{job.id}: {job.state}")
        return {"id": job.id, "state": job.state}
    jobs = list_jobs()
    for job in jobs:
        progress = job.status.get("step")
        log(f"{job.id}  {job.state:<10} {job.label:<40} {'' if progress is None else f'step {progress}'}")
    log(f"{len(jobs)} job(s); at most {max_concurrent()} run at once ({ENV_MAX_JOBS}).")
    return {"jobs": [{"id": j.id, "state": j.state, "argv": j.meta["argv"]} for j in jobs]}


def _cmd_job_run(args) -> dict:
    code = run_supervised(args.job_id)
    return {"id": args.job_id, "exit_code": code, "state": get_job(args.job_id).state}


def register(sub) -> None:
    s = sub.add_parser("jobs", help="list background jobs (or cancel one)")
    s.add_argument("--cancel", metavar="JOB_ID", help="stop this job and its processes")
    s.set_defaults(func=_cmd_jobs)
    s = sub.add_parser("job-run", help="(internal) supervise one queued job; started by core.jobs")
    s.add_argument("job_id")
    s.set_defaults(func=_cmd_job_run)
