"""Dataset folders: ``dataset.json`` (what it is) + ``manifest.parquet`` (one row per image)
+ the image files. Every ``--data DIR`` option and every page reads this one format.

The built-in default is the phantom: procedurally rendered, synthetic, never patient data.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd

from core.data import manifest as mf
from core.data.splits import DEFAULT_FRACTIONS, study_split
from core.files import write_text_atomic

META_FILE = "dataset.json"
MANIFEST_FILE = "manifest.parquet"
FORMAT = "medaug-dataset/1"
ENV_DATASET = "MEDAUG_DATASET"
DEFAULT_PHANTOM = {"n": 1000, "size": 256, "seed": 0}

# on_progress(done, total, message)
Progress = Callable[[int, int, str], None]


class DatasetError(ValueError):
    """A folder is not a usable dataset; the message names it and says what to do."""


@dataclass(eq=False)
class Dataset:
    """A loaded dataset folder. ``manifest`` is a DataFrame with :data:`core.data.manifest.COLUMNS`."""

    root: Path
    meta: dict
    manifest: pd.DataFrame = field(repr=False)
    # rows left out by load_dataset(..., unsafe_paths="skip"): {"image_id", "path", "reason"}
    unsafe_rows: list[dict] = field(default_factory=list, repr=False)

    @property
    def name(self) -> str:
        return self.meta.get("name", self.root.name)

    @property
    def content_hash(self) -> str:
        return self.meta["content_hash"]

    @property
    def id(self) -> str:
        """Short, human-readable identity: name plus the first 8 hex digits of the content hash."""
        return f"{self.name}@{self.content_hash[:8]}"

    @property
    def synthetic(self) -> bool:
        return bool(self.meta.get("synthetic", False))

    @property
    def classes(self) -> list[str]:
        """Class names in the order the dataset declares (read from data, never hard-coded)."""
        declared = list(self.meta.get("classes") or [])
        seen = set(declared)
        return declared + sorted(c for c in self.manifest["label"].unique() if c not in seen)

    def path_of(self, image_id_or_row) -> Path:
        row = image_id_or_row
        if isinstance(row, str):
            row = self.manifest.loc[self.manifest["image_id"] == row].iloc[0]
        return self.root / row["path"]

    def class_counts(self, split: str | None = None) -> dict[str, int]:
        df = self.manifest if split is None else self.manifest[self.manifest["split"] == split]
        counts = df["label"].value_counts()
        return {c: int(counts.get(c, 0)) for c in self.classes}

    def split_counts(self) -> pd.DataFrame:
        """Images per class (rows, in class order) and split (columns)."""
        table = pd.crosstab(self.manifest["label"], self.manifest["split"])
        return table.reindex(index=self.classes, columns=list(mf.SPLITS), fill_value=0)


def imbalance_ratio(counts: dict[str, int]) -> float:
    """Largest class over smallest non-empty class (1.0 for a balanced set)."""
    present = [c for c in counts.values() if c > 0]
    return max(present) / min(present) if present else float("nan")


UNSAFE_PATH_ACTION = ("a dataset reads only files inside its own folder: copy the images into it and write "
                      "their paths relative to it (e.g. images/<file>.png), or rebuild it with `python -m core "
                      "prepare`")


def load_dataset(root: str | Path, unsafe_paths: str = "refuse") -> Dataset:
    """Read a dataset folder. Every manifest path must stay inside the folder (see
    :func:`core.data.manifest.unsafe_paths`): with ``unsafe_paths="refuse"`` a dataset with
    any other row is refused with a DatasetError naming the rows; with ``"skip"`` those rows
    are left out of the manifest and listed in ``Dataset.unsafe_rows`` (an import reports
    them and goes on)."""
    if unsafe_paths not in ("refuse", "skip"):
        raise ValueError(f"unsafe_paths={unsafe_paths!r}: choose 'refuse' or 'skip'.")
    root = Path(root).expanduser()
    meta_path = root / META_FILE
    if not meta_path.is_file():
        raise DatasetError(f"{root}: not a MedAug dataset folder (no {META_FILE}). "
                           f"Create one with `python -m core phantom --out {root}`.")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{meta_path}: invalid JSON ({e}); rebuild the dataset folder.") from e
    if meta.get("format") != FORMAT:
        raise DatasetError(f"{meta_path}: format {meta.get('format')!r} is not {FORMAT!r}; rebuild the dataset.")
    manifest = mf.read_manifest(root / MANIFEST_FILE)
    bad = mf.unsafe_paths(manifest, root)
    rows = [{"image_id": manifest.at[i, "image_id"], "path": manifest.at[i, "path"], "reason": reason}
            for i, reason in bad.items()]
    if rows and unsafe_paths == "refuse":
        shown = "; ".join(f"{r['image_id']} ({r['path'][:120]!r}: {r['reason']})" for r in rows[:3])
        more = f" and {len(rows) - 3} more" if len(rows) > 3 else ""
        raise DatasetError(f"{root / MANIFEST_FILE}: {len(rows)} image path(s) lead outside the dataset folder, "
                           f"so the dataset is refused: {shown}{more}; {UNSAFE_PATH_ACTION}.")
    if rows:
        manifest = manifest.drop(index=list(bad)).reset_index(drop=True)
    return Dataset(root=root.resolve(), meta=meta, manifest=manifest, unsafe_rows=rows)


def write_dataset(root: str | Path, manifest: pd.DataFrame, meta: dict) -> Dataset:
    """Write ``dataset.json`` and the manifest into ``root`` (whose image files already exist).
    The content hash and class list are computed here, so they cannot drift from the rows."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    manifest = manifest.reset_index(drop=True)
    mf.write_manifest(manifest, root / MANIFEST_FILE)
    meta = {**meta, "format": FORMAT, "content_hash": mf.content_hash(manifest),
            "images": len(manifest)}
    meta.setdefault("classes", sorted(manifest["label"].unique()))
    meta.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    write_text_atomic(root / META_FILE, json.dumps(meta, indent=2))
    return Dataset(root=root.resolve(), meta=meta, manifest=manifest)


def verify_dataset(ds: Dataset) -> list[str]:
    """Re-hash every file; return one readable problem per missing or changed file."""
    problems = []
    for row in ds.manifest.itertuples():
        path = ds.root / row.path
        if not path.is_file():
            problems.append(f"{path}: missing (image {row.image_id}).")
        elif mf.file_sha256(path) != row.sha256:
            problems.append(f"{path}: content changed since the manifest was written (image {row.image_id}).")
    return problems


# --- the phantom -------------------------------------------------------------------------

def _render_chunk(jobs: list[tuple[int, str, int, int, str]], images_dir: str) -> list[dict]:
    """Worker: render and save a chunk of phantom images; return their manifest rows."""
    from PIL import Image

    from core.data.io import to_uint8
    from core.data.phantom import render_phantom

    rows = []
    for index, label, size, seed, image_id in jobs:
        sample = render_phantom(label, size=size, seed=seed)
        rel = f"images/{image_id}.png"
        path = Path(images_dir) / f"{image_id}.png"
        Image.fromarray(to_uint8(sample.image)).save(path, compress_level=1)
        rows.append({
            "image_id": image_id, "path": rel, "label": label, "labels": [label],
            "boxes": [{"label": b.label, "xmin": round(b.xmin, 2), "ymin": round(b.ymin, 2),
                       "xmax": round(b.xmax, 2), "ymax": round(b.ymax, 2)} for b in sample.boxes],
            "source": "phantom", "width": size, "height": size, "sha256": mf.file_sha256(path),
            "_index": index,
        })
    return rows


def phantom_plan(n: int, seed: int) -> list[tuple[str, int, str]]:
    """(label, render seed, study id) for each of ``n`` images, deterministic for ``seed``.

    Images of a class are grouped into studies of one or two views, like a real archive."""
    from core.data.phantom import class_counts

    rng = np.random.default_rng(seed)
    plan = []
    study = 0
    for label, count in class_counts(n).items():
        left = count
        while left > 0:
            views = min(left, int(rng.integers(1, 3)))
            for _ in range(views):
                plan.append((label, int(rng.integers(0, 2**31 - 1)), f"ph{seed}-s{study:05d}"))
            study += 1
            left -= views
    return plan


def build_phantom_dataset(out: str | Path, n: int = 1000, size: int = 256, seed: int = 0,
                          workers: int | None = None, on_progress: Progress | None = None,
                          overwrite: bool = False) -> Dataset:
    """Render ``n`` phantom images in parallel into a complete dataset folder at ``out``.

    The folder is built beside ``out`` and renamed into place at the end, so a reader
    never sees half a dataset and two concurrent builders cannot mix their files.
    """
    from core.data.phantom import CLASS_NAMES

    out = Path(out).expanduser()
    if not 1 <= n <= 200_000:
        raise ValueError(f"n={n}: the phantom needs between 1 and 200000 images.")
    if not 32 <= size <= 2048:
        raise ValueError(f"size={size}: choose an image size between 32 and 2048 pixels.")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DatasetError(f"{out}: already exists and is not empty; choose another --out or pass --force.")

    t0 = time.perf_counter()
    plan = phantom_plan(n, seed)
    ids = [f"ph{seed}-{i:05d}" for i in range(len(plan))]
    staging = out.with_name(f".{out.name}.building-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "images").mkdir(parents=True)

    jobs = [(i, label, size, s, ids[i]) for i, (label, s, _) in enumerate(plan)]
    workers = max(1, min(workers or os.cpu_count() or 1, 32))
    chunk = max(4, min(64, len(jobs) // (workers * 8) or 4))
    chunks = [jobs[i:i + chunk] for i in range(0, len(jobs), chunk)]
    rows: list[dict] = []
    report = on_progress or (lambda done, total, msg: None)
    report(0, n, f"Rendering {n} phantom images at {size} px on {workers} worker(s)")
    try:
        if workers == 1:
            for c in chunks:
                rows += _render_chunk(c, str(staging / "images"))
                report(len(rows), n, "rendering")
        else:
            # spawn: safe under the threaded Streamlit server, and workers stay torch-free
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                futures = [pool.submit(_render_chunk, c, str(staging / "images")) for c in chunks]
                for f in as_completed(futures):
                    rows += f.result()
                    report(len(rows), n, "rendering")
        df = pd.DataFrame(sorted(rows, key=lambda r: r["_index"])).drop(columns="_index")
        df.insert(6, "study_id", [p[2] for p in plan])
        df.insert(2, "split", study_split(df, DEFAULT_FRACTIONS, seed=seed))
        meta = {
            "name": out.name, "kind": "phantom", "synthetic": True, "label_mode": "single",
            "description": "Synthetic phantom spine radiographs rendered procedurally by "
                           "core.data.phantom. Not patient data.",
            "classes": [c for c in CLASS_NAMES if c in set(df["label"])],
            "generator": {"n": n, "size": size, "seed": seed},
            "split_fractions": DEFAULT_FRACTIONS,
        }
        write_dataset(staging, df, meta)
        if out.exists():
            if overwrite:
                shutil.rmtree(out)
            else:  # out appeared while we were building (e.g. a second browser tab)
                shutil.rmtree(staging)
                return load_dataset(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    ds = load_dataset(out)
    ds.meta["build_seconds"] = round(time.perf_counter() - t0, 2)
    report(n, n, f"Done in {ds.meta['build_seconds']} s")
    return ds


def default_dataset_dir() -> Path:
    from core.workspace import workspace_dir

    return workspace_dir("datasets") / "phantom-default"


def active_dataset_dir() -> Path:
    """``MEDAUG_DATASET`` if set, else the default phantom folder (which may not exist yet)."""
    env = os.environ.get(ENV_DATASET)
    return Path(env).expanduser() if env else default_dataset_dir()


def ensure_default_dataset(on_progress: Progress | None = None) -> Dataset:
    """Load the default phantom, generating it on first use (about 1,000 images)."""
    root = default_dataset_dir()
    if not (root / META_FILE).is_file():
        return build_phantom_dataset(root, **DEFAULT_PHANTOM, on_progress=on_progress, overwrite=root.exists())
    return load_dataset(root)
