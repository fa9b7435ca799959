"""Hardening of `prepare` (issue 13, part B): a full disk stops the run at once and names the
folder, a partial run is never published and resumes; a DICOM whose header does not match its
pixel data is skipped with the reason; a kill -9 of `prepare` leaves no worker behind.

The tests use only the public CLI and ``prepare()``, so each of them fails on the code
before the fix rather than failing to import."""
from __future__ import annotations

import errno
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from core.data.datasets import build_phantom_dataset, load_dataset
from core.data.prepare import PrepareConfig, prepare, read_report
from tests.test_dicom import grey_dx

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses rlimits and /proc")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """40 phantom images, 64 px: the source of every prepare below."""
    return build_phantom_dataset(tmp_path_factory.mktemp("hardening") / "src", n=40, size=64, seed=1,
                                 workers=1).root


def cli_env(home: Path, source: Path) -> dict:
    # MEDAUG_DATA_ROOTS: the source lies in a test's tmp folder, outside the workspace
    return {**os.environ, "MEDAUG_HOME": str(home), "MEDAUG_DATA_ROOTS": str(source.parent)}


def prepare_cmd(source: Path, out: Path, size: int, workers: int) -> list[str]:
    return [sys.executable, "-m", "core", "prepare", "--source", "phantom", "--root", str(source), "--out", str(out),
            "--size", str(size), "--workers", str(workers)]


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def temp_files(*folders: Path) -> list[Path]:
    return [p for folder in folders for p in folder.rglob("*.tmp*")]


def staging(out: Path) -> Path:
    return out.with_name(f".{out.name}.partial")


# --- a full disk -------------------------------------------------------------------------------

def test_file_size_limit_stops_the_run_naming_the_folder_and_a_rerun_resumes(source, tmp_path):
    out, home = tmp_path / "ds", tmp_path / "home"
    limit = 8000  # bytes per file: the PNGs (~3 kB) fit, the journal outgrows it after ~14 files

    def small_file_limit():  # in the child: writes past the limit fail with EFBIG instead of killing it
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    full = subprocess.run(prepare_cmd(source, out, 64, 2), cwd=ROOT, env=cli_env(home, source), capture_output=True,
                          text=True, timeout=120, preexec_fn=small_file_limit)
    assert full.returncode == 2, full.stderr
    error = last_json(full.stdout)["error"]
    assert error.startswith(f"{out}: cannot write the dataset: a file reached the file size limit"), error
    assert "File too large" in error and "free there" in error and "more is needed" in error, error
    assert "Raise the file size limit (ulimit -f)" in error and "run prepare again with the same settings" in error
    finished = int(re.search(r"resumes from the (\d+) finished file", error).group(1))
    assert 0 < finished < 40
    assert not out.exists(), "a partial run must not be published as a dataset"
    assert not temp_files(tmp_path), temp_files(tmp_path)
    assert "unexpected OSError" not in full.stdout + full.stderr

    rerun = subprocess.run(prepare_cmd(source, out, 64, 2), cwd=ROOT, env=cli_env(home, source), capture_output=True,
                           text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    summary = last_json(rerun.stdout)
    assert summary["reused"] == finished and summary["prepared"] == 40 - finished
    assert summary["images"] == 40 and summary["skipped"] == 0
    assert len(load_dataset(out).manifest) == 40
    assert not staging(out).exists() and not temp_files(tmp_path)


def test_no_space_while_writing_an_image_stops_at_once(source, tmp_path, monkeypatch):
    from PIL import Image

    real, calls = Image.Image.save, []

    def disk_fills_up(image, fp, *args, **kwargs):  # the PNG writer (workers=1: in this process)
        calls.append(fp)
        if len(calls) == 6:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(image, fp, *args, **kwargs)
    monkeypatch.setattr(Image.Image, "save", disk_fills_up)
    out = tmp_path / "ds"
    with pytest.raises(OSError) as err:
        prepare(PrepareConfig(source="phantom", root=str(source), out=str(out), size=64, workers=1))
    assert len(calls) == 6, f"went on through {len(calls) - 6} more file(s) after the disk was full"
    message = str(err.value)
    assert message.startswith(f"{out}: cannot write the dataset: the disk is full; writing "
                              f"{staging(out) / 'images'}"), message
    assert "No space left on device" in message and "35 file(s) left to prepare" in message
    assert "Free space there, then run prepare again" in message and "resumes from the 5 finished" in message
    assert not out.exists() and not temp_files(tmp_path)

    monkeypatch.undo()
    result = prepare(PrepareConfig(source="phantom", root=str(source), out=str(out), size=64, workers=1))
    assert (result.reused, result.prepared, len(result.dataset.manifest)) == (5, 35, 40)
    assert result.dataset.root == out and load_dataset(out).name == "ds"


def test_no_space_for_the_pixel_cache_names_the_cache_folder_and_publishes_nothing(source, tmp_path, monkeypatch):
    out = tmp_path / "ds"

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(np.lib.format, "open_memmap", no_space)
    with pytest.raises(OSError) as err:
        prepare(PrepareConfig(source="phantom", root=str(source), out=str(out), size=64, workers=1))
    message = str(err.value)
    cache_root = Path(os.environ["MEDAUG_HOME"]) / "cache"
    assert message.startswith(f"{cache_root}/"), message
    assert "cannot write the pixel cache: the disk is full" in message, message
    assert "needed for the pixel cache" in message and "MEDAUG_HOME" in message
    assert not out.exists(), "the dataset was published before its pixel cache was built"
    assert not list(tmp_path.glob("*/dataset.json")), "the staging folder looks like a dataset"

    monkeypatch.undo()
    result = prepare(PrepareConfig(source="phantom", root=str(source), out=str(out), size=64, workers=1))
    assert (result.reused, result.prepared, len(result.dataset.manifest)) == (40, 0, 40)
    assert result.cache_path.is_file()


def test_a_failed_rerun_leaves_the_finished_dataset_in_place_and_usable(source, tmp_path, monkeypatch):
    import pandas as pd

    out = tmp_path / "ds"
    first = prepare(PrepareConfig(source="phantom", root=str(source), out=str(out), size=64, workers=1))
    image = out / first.dataset.manifest["path"].iloc[0]
    before = image.read_bytes()

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(pd.DataFrame, "to_parquet", no_space)   # the rerun fails writing its manifest
    with pytest.raises(OSError, match="the disk is full"):
        prepare(PrepareConfig(source="phantom", root=str(source), out=str(out), size=64, workers=1))
    again = load_dataset(out)   # still there, complete, the same content
    assert again.content_hash == first.dataset.content_hash and image.read_bytes() == before
    assert not list(tmp_path.glob(".*/dataset.json")), "the staging folder looks like a dataset"

    monkeypatch.undo()
    result = prepare(PrepareConfig(source="phantom", root=str(source), out=str(out), size=64, workers=1))
    assert (result.reused, result.prepared) == (40, 0)
    assert load_dataset(out).content_hash == first.dataset.content_hash and not staging(out).exists()


# --- a DICOM whose header does not match its pixels ------------------------------------------

def write_dicom(path: Path, rows: int, cols: int, bits_allocated: int, data: bytes) -> Path:
    """A native grey DICOM whose header says ``bits_allocated`` and whose pixel data is ``data``."""
    ds = grey_dx(rows, cols)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits_allocated, bits_allocated, \
        bits_allocated - 1, 0
    ds.PixelData = data
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_with_16_bit_data_under_an_8_bit_header_is_skipped_with_the_reason(tmp_path):
    src = tmp_path / "folder"
    ramp8 = (np.arange(64 * 64) % 256).astype(np.uint8)
    for name in ("No finding/a.dcm", "No finding/b.dcm", "Osteophytes/c.dcm"):
        write_dicom(src / name, 64, 64, 8, ramp8.tobytes())
    write_dicom(src / "Osteophytes/odd.dcm", 63, 63, 8, ramp8[:63 * 63].tobytes())  # odd length: padded, valid
    write_dicom(src / "Osteophytes/bad.dcm", 64, 64, 8, ramp8.astype(np.uint16).tobytes())  # 16 bits of data

    result = prepare(PrepareConfig(source="folder", root=str(src), out=str(tmp_path / "ds"), size=32, workers=1))
    assert len(result.dataset.manifest) == 4  # the rest of the load goes on
    (problem,) = result.problems
    assert (problem.file, problem.stage, problem.outcome) == ("Osteophytes/bad.dcm", "decode", "file skipped")
    assert problem.reason == ("the header does not match the pixels: the pixel data holds 8,192 bytes but Rows x "
                              "Columns x Frames x Samples x BitsAllocated/8 = 64 x 64 x 1 x 1 x 8/8 = 4,096 "
                              "(16 bits per sample, not 8)"), problem.reason
    assert problem.action == "export the file again"
    report = read_report(result.report_path)
    assert report.to_dict("records") == [{"file": "Osteophytes/bad.dcm", "stage": "decode", "reason": problem.reason,
                                          "action": "export the file again", "outcome": "file skipped"}]


# --- kill -9 -----------------------------------------------------------------------------------

def _children(pid: int) -> list[int]:
    """Live pool workers (spawned by multiprocessing) whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, ...
        if int(fields[1]) == pid and fields[0] != "Z" and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"  # a zombie has ended (its reaper is not ours)


def test_workers_die_with_a_killed_prepare(source, tmp_path):
    out = tmp_path / "ds"
    journals = [staging(out) / ".prepare" / "done.jsonl", out / ".prepare" / "done.jsonl"]
    # 2048 px PNGs: seconds of work for two workers
    proc = subprocess.Popen(prepare_cmd(source, out, 2048, 2), cwd=ROOT, env=cli_env(tmp_path / "home", source),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers: list[int] = []
    try:
        deadline = time.time() + 30
        while time.time() < deadline and proc.poll() is None:
            workers = _children(proc.pid)
            if len(workers) == 2 and any(j.is_file() and j.read_text().count("\n") >= 1 for j in journals):
                break  # both workers are at work
            time.sleep(0.02)
        assert proc.poll() is None and len(workers) == 2, "the run ended before its workers could be seen at work"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 5
        while time.time() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.05)
        assert not [w for w in workers if _alive(w)], "pool workers outlived their killed parent"
    finally:
        for w in workers:  # the test's own processes, by pid
            if _alive(w):
                os.kill(w, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
