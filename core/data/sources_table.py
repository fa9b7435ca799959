"""The sources table of a prepared dataset: ``sources.csv``, written by :mod:`core.data.prepare`, one
row per image with the source file it was prepared from (relative to the dataset's source root) and
that file's size, bit depth, photometric interpretation and transfer syntax.

Only pandas: the Dataset page reads it without torch.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

REQUIRED_COLUMNS = ("image_id", "source_file")
_REWRITE = "prepare the dataset again (Dataset page > Import, the same name) to rewrite it."


class SourcesTableError(ValueError):
    """sources.csv exists but cannot be read; the message names the file and what to do."""


def sources_path(root: str | Path) -> Path:
    from core.data.prepare import SOURCES_FILE   # the name the writer uses

    return Path(root) / SOURCES_FILE


def read_sources(root: str | Path) -> pd.DataFrame:
    """The sources table of the dataset at ``root``, indexed by ``image_id`` (strings throughout);
    an empty table when the dataset has none (a phantom, or a dataset made before prepare wrote it).
    Raises :class:`SourcesTableError` for an unreadable, corrupt or incomplete file."""
    path = sources_path(root)
    if not path.is_file():
        return pd.DataFrame(columns=list(REQUIRED_COLUMNS[1:]), index=pd.Index([], name="image_id"), dtype=str)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise SourcesTableError(f"{path} cannot be read ({type(e).__name__}: {first}); {_REWRITE}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        has = ", ".join(table.columns) or "none"
        raise SourcesTableError(f"{path} lacks the column(s) {', '.join(missing)} (it has {has}); {_REWRITE}")
    return table.drop_duplicates("image_id", keep="last").set_index("image_id")


def source_file(ds, image_id: str) -> Path | None:
    """The file image ``image_id`` of dataset ``ds`` was prepared from, when the dataset records its
    source root and that file still exists (None otherwise). Raises :class:`SourcesTableError` for a
    corrupt sources.csv."""
    root = (ds.meta.get("source") or {}).get("root")
    if not root:
        return None
    sources = read_sources(ds.root)
    if image_id not in sources.index or not sources.at[image_id, "source_file"]:
        return None
    path = Path(root) / sources.at[image_id, "source_file"]
    return path if path.is_file() else None


def source_dicom(ds, image_id: str) -> Path | None:
    """:func:`source_file` when that file is a DICOM (its header can be shown), else None."""
    from core.data.dicom import looks_like_dicom

    path = source_file(ds, image_id)
    return path if path is not None and looks_like_dicom(path) else None
