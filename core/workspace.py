"""The workspace folder: every generated thing (datasets, caches, jobs, MLflow store).

Defaults to ``./workspace``; ``MEDAUG_HOME`` overrides it. The folder is gitignored.
"""
from __future__ import annotations

import os
from pathlib import Path

ENV_HOME = "MEDAUG_HOME"


def workspace_root() -> Path:
    """The workspace root, created on first use."""
    root = Path(os.environ.get(ENV_HOME) or "workspace").expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def workspace_dir(name: str) -> Path:
    """A named sub-folder of the workspace (``datasets``, ``cache``, ``jobs``, ``mlartifacts``)."""
    path = workspace_root() / name
    path.mkdir(parents=True, exist_ok=True)
    return path
