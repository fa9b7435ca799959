"""The manifest: one table per dataset, one row per image.

Columns (in memory):
    image_id  str         unique within the dataset
    path      str         file path relative to the dataset folder (posix)
    split     str         "train" | "val" | "test"
    label     str         the image's class for single-label work ("No finding" for normals)
    labels    list[str]   every label of the image (multi-label work)
    boxes     list[dict]  {"label", "xmin", "ymin", "xmax", "ymax"} in pixels of the stored file
    study_id  str         study (patient visit); splits never cut a study
    source    str         "phantom", "real", "classic:<op>" or "gan:<run id>"
    width     int         stored file width in pixels
    height    int         stored file height in pixels
    sha256    str         hash of the stored file's bytes

On disk it is Parquet, with ``labels`` and ``boxes`` as JSON text so any tool can read it.
"""
from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
from pathlib import Path

import pandas as pd

from core.files import atomic_path

COLUMNS = ("image_id", "path", "split", "label", "labels", "boxes", "study_id", "source",
           "width", "height", "sha256")
SPLITS = ("train", "val", "test")
_JSON_COLUMNS = ("labels", "boxes")
_BOX_KEYS = ("label", "xmin", "ymin", "xmax", "ymax")
# sources that a generator made (classic augmentation, GANs, diffusion): everything else is real.
# The ONE definition of "real": generators, the quality reference, the domain encoder, classifiers and
# the study all use is_real_source / real_rows, and nothing keeps a copy of this list.
GENERATOR_PREFIXES = ("classic:", "gan:", "diffusion:")


def is_real_source(source) -> bool:
    """True when a manifest ``source`` names real images (not ``classic:``, ``gan:`` or ``diffusion:``)."""
    return not str(source).startswith(GENERATOR_PREFIXES)


def real_rows(df: pd.DataFrame):
    """Boolean numpy mask (writable) of the manifest's real rows (:func:`is_real_source`)."""
    import numpy as np

    return np.array([is_real_source(s) for s in df["source"]], dtype=bool) if len(df) else np.zeros(0, bool)


class ManifestError(ValueError):
    """A manifest is missing columns or holds invalid rows; the message says which and what to do."""


def validate_manifest(df: pd.DataFrame, where: str = "manifest") -> pd.DataFrame:
    """Check the columns and the rows that every later stage relies on; return ``df``."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"{where}: missing column(s) {', '.join(missing)}; "
                            f"a manifest needs {', '.join(COLUMNS)}.")
    dup = df["image_id"][df["image_id"].duplicated()].unique()[:5]
    if len(dup):
        raise ManifestError(f"{where}: duplicate image_id values {list(dup)}; every image needs its own id.")
    bad_split = sorted(set(df["split"]) - set(SPLITS))
    if bad_split:
        raise ManifestError(f"{where}: unknown split value(s) {bad_split}; use {', '.join(SPLITS)}.")
    empty = df["image_id"][df["label"].astype(str).str.strip() == ""].tolist()[:5]
    if empty:
        raise ManifestError(f"{where}: rows {empty} have an empty label; label them or drop them.")
    for image_id, boxes in zip(df["image_id"], df["boxes"]):
        for box in boxes:
            if set(_BOX_KEYS) - set(box):
                raise ManifestError(f"{where}: image {image_id} has a box without {', '.join(_BOX_KEYS)}.")
            if not (box["xmax"] > box["xmin"] and box["ymax"] > box["ymin"]):
                raise ManifestError(f"{where}: image {image_id} has a degenerate box {box}; fix or drop it.")
    return df


def unsafe_paths(df: pd.DataFrame, root: str | Path) -> dict:
    """Rows whose ``path`` leads outside the dataset folder ``root``: row index -> reason.

    A path must be relative, must not climb out with ``..``, and must still lie inside
    ``root`` once links are followed (a folder or file on the way may be a link). Files that
    do not exist are not judged here (they are reported when read). Legitimate writers
    (``prepare``, augment, the GAN sampler) only write ``images/<file>`` inside the folder."""
    base = Path(root).expanduser().resolve()
    inside_dirs: dict[str, bool] = {}  # parent folder -> inside base, resolved once per folder

    def inside(real: str) -> bool:
        return real == str(base) or real.startswith(str(base).rstrip(os.sep) + os.sep)

    bad = {}
    for index, text in zip(df.index, df["path"]):
        text = str(text)
        posix = text.replace("\\", "/")
        if not text.strip():
            bad[index] = "the path is empty"
        elif "\x00" in text:
            bad[index] = "the path holds a NUL character"
        elif posix.startswith("/") or re.match(r"^[A-Za-z]:", posix):
            bad[index] = "the path is absolute (a file elsewhere on the server)"
        elif posixpath.normpath(posix).split("/")[0] == "..":
            bad[index] = "the path climbs out of the dataset folder ('..')"
        else:
            full = os.path.join(base, text)
            parent = os.path.dirname(full)
            if parent not in inside_dirs:
                inside_dirs[parent] = inside(os.path.realpath(parent))
            if not inside_dirs[parent]:
                bad[index] = "a folder on the path is a link that leads outside the dataset folder"
            elif os.path.islink(full) and not inside(os.path.realpath(full)):
                bad[index] = "the file is a link that leads outside the dataset folder"
    return bad


def write_manifest(df: pd.DataFrame, path: str | Path) -> None:
    """Write atomically (temp file + rename) as Parquet."""
    path = Path(path)
    validate_manifest(df, str(path))
    out = df[list(COLUMNS)].copy()
    for col in _JSON_COLUMNS:
        out[col] = [json.dumps(v) for v in out[col]]
    with atomic_path(path) as tmp:
        out.to_parquet(tmp, index=False)


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read and validate a manifest written by :func:`write_manifest`."""
    path = Path(path)
    try:
        df = pd.read_parquet(path)
    except FileNotFoundError:
        raise ManifestError(f"{path}: no manifest here; rebuild the dataset folder.") from None
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise ManifestError(f"{path}: cannot be read as Parquet ({e}); rebuild the dataset folder.") from e
    for col in _JSON_COLUMNS:
        if col in df.columns:
            try:
                df[col] = [json.loads(v) if isinstance(v, str) else list(v) for v in df[col]]
            except json.JSONDecodeError as e:
                raise ManifestError(f"{path}: column '{col}' holds invalid JSON ({e}).") from e
    for col in ("image_id", "path", "split", "label", "study_id", "source", "sha256"):
        if col in df.columns:
            df[col] = df[col].astype(str)
    return validate_manifest(df, str(path))


def content_hash(df: pd.DataFrame) -> str:
    """A hash of everything that defines the dataset: ids, labels, boxes, splits, studies,
    sources and the file hashes. Row order does not matter."""
    keys = ("image_id", "split", "label", "labels", "boxes", "study_id", "source", "sha256")
    rows = sorted(json.dumps([r[k] for k in keys], sort_keys=True) for r in df[list(keys)].to_dict("records"))
    h = hashlib.sha256()
    for row in rows:
        h.update(row.encode())
        h.update(b"\n")
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
