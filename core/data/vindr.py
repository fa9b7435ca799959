"""VinDr-SpineXR folders: reading the release's layout.

Layout (as released)::

    annotations/train.csv, annotations/test.csv
    train_images/<image_id>.dicom, test_images/<image_id>.dicom   (.dcm accepted)

CSV columns: ``study_id, series_id, image_id, rad_id, lesion_type, xmin, ymin, xmax, ymax``,
one row per box; a normal image has one ``No finding`` row with empty coordinates. Class
names come from the data (the release spells ``Spondylolysthesis``); only the normal marker
``No finding`` is part of the format.

:func:`read_vindr` turns a folder into :class:`core.data.sources.SourceItem` rows and load
problems; box coordinates are checked later, against the decoded image size.
:mod:`core.data.vindr_export` writes the synthetic phantom in this exact layout, so the loader
is tested on the real format.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core.data.sources import LoadProblem, SourceItem

VINDR_COLUMNS = ("study_id", "series_id", "image_id", "rad_id", "lesion_type", "xmin", "ymin", "xmax", "ymax")
NO_FINDING = "No finding"
VINDR_SPLITS = ("train", "test")
DICOM_SUFFIXES = (".dicom", ".dcm")


def is_vindr_folder(root: str | Path) -> bool:
    root = Path(root)
    return any((root / "annotations" / f"{s}.csv").is_file() for s in VINDR_SPLITS)


def _coord(value: str) -> float:
    try:
        return float(value) if str(value).strip() != "" else float("nan")
    except ValueError:
        return float("nan")


def _rows_text(csv_rel: str, rows: list[int]) -> str:
    shown = ", ".join(str(r) for r in rows[:6]) + (" ..." if len(rows) > 6 else "")
    return f"{csv_rel} row{'s' if len(rows) > 1 else ''} {shown}"


def read_vindr(root: str | Path) -> tuple[list[SourceItem], list[LoadProblem]]:
    """Read ``annotations/{train,test}.csv`` and index ``{train,test}_images``.

    Returns one SourceItem per usable image (its lesion types, its raw boxes, its study and
    split) and one LoadProblem per thing left out: a CSV missing or missing a column,
    duplicate rows, rows naming an image that does not exist, images without rows, rows
    without a lesion type, and images listed in both splits. Raises ValueError when the
    folder has no annotation CSV at all.
    """
    import pandas as pd

    root = Path(root).expanduser().resolve()
    if not (root / "annotations").is_dir():
        raise ValueError(f"{root}: not a VinDr-SpineXR folder (no annotations/ folder); expected "
                         "annotations/{train,test}.csv and {train,test}_images/.")
    items: list[SourceItem] = []
    problems: list[LoadProblem] = []
    seen: dict[str, str] = {}
    for split in VINDR_SPLITS:
        csv_rel = f"annotations/{split}.csv"
        csv_path = root / csv_rel
        if not csv_path.is_file():
            problems.append(LoadProblem(csv_rel, "csv", f"the {split} annotation CSV is missing",
                                        f"add {csv_rel} if the {split} split should be loaded", "csv skipped"))
            continue
        try:
            df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
        except (ValueError, UnicodeDecodeError, OSError) as e:  # pandas' ParserError is a ValueError
            problems.append(LoadProblem(csv_rel, "csv", f"cannot be read as CSV ({e})",
                                        "re-export it as comma-separated text", "csv skipped"))
            continue
        df.columns = [str(c).strip() for c in df.columns]
        missing = [c for c in VINDR_COLUMNS if c not in df.columns]
        if missing:
            problems.append(LoadProblem(csv_rel, "csv", f"missing column(s) {', '.join(missing)}",
                                        f"a VinDr annotation CSV needs {', '.join(VINDR_COLUMNS)}", "csv skipped"))
            continue
        df["csv_line"] = np.arange(len(df)) + 2  # line numbers as a spreadsheet shows them (header = 1)
        files = _index_images(root, f"{split}_images", problems)
        dup = df.duplicated(subset=list(VINDR_COLUMNS), keep="first")
        for row in df.loc[dup, "csv_line"]:
            problems.append(LoadProblem(_rows_text(csv_rel, [row]), "csv", "duplicate of an earlier row",
                                        "remove the repeated row", "row skipped"))
        df = df[~dup]
        blank = df["image_id"].str.strip().eq("") | df["lesion_type"].str.strip().eq("")
        for row in df.loc[blank, "csv_line"]:
            problems.append(LoadProblem(_rows_text(csv_rel, [row]), "csv", "empty image_id or lesion_type",
                                        "fill in the row or remove it", "row skipped"))
        df = df[~blank]
        named = set(df["image_id"])
        for image_id, g in df.groupby("image_id", sort=False):
            rows = g["csv_line"].tolist()
            where = _rows_text(csv_rel, rows)
            path = files.get(image_id)
            if path is None:
                problems.append(LoadProblem(where, "csv", f"names image {image_id}, but no {split}_images/"
                                            f"{image_id}.dicom or .dcm exists", "add the file or remove the rows",
                                            "row skipped"))
                continue
            if image_id in seen:
                problems.append(LoadProblem(where, "csv", f"image {image_id} is already listed in {seen[image_id]}",
                                            "keep each image in one split", "row skipped"))
                continue
            seen[image_id] = csv_rel
            types = g["lesion_type"].str.strip()
            lesions = g[types != NO_FINDING]
            if len(lesions) and (types == NO_FINDING).any():
                problems.append(LoadProblem(_rows_text(csv_rel, g.loc[types == NO_FINDING, "csv_line"].tolist()), "labels",
                                            f"image {image_id} has both '{NO_FINDING}' and lesion rows",
                                            f"remove the '{NO_FINDING}' row", "row skipped"))
            labels = tuple(dict.fromkeys(lesions["lesion_type"].str.strip())) or (NO_FINDING,)
            boxes = tuple({"label": r.lesion_type.strip(), "xmin": _coord(r.xmin), "ymin": _coord(r.ymin),
                           "xmax": _coord(r.xmax), "ymax": _coord(r.ymax), "where": _rows_text(csv_rel, [r.csv_line])}
                          for r in lesions.itertuples())
            items.append(SourceItem(image_id=image_id, file=str(path), labels=labels, boxes=boxes,
                                    study_id=str(g["study_id"].iloc[0]) or image_id, split=split, where=where))
        for image_id, path in files.items():
            if image_id not in named and image_id not in seen:
                problems.append(LoadProblem(path.relative_to(root).as_posix(), "csv",
                                            f"no row in {csv_rel} names this image",
                                            f"add a row ('{NO_FINDING}' for a normal image) or remove the file"))
    if not items:
        summary = "; ".join(f"{p.file}: {p.reason}" for p in problems[:5])
        raise ValueError(f"{root}: no usable VinDr images ({summary}); fix the annotations and image folders.")
    return items, problems


def _index_images(root: Path, folder: str, problems: list[LoadProblem]) -> dict[str, Path]:
    """image_id -> file in ``folder``; links that lead outside ``root`` are refused."""
    base = root / folder
    if not base.is_dir():
        problems.append(LoadProblem(folder, "scan", "the image folder is missing",
                                    f"put the images in {folder}/", "csv skipped"))
        return {}
    files = {}
    for path in sorted(base.iterdir()):
        if path.suffix.lower() not in DICOM_SUFFIXES or not path.is_file():
            continue
        if root not in path.resolve().parents:
            problems.append(LoadProblem(path.relative_to(root).as_posix(), "scan",
                                        "is a link to a file outside the data folder", "copy the file in instead"))
            continue
        files.setdefault(path.stem, path)
    return files
