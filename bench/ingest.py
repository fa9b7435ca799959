#!/usr/bin/env python3
"""Ingest speed: VinDr-like DICOMs (about 1,500 x 2,900 px, 12-bit, lossless JPEG 2000)
prepared at 256 and 512 px by ``core.data.prepare`` (worker processes, pylibjpeg-openjpeg,
lookup-table windowing), against a naive single-process loop timed in the same run:
``pydicom.dcmread`` with Pillow's JPEG 2000 decoder, modality LUT + VOI window on the whole
array, then a PIL resize (the same letterbox). The pixels of both must be identical.

The films are written once by ``phantom --format vindr`` into ``bench/out/`` (not timed).
The prepare time is end to end: scanning the CSVs, decoding, PNGs, manifest and pixel cache.
Peak memory: the summed RSS of the whole process tree (parent + workers), sampled every
20 ms, while preparing ``--memory-files`` films at 512 px (the films hard-linked under new
ids, so the disk holds them once).

Each repeat runs half the naive films, one prepare of all films, then the other half, and
gives one paired ratio (so both sides see the same load on a shared machine); the CPU seconds
per file of each side (workers included) are printed too.

Target: at least 1.8x the naive files/s on 2 cores; peak memory under 1.5 GB for 2,000
files at 512 px. Last line: ``ingest: ratio=<lower of the two sizes' median paired ratios> target=1.8``.
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def films(n: int, height: int, seed: int) -> Path:
    """The benchmark's VinDr folder, written on first use."""
    from core.data.vindr_export import VindrExportConfig, export_phantom_vindr

    folder = ROOT / "bench" / "out" / f"ingest-vindr-n{n}-h{height}-s{seed}"
    if not (folder / ".complete").is_file():
        t0 = time.perf_counter()
        print(f"writing {n} phantom films {height} px high into {folder} (once, not timed) ...", flush=True)
        export_phantom_vindr(folder, VindrExportConfig(n=n, height=height, seed=seed, noise=12.0,
                                                       monochrome1_fraction=0.2), overwrite=True)
        (folder / ".complete").write_text("ok")
        print(f"  written in {time.perf_counter() - t0:.0f} s", flush=True)
    return folder


def dicom_files(folder: Path) -> list[Path]:
    return sorted(p for split in ("train", "test") for p in (folder / f"{split}_images").glob("*.dicom"))


def naive(files: list[Path], size: int) -> dict[str, np.ndarray]:
    """The plain loop: pydicom + Pillow decode, window on the full array, PIL resize."""
    import pydicom
    from pydicom.pixels import pixel_array

    from core.data.cache import letterbox
    from core.data.dicom import DicomReadOptions, display_transform, quiet_uid_warnings
    from core.data.io import to_uint8

    out = {}
    options = DicomReadOptions()
    with quiet_uid_warnings():
        for f in files:
            ds = pydicom.dcmread(f)
            arr = pixel_array(ds, decoding_plugin="pillow")
            transform, _ = display_transform(ds, options, arr)
            out[f.stem] = to_uint8(letterbox(transform(arr).astype(np.float32), size))
    return out


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ppid, pages = int(fields[1]), int(fields[21])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
        rss[int(entry)] = pages * os.sysconf("SC_PAGE_SIZE")
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        total += rss.get(p, 0)
        stack += children.get(p, [])
    return total


class PeakMemory:
    """Samples the process tree's RSS in a thread; ``peak`` in bytes."""

    def __init__(self, every: float = 0.02):
        self.every, self.peak, self._stop = every, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_bytes(os.getpid()))
            time.sleep(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def prepare_once(folder: Path, size: int, out: Path, workers: int):
    from core.data.prepare import PrepareConfig, prepare

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    result = prepare(PrepareConfig(source="vindr", root=str(folder), out=str(out), size=size, workers=workers))
    return time.perf_counter() - t0, result


def linked_copy(folder: Path, dest: Path, count: int) -> Path:
    """A VinDr folder of ``count`` films: the benchmark films hard-linked under new ids."""
    import pandas as pd

    from core.data.vindr import VINDR_COLUMNS

    if (dest / ".complete").is_file():
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    rows = {s: pd.read_csv(folder / "annotations" / f"{s}.csv", dtype=str, keep_default_na=False)
            for s in ("train", "test")}
    sources = [(s, image_id) for s, df in rows.items() for image_id in df["image_id"].unique()]
    (dest / "annotations").mkdir(parents=True)
    out_rows = {"train": [], "test": []}
    for s in ("train", "test"):
        (dest / f"{s}_images").mkdir()
    for k in range(count):
        s, image_id = sources[k % len(sources)]
        new_id = f"{image_id}-{k // len(sources)}"
        os.link(folder / f"{s}_images" / f"{image_id}.dicom", dest / f"{s}_images" / f"{new_id}.dicom")
        df = rows[s][rows[s]["image_id"] == image_id].assign(image_id=new_id)
        out_rows[s].append(df)
    for s, parts in out_rows.items():
        pd.concat(parts)[list(VINDR_COLUMNS)].to_csv(dest / "annotations" / f"{s}.csv", index=False)
    (dest / ".complete").write_text("ok")
    return dest


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=200, help="films (default 200)")
    p.add_argument("--height", type=int, default=2900, help="film height in px (default 2900)")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument("--repeats", type=int, default=3, help="runs of each side per size (median quoted)")
    p.add_argument("--naive-files", type=int, default=60, help="films in each naive run (its files/s is a rate)")
    p.add_argument("--workers", type=int, default=0, help="prepare workers (default: all cores)")
    p.add_argument("--memory-files", type=int, default=2000, help="films for the peak-memory run at 512 px (0: skip)")
    p.add_argument("--memory-only", action="store_true", help="only the peak-memory run (no ratio line)")
    a = p.parse_args()
    from core.device import machine_line

    print(machine_line(), flush=True)

    folder = films(a.n, a.height, seed=0)
    print(f"load average before: {os.getloadavg()[0]:.1f} on {len(os.sched_getaffinity(0))} cores "
          "(other processes on a shared machine slow both sides)", flush=True)
    files = dicom_files(folder)
    cores = len(os.sched_getaffinity(0))
    ratios = []
    with tempfile.TemporaryDirectory(dir=ROOT / "bench" / "out") as tmp:
        os.environ["MEDAUG_HOME"] = str(Path(tmp) / "workspace")  # pixel caches go to a throw-away workspace
        for size in [] if a.memory_only else a.sizes:
            naive_rates, fast_rates, ratios_paired, identical = [], [], [], True
            naive_cpu, fast_cpu, peaks = [], [], []
            for rep in range(a.repeats):
                subset = files[(rep * a.naive_files) % len(files):][:a.naive_files]
                half = len(subset) // 2
                # the naive loop brackets the prepare run (half before, half after), so both
                # see the same load on a shared machine; each repeat gives one paired ratio
                c0, t0 = time.process_time(), time.perf_counter()
                reference = naive(subset[:half], size)
                naive_seconds, naive_cpu_s = time.perf_counter() - t0, time.process_time() - c0
                before = os.times()
                with PeakMemory() as mem:
                    seconds, result = prepare_once(folder, size, Path(tmp) / f"prep{size}", a.workers)
                after = os.times()
                peaks.append(mem.peak)
                c0, t0 = time.process_time(), time.perf_counter()
                reference.update(naive(subset[half:], size))
                naive_seconds += time.perf_counter() - t0
                naive_cpu_s += time.process_time() - c0
                naive_rates.append(len(subset) / naive_seconds)
                fast_rates.append(len(files) / seconds)
                ratios_paired.append(fast_rates[-1] / naive_rates[-1])
                naive_cpu.append(naive_cpu_s / len(subset))
                fast_cpu.append(sum(getattr(after, k) - getattr(before, k)
                                    for k in ("user", "system", "children_user", "children_system")) / len(files))
                from core.data.cache import pixel_cache

                ds = result.dataset
                cache = pixel_cache(ds, size)
                index = cache.index_of(ds)
                identical &= all(np.array_equal(cache.array[index[k]], v) for k, v in reference.items())
                identical &= len(ds.manifest) == len(files) and result.skipped == 0
            nr, fr, ratio = (statistics.median(v) for v in (naive_rates, fast_rates, ratios_paired))
            ratios.append(ratio)
            print(f"{size} px: prepare {len(files)} films, {cores} cores: runs {[round(r, 2) for r in fast_rates]} "
                  f"files/s -> median {fr:.2f} files/s; CPU {statistics.median(fast_cpu):.2f} s/file; peak RSS "
                  f"{max(peaks) / 1e9:.2f} GB", flush=True)
            print(f"{size} px: naive loop, {a.naive_files} films per run: runs {[round(r, 2) for r in naive_rates]} "
                  f"files/s -> median {nr:.2f} files/s; CPU {statistics.median(naive_cpu):.2f} s/file", flush=True)
            print(f"{size} px: paired ratios {[round(r, 2) for r in ratios_paired]} -> median {ratio:.2f}x; "
                  f"identical pixels: {identical}; load average now {os.getloadavg()[0]:.1f}", flush=True)
            if not identical:
                raise SystemExit("prepare and the naive loop disagree on pixels")
        if a.memory_files:
            big = linked_copy(folder, ROOT / "bench" / "out" / f"ingest-linked-{a.memory_files}-h{a.height}",
                              a.memory_files)
            with PeakMemory() as mem:
                seconds, result = prepare_once(big, 512, Path(tmp) / "prep-memory", a.workers)
            print(f"peak memory (RSS of the process tree): {mem.peak / 1e9:.2f} GB preparing {a.memory_files} "
                  f"films at 512 px ({len(result.dataset.manifest)} images, {a.memory_files / seconds:.2f} files/s, "
                  f"{seconds:.0f} s); target < 1.5 GB", flush=True)
    if ratios:
        print(f"ingest: ratio={min(ratios):.2f} target=1.8")


if __name__ == "__main__":  # the pool's spawned workers re-import this file
    main()
