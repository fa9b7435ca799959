"""python -m core: help lists the commands; each prints a log and one JSON line last."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ})


def last_json(proc: subprocess.CompletedProcess) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_help_lists_commands():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for command in ("phantom", "dataset", "cache"):
        assert command in proc.stdout


def test_phantom_dataset_and_cache_commands(tmp_path):
    out = tmp_path / "ph"
    proc = run_cli("phantom", "--out", str(out), "--n", "40", "--size", "64", "--seed", "3", "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    summary = last_json(proc)
    assert summary["ok"] and summary["images"] == 40 and summary["out"] == str(out.resolve())
    assert sum(summary["classes"].values()) == 40 and summary["seconds"] > 0
    assert len(proc.stdout.splitlines()) > 3  # a readable log comes first

    info = last_json(run_cli("dataset", "--data", str(out), "--verify"))
    assert info["images"] == 40 and info["problems"] == [] and info["synthetic"] is True
    assert info["content_hash"] == summary["content_hash"]

    cache = last_json(run_cli("cache", "--data", str(out), "--size", "32"))
    assert cache["images"] == 40 and cache["failed"] == 0 and Path(cache["path"]).is_file()


def test_errors_end_with_a_json_line(tmp_path):
    proc = run_cli("dataset", "--data", str(tmp_path / "nowhere"))
    assert proc.returncode == 2
    summary = last_json(proc)
    assert summary["ok"] is False and "not a MedAug dataset folder" in summary["error"]
    assert "nowhere" in proc.stderr
