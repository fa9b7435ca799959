"""Command line: each command prints a readable log, then one JSON summary line last.

Scripts and tests read the last line: ``json.loads(stdout.splitlines()[-1])``. A failed
command prints ``{"ok": false, "error": "..."}`` last and exits with status 2.
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
    "core.classify.commands",
    "core.quality.commands",
    "core.study.commands",
    "core.report",
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m core", description="MedAug Studio: headless commands. "
                                "Each prints a readable log and one JSON summary line last.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = args.func(args)
    except (ValueError, OSError) as e:  # our errors are ValueErrors that say what to do
        print(f"error: {e}", file=sys.stderr, flush=True)
        print(json.dumps({"ok": False, "command": args.command, "error": str(e)}), flush=True)
        return 2
    print(json.dumps({"ok": True, "command": args.command, **summary}, default=str), flush=True)
    return 0
