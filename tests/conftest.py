"""Shared fixtures: every test runs in a temporary workspace with a temporary MLflow store."""
from __future__ import annotations

import pytest

from core.data.datasets import build_phantom_dataset


@pytest.fixture(scope="session")
def session_home(tmp_path_factory):
    return tmp_path_factory.mktemp("medaug_home")


@pytest.fixture(autouse=True)
def isolated_workspace(session_home, monkeypatch):
    """MEDAUG_HOME and MLFLOW_TRACKING_URI point at a temporary workspace and SQLite store
    (one per session: creating an MLflow schema costs seconds), never at ./workspace."""
    monkeypatch.setenv("MEDAUG_HOME", str(session_home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{session_home / 'mlflow.db'}")
    monkeypatch.delenv("MEDAUG_DATASET", raising=False)
    return session_home


@pytest.fixture(scope="session")
def small_phantom(tmp_path_factory):
    """A small phantom dataset (all 8 classes, 64 px), built once per session."""
    return build_phantom_dataset(tmp_path_factory.mktemp("data") / "phantom-small", n=160, size=64, seed=1,
                                 workers=2)
