"""Facts about files and disks that every command shares.

``STORAGE_ERRORS``: the errno values meaning "the disk cannot take this write" (full, over
quota, file size limit, read-only, I/O error on the output), each with what happened and
what to do. A command stops at once on one of them (it is never "a bad input file"), and
the CLI, the job runner and ``prepare`` word them from this one table.
"""
from __future__ import annotations

import errno

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


def is_storage_error(error: BaseException) -> bool:
    """True for an OSError saying the output cannot be written (not that an input is bad)."""
    return isinstance(error, OSError) and error.errno in STORAGE_ERRORS
