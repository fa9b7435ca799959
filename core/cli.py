"""Command line: each command prints a readable log, then one JSON summary line last.

Scripts and tests read the last line: ``json.loads(stdout.splitlines()[-1])``. Every failure,
a usage error (unknown flag or choice, missing argument) included, prints the reason to stderr
and ``{"ok": false, "command": ..., "error": "..."}`` last on stdout, and exits with status 2.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys


# Each module has ``register(sub)``, adding its sub-commands to the argparse sub-parsers.
# Modules must be cheap to import: heavy imports go inside the command functions.
COMMAND_MODULES = (
    "core.data.commands",
    "core.data.ingest_commands",
    "core.jobs",
    "core.balance",
    "core.augment.commands",
    "core.gan.commands",
    "core.diffusion.commands",
    "core.classify.commands",
    "core.quality.commands",
    "core.study.commands",
    "core.report",
    "core.reader_study",
    "core.tracking",
)


def log(msg: str) -> None:
    print(msg, flush=True)


def progress_printer(every: float = 0.1):
    """on_progress(done, total, message) callback that prints a line at each ``every`` fraction."""
    state = {"next": 0.0}

    def report(done: int, total: int, message: str) -> None:
        frac = done / total if total else 1.0
        if frac >= state["next"] or done == total:
            log(f"  [{done:>6}/{total}] {frac:6.1%}  {message}")
            state["next"] = frac + every
    return report


def read_config(path: str | None, command: str) -> dict:
    """The ``--config JSON`` object of ``command``'s fields ({} without one); flags are laid over it."""
    if not path:
        return {}
    from pathlib import Path

    try:
        fields = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"--config {path}: cannot read it as JSON ({e}); write one object of {command} fields.") from e
    if not isinstance(fields, dict):
        raise ValueError(f"--config {path}: expected one JSON object of {command} fields.")
    return fields


def job_fields(args, command: str, required: tuple[str, ...] = ("data", "out"),
               rename: dict[str, str] | None = None) -> dict:
    """A job's fields: its ``--config`` JSON overlaid by the flags given on the command line (a flag
    left at None is not given). ``rename`` maps argparse names to field names (``class_name`` ->
    ``class``); ``required`` fields must be set one way or the other."""
    rename = rename or {}
    fields = read_config(getattr(args, "config", None), command)
    for old, new in rename.items():
        if old in fields:
            fields[new] = fields.pop(old)
    for key, value in vars(args).items():
        if key not in ("config", "func", "command") and value is not None:
            fields[rename.get(key, key)] = value
    for key in required:
        if not fields.get(key):
            raise ValueError(f"{command} needs --{key.replace('_', '-')} (or \"{key}\" in --config).")
    return fields


PROG = "python -m core"


class UsageError(ValueError):
    """A command line argparse rejects; raised by :class:`Parser` instead of exiting."""

    def __init__(self, parser: argparse.ArgumentParser, message: str):
        super().__init__(message)
        self.parser = parser
        self.command = parser.prog.removeprefix(PROG).strip() or None


class Parser(argparse.ArgumentParser):
    """argparse that raises :class:`UsageError` rather than exiting, so :func:`main` can end a
    usage error with the JSON line too. Sub-command parsers are of this class as well."""

    def error(self, message: str):
        raise UsageError(self, message)


def error_text(e: BaseException) -> str:
    """One readable sentence for a failure; a full disk (or quota, file size limit, read-only file
    system) says so and what to do, whatever raised it."""
    from core.files import STORAGE_ERRORS, is_storage_error

    if is_storage_error(e):
        import errno
        import os

        what, action = STORAGE_ERRORS[e.errno]
        where = f" {e.filename}" if e.filename else ""
        return (f"Cannot write{where}: {e.strerror or os.strerror(e.errno)} ({errno.errorcode.get(e.errno, e.errno)}): "
                f"{what}. {action} (or choose another --out) and run again; a trainer continues from "
                f"its last good checkpoint with --resume.")
    if isinstance(e, (ValueError, OSError)):   # our errors are ValueErrors that say what to do
        return str(e)
    return f"{type(e).__name__}: {e}"


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=PROG, description="MedAug Studio: headless commands. "
               "Each prints a readable log and one JSON summary line last.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return p


def _failed(command: str | None, error: str) -> int:
    print(json.dumps({"ok": False, "command": command, "error": error}), flush=True)
    return 2


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as e:
        e.parser.print_usage(sys.stderr)
        print(f"{e.parser.prog}: error: {e}", file=sys.stderr, flush=True)
        return _failed(e.command, f"{e}; see `{e.parser.prog} --help`.")
    try:
        summary = args.func(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr, flush=True)
        return _failed(args.command, "interrupted (Ctrl-C)")
    except Exception as e:
        if not isinstance(e, (ValueError, OSError)):
            import traceback   # an unexpected failure: the traceback is for whoever fixes it

            traceback.print_exc(file=sys.stderr)
        text = error_text(e)
        print(f"error: {text}", file=sys.stderr, flush=True)
        return _failed(args.command, text)
    print(json.dumps({"ok": True, "command": args.command, **summary}, default=str), flush=True)
    return 0
