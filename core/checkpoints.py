"""Checkpoints of every trainer: atomic save, load by format, the resume check, RNG state.

A checkpoint is a dict saved with ``torch.save`` and loaded with ``weights_only=True`` (no
pickle code runs). Each kind names itself with a ``format`` string (``medaug-gan-checkpoint/1``,
``medaug-classifier-checkpoint/1``, ...); :func:`load` refuses a file of another kind, a
damaged file, or one that lacks a required key, with a :class:`CheckpointError` that names the
file and says what to do. :func:`check_resume` decides whether a run may continue from one:
only the fields a kind lists as resumable may change, and the data must be the same.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from core.files import atomic_path


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message names the file and says what to do."""


@dataclass(frozen=True)
class Kind:
    """One kind of checkpoint: its format string, the keys it must hold, and how to make one."""
    format: str          # the "format" value every file of this kind carries
    what: str            # how a message names it: "GAN", "classifier"
    command: str         # the command that writes it: "train-gan"
    required: tuple[str, ...]


def save(path: str | Path, state: dict) -> None:
    """Write atomically: a temp file in the same folder, then rename over ``path``, so a failed
    write (a full disk) leaves the last good checkpoint. A write failure raises the OSError
    (ENOSPC, EFBIG, ...) naming ``path``, not torch's bare RuntimeError."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:   # a Python file: a failed write keeps its OSError
            torch.save(state, f)
    except RuntimeError as e:
        cause = e.__context__
        if isinstance(cause, OSError) and cause.errno is not None:
            raise OSError(cause.errno, cause.strerror or os.strerror(cause.errno), str(path)) from e
        raise


def load(path: str | Path, kind: Kind, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint of ``kind``; a missing, damaged or foreign file gets a :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint here; train one with `python -m core {kind.command} ... "
                              f"--out {path.parent}`.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:   # zip, pickle and EOF errors all mean the same thing to a user
        raise CheckpointError(f"{path}: cannot be read as a {kind.what} checkpoint (corrupt or truncated: "
                              f"{type(e).__name__}: {str(e)[:200]}). Delete it and train again, "
                              f"or point to an intact copy.") from e
    if not isinstance(state, dict) or state.get("format") != kind.format:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: not a MedAug {kind.what} checkpoint (format {found!r}, expected "
                              f"{kind.format!r}); use a checkpoint written by {kind.command}.")
    missing = [k for k in kind.required if k not in state]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}; it is incomplete. Train again.")
    return state


def check_resume(state: dict, config: dict, resumable: Iterable[str], same_data: bool, data_differs: str,
                 where: str) -> None:
    """Raise :class:`CheckpointError` unless a run with ``config`` (a config's ``to_dict()``) may
    continue from ``state``: only ``resumable`` fields may differ from the checkpoint's config, and
    the data must be the same (``same_data``; ``data_differs`` says how it differs otherwise).
    Commands call it before any side effect, trainers again when they load."""
    old, resumable = state["config"], set(resumable)
    changed = [k for k in config if k not in resumable and old.get(k) != config[k]]
    if changed:
        diffs = ", ".join(f"{k}: {old.get(k)!r} -> {config[k]!r}" for k in changed)
        raise CheckpointError(f"{where}: cannot resume with a different configuration ({diffs}); "
                              f"use the checkpoint's settings or a new --out folder.")
    if not same_data:
        raise CheckpointError(f"{where}: {data_differs}; resume on the same data or start a new --out folder.")


def load_weights(modules: Mapping[str, object], state: dict, where: str) -> None:
    """``module.load_state_dict(state[key])`` for each key (networks and optimisers); a mismatch is a
    :class:`CheckpointError` (a damaged file, or one from another configuration)."""
    try:
        for key, module in modules.items():
            module.load_state_dict(state[key])
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"{where}: weights do not fit the network ({str(e)[:200]}); the checkpoint "
                              f"is damaged or from another configuration.") from e


def rng_state(device: torch.device) -> dict:
    """The global torch RNG (and CUDA's on a GPU), for a checkpoint; :func:`restore_rng` puts it back."""
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else []}


def restore_rng(rng: dict, device: torch.device) -> None:
    torch.set_rng_state(rng["torch"].cpu())   # map_location may have moved it
    if device.type == "cuda" and rng.get("cuda"):
        torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])


def saved_at() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
