"""Dataset page, image record: the DICOM an image was prepared from (read through
core.data.sources_table) shows its header; a corrupt sources.csv is named in a warning, and the
record itself still opens."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from streamlit.testing.v1 import AppTest

from core.data.sources_table import sources_path
from tests.test_dicom import make_dicom

ROOT = Path(__file__).resolve().parent.parent


def test_image_record_shows_its_source_dicom_or_a_corrupt_table(small_phantom, tmp_path, monkeypatch):
    root = shutil.copytree(small_phantom.root, tmp_path / "with-sources")
    src = tmp_path / "source-files"
    src.mkdir()
    meta = json.loads((root / "dataset.json").read_text())
    meta["source"] = {"kind": "folders", "root": str(src)}
    (root / "dataset.json").write_text(json.dumps(meta))
    ids = small_phantom.manifest.loc[small_phantom.manifest["label"] == "Vertebral collapse", "image_id"].tolist()
    for i in ids:
        make_dicom(src / f"{i}.dcm", np.arange(64 * 64).reshape(64, 64) % 4096, 12)
    (sources_path(root)).write_text("image_id,source_file\n" + "".join(f"{i},{i}.dcm\n" for i in ids))

    monkeypatch.setenv("MEDAUG_DATASET", str(root))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.switch_page("pages/dataset.py").run()
    at.multiselect(key="grid_classes").set_value(["Vertebral collapse"]).run()
    view = [b for b in at.button if str(b.key).startswith("view_")][0]
    view.click().run()
    assert not at.exception, at.exception
    assert any(str(e.label).startswith(f"DICOM header of {view.key.removeprefix('view_')}.dcm") for e in at.expander)
    assert not at.warning

    sources_path(root).write_bytes(b"")   # truncated: the record opens and says what is wrong
    at.run()
    view = [b for b in at.button if str(b.key).startswith("view_")][0]
    view.click().run()
    assert not at.exception, at.exception
    assert [w.value for w in at.warning] and "sources.csv cannot be read" in at.warning[0].value
    assert not any(str(e.label).startswith("DICOM header") for e in at.expander)
    assert any(view.key.removeprefix("view_") in str(t.value.to_dict()) for t in at.table)
