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

States: queued -> running -> finished | failed | cancelled | died (the supervisor vanished).
A command may report its own terminal state in status.json (e.g. ``diverged``); it wins.
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ACTIVE = ("queued", "running")
TERMINAL = ("finished", "failed", "cancelled", "died", "diverged")
ENV_MAX_JOBS = "MEDAUG_MAX_JOBS"
_ROOT = Path(__file__).resolve().parent.parent


def jobs_dir() -> Path:
    from core.workspace import workspace_dir

    return workspace_dir("jobs")


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON via a temp file and rename, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


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
    gpus = Path("/proc/driver/nvidia/gpus")  # no torch import just to count GPUs
    return max(1, len(list(gpus.iterdir()))) if gpus.is_dir() else 1


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
    if job.meta["state"] == "running" and not _alive(job):
        # the supervisor is gone without recording an outcome (machine restart, kill -9)
        job.meta = _update(folder, state="died", ended=time.time(),
                           error="The job's process ended without reporting; see log.txt.")
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


def submit(argv: Sequence[str], config: dict | None = None, label: str = "") -> Job:
    """Queue ``python -m core <argv> [--config config.json]`` and start it if a slot is free.

    ``config``, when given, is written to the job folder as JSON and passed as ``--config``;
    put ``out`` in it as ``"{job_dir}"`` to have the command write into the job folder."""
    if not argv or not isinstance(argv[0], str):
        raise ValueError("argv must start with a core command name, like ['train-gan', ...].")
    job_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    folder = jobs_dir() / job_id
    folder.mkdir(parents=True)
    argv = [a.replace("{job_dir}", str(folder)) for a in argv]
    if config is not None:
        config = json.loads(json.dumps(config).replace("{job_dir}", str(folder).replace("\\", "\\\\")))
        write_json_atomic(folder / "config.json", config)
        argv += ["--config", str(folder / "config.json")]
    write_json_atomic(folder / "job.json", {"state": "queued", "argv": list(argv), "label": label,
                                            "created": time.time()})
    schedule()
    return get_job(job_id)


@contextmanager
def _queue_lock():
    with open(jobs_dir() / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


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
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        _update(folder, child_pid=child.pid)
        code = child.wait()
    meta = _read_json(folder / "job.json")
    if meta.get("state") == "running":  # not cancelled meanwhile
        status = _read_json(folder / "status.json")
        state = status.get("state") if status.get("state") in TERMINAL else ("finished" if code == 0 else "failed")
        _update(folder, state=state, exit_code=code, ended=time.time(),
                **({"error": _last_error(folder)} if state == "failed" else {}))
    schedule()
    return code


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
