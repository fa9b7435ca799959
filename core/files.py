"""Files every command shares: atomic writes, the file lock, and what a failed write means.

- :func:`atomic_path` / :func:`write_bytes_atomic` / :func:`write_text_atomic` /
  :func:`write_json_atomic`: write beside the target and rename over it, so a reader (a page, a
  resumed job, a second process) never sees half a file, and a failed write leaves the old file
  and no temp file behind.
- :func:`write_json_final`: a terminal status that still lands on a full disk.
- :func:`file_lock`: an exclusive lock on a file, held inside a ``with`` block, from the
  ``filelock`` package (``flock`` on POSIX: the kernel drops it when the holder exits, even on
  kill -9). The lock file is never truncated, so a holder may write who it is into it.
- ``STORAGE_ERRORS``: the errno values meaning "the disk cannot take this write" (full, over
  quota, file size limit, read-only, I/O error on the output), each with what happened and
  what to do. A command stops at once on one of them (it is never "a bad input file"), and
  the CLI, the job runner and ``prepare`` word them from this one table.
"""
from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

# errno -> (what happened, what to do)
STORAGE_ERRORS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("the disk is full", "Free space there"),
    errno.EFBIG: ("a file reached the file size limit", "Raise the file size limit (ulimit -f) or use a file "
                  "system that allows larger files"),
    errno.EROFS: ("the file system is read-only", "Make it writable"),
    errno.EIO: ("the disk reported an input/output error", "Check the disk"),
}
if hasattr(errno, "EDQUOT"):
    STORAGE_ERRORS[errno.EDQUOT] = ("the disk quota is used up", "Free space there or raise the quota")

TMP_MARK = ".tmp-"   # every temp file of this module is named ``.<name>.tmp-<pid>``


def is_storage_error(error: BaseException) -> bool:
    """True for an OSError saying the output cannot be written (not that an input is bad)."""
    return isinstance(error, OSError) and error.errno in STORAGE_ERRORS


def temp_path(path: str | Path) -> Path:
    """The temp file :func:`atomic_path` writes for ``path``: hidden, beside it, named for this process."""
    path = Path(path)
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; when the block ends without error it is renamed over
    ``path`` (atomic on one file system), otherwise it is removed. For writers that want a file
    name (PIL, pandas, pydicom, numpy)."""
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:   # a Python file: a failed write raises its OSError
        f.write(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, data, indent: int | None = 1) -> None:
    """JSON via a temp file and rename (values JSON cannot hold are written as ``str``)."""
    write_text_atomic(path, json.dumps(data, indent=indent, default=str))


def write_json_final(path: Path, data: dict, keep: Sequence[str] = ("kind", "state", "message", "pid", "run_id",
                                                                     "step", "epoch", "out", "checkpoint")) -> bool:
    """Write a terminal status so that it lands even on a full disk; False if nothing could be written.

    First atomically (:func:`write_json_atomic`, which needs a new file's blocks); failing that,
    by overwriting the existing file in place, which needs no new blocks when the text is not
    longer: compact JSON of all fields, then only the ``keep`` fields."""
    try:
        write_json_atomic(path, data)
        return True
    except OSError:
        pass
    texts = [json.dumps(data, separators=(",", ":"), default=str),
             json.dumps({k: data[k] for k in keep if k in data}, separators=(",", ":"), default=str)]
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError:
        return False
    try:
        size = os.fstat(fd).st_size
        fitting = [t for t in texts if len(t.encode()) <= size]
        for text in fitting[:1] + [t for t in texts if t not in fitting[:1]]:
            raw = text.encode()
            try:
                os.pwrite(fd, raw, 0)
                os.ftruncate(fd, len(raw))
                return True
            except OSError:
                continue
        return False
    finally:
        os.close(fd)


@contextmanager
def file_lock(path: str | Path, wait: bool = True) -> Iterator[Path]:
    """An exclusive lock on ``path`` (created if missing, never truncated), held inside the block,
    which gets the path. ``wait=False``: raise BlockingIOError at once if another holder (another
    process, or another lock object in this one) has it."""
    from filelock import FileLock, Timeout

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, timeout=-1 if wait else 0, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        raise BlockingIOError(errno.EWOULDBLOCK, f"{path} is locked by another holder") from None
    try:
        yield path
    finally:
        lock.release()
