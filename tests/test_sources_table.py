"""core.data.sources_table: a prepared dataset's sources.csv read back (absent: empty; corrupt: a
clear error naming the file and the fix), and the source file / DICOM of one image."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest

from core.data import sources_table as st_


@dataclass
class FakeDataset:
    root: Path
    meta: dict = field(default_factory=dict)


def write_sources(root: Path, rows: list[dict]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = st_.sources_path(root)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_the_file_name_is_the_writers(tmp_path):
    from core.data.prepare import SOURCES_FILE

    assert st_.sources_path(tmp_path) == tmp_path / SOURCES_FILE == tmp_path / "sources.csv"


def test_read_sources(tmp_path):
    empty = st_.read_sources(tmp_path)   # a phantom has none
    assert empty.empty and empty.index.name == "image_id" and "source_file" in empty.columns
    write_sources(tmp_path, [{"image_id": "a", "source_file": "train_images/1/a.dicom", "bits": 12},
                             {"image_id": "007", "source_file": "x/007.png", "bits": ""}])
    table = st_.read_sources(tmp_path)
    assert list(table.index) == ["a", "007"]   # ids stay strings ("007", not 7)
    assert table.at["a", "source_file"] == "train_images/1/a.dicom" and table.at["a", "bits"] == "12"
    assert table.at["007", "bits"] == ""


@pytest.mark.parametrize("content, says", [
    (b"", "cannot be read (EmptyDataError"),
    (b"image_id,source_file\na,b\nc,d,e,f\n", "cannot be read (ParserError"),
    (b"\xff\xfe\x00garbage\x81\x82,\x83\n", "cannot be read"),
    (b"image,file\na,b\n", "lacks the column(s) image_id, source_file (it has image, file)"),
])
def test_a_corrupt_sources_file_says_what_to_do(tmp_path, content, says):
    st_.sources_path(tmp_path).write_bytes(content)
    with pytest.raises(st_.SourcesTableError) as err:
        st_.read_sources(tmp_path)
    text = str(err.value)
    assert says in text and str(st_.sources_path(tmp_path)) in text and "prepare the dataset again" in text
    assert isinstance(err.value, ValueError)


def test_source_file_and_source_dicom(tmp_path):
    src = tmp_path / "source"
    (src / "imgs").mkdir(parents=True)
    (src / "imgs" / "a.dicom").write_bytes(b"\0" * 128 + b"DICM")
    (src / "imgs" / "b.png").write_bytes(b"png")
    ds = FakeDataset(tmp_path / "ds", {"source": {"kind": "vindr", "root": str(src)}})
    write_sources(ds.root, [{"image_id": "a", "source_file": "imgs/a.dicom"},
                            {"image_id": "b", "source_file": "imgs/b.png"},
                            {"image_id": "gone", "source_file": "imgs/gone.dicom"}])
    dicom = src / "imgs" / "a.dicom"
    assert st_.source_file(ds, "a") == dicom and st_.source_dicom(ds, "a") == dicom
    assert st_.source_file(ds, "b") == src / "imgs" / "b.png" and st_.source_dicom(ds, "b") is None
    assert st_.source_file(ds, "gone") is None and st_.source_file(ds, "unknown") is None
    assert st_.source_file(FakeDataset(ds.root, {}), "a") is None   # no source root recorded (a phantom)
    st_.sources_path(ds.root).write_bytes(b"")
    with pytest.raises(st_.SourcesTableError):
        st_.source_dicom(ds, "a")
    assert st_.source_dicom(FakeDataset(ds.root, {"source": {}}), "a") is None   # never read without a root
