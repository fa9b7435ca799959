"""What a source reader hands to ``prepare``: one :class:`SourceItem` per source image and one
:class:`LoadProblem` per thing it left out or changed.

The readers (:mod:`core.data.vindr`, :mod:`core.data.folders`, the phantom/dataset scan in
:mod:`core.data.prepare`) import these from here; ``prepare`` imports the readers. Nothing here
imports another module of ``core``.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoadProblem:
    """One row of the load report."""

    file: str       # the file (or CSV row) concerned, relative to the source folder where possible
    stage: str      # where it was found: zip, scan, csv, labels, decode, boxes
    reason: str     # what is wrong, in words
    action: str     # what to do about it
    outcome: str = "file skipped"  # what the loader did: file/row/box skipped, or used with a change


@dataclass(frozen=True)
class SourceItem:
    """One source image, before decoding."""

    image_id: str                 # id in the prepared dataset (unique)
    file: str                     # absolute path of the source file
    labels: tuple[str, ...]       # its findings; the normal class (e.g. "No finding") for a normal image
    boxes: tuple[dict, ...] = ()  # {"label", "xmin", "ymin", "xmax", "ymax", "where"} in source pixels, unchecked
    study_id: str = ""            # study (patient visit); splits never cut a study
    split: str | None = None      # split given by the source, or None to assign one by study
    where: str = ""               # where the labels came from (e.g. "annotations/train.csv rows 2-4")
