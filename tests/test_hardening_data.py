"""Hardening of data intake (issue 13, part A): manifest paths stay inside their dataset
folder, the CLI's --root obeys the data roots, zip bombs and giant images are refused before
they cost disk or memory, and staged uploads are deleted after their import."""
from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data import manifest as mf
from core.data.datasets import MANIFEST_FILE, DatasetError, build_phantom_dataset, load_dataset
from core.data.folders import ZipRefused, detect_source, extract_zip, save_uploads
from core.data.io import ImageReadError, read_image
from core.data.prepare import PrepareConfig, prepare

ROOT = Path(__file__).resolve().parents[1]


# --- helpers -----------------------------------------------------------------------------------

def write_blank_png(path: Path, width: int, height: int) -> Path:
    """A valid 8-bit grey PNG of zeros, compressed row by row: ~140 kB for 12,000 x 12,000 px,
    and never a width x height buffer in this process."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\0" * (width + 1)  # filter byte + samples
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def png_bytes(seed: int, size: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def zip_of(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def zip_folder(folder: Path) -> bytes:
    return zip_of({p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()})


def cli(*args: str, env: dict | None = None) -> tuple[dict, str]:
    out = subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, check=False, env=env)
    assert out.returncode in (0, 2), out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stdout


@pytest.fixture
def two_datasets(tmp_path):
    """A small dataset to tamper with, and another one whose files it must never reach."""
    inner = build_phantom_dataset(tmp_path / "inner" / "ds", n=16, size=32, seed=1, workers=1)
    outside = build_phantom_dataset(tmp_path / "outside", n=8, size=32, seed=5, workers=1)
    return inner, outside


def point_outside(ds, outside) -> dict[str, str]:
    """Rewrite three manifest rows of ``ds`` to reach files of ``outside``: absolute, '..'
    from the top, and '..' after a real folder. Returns image_id -> path written."""
    m = mf.read_manifest(ds.root / MANIFEST_FILE)
    target = [str(outside.root / p) for p in outside.manifest["path"][:3]]
    climb = "../" * (len(ds.root.parts) + 2)
    new = {m.at[0, "image_id"]: target[0],
           m.at[1, "image_id"]: climb + target[1].lstrip("/"),
           m.at[2, "image_id"]: "images/" + climb + target[2].lstrip("/")}
    for i, image_id in enumerate(new):
        m.loc[i, "path"] = new[image_id]
    mf.write_manifest(m, ds.root / MANIFEST_FILE)
    return new


# --- manifest paths stay inside the dataset folder ---------------------------------------------

def test_load_dataset_refuses_paths_that_leave_the_folder_naming_rows_and_reason(two_datasets, tmp_path):
    ds, outside = two_datasets
    bad = point_outside(ds, outside)
    with pytest.raises(DatasetError) as err:
        load_dataset(ds.root)
    text = str(err.value)
    assert str(ds.root / MANIFEST_FILE) in text and "3 image path(s) lead outside the dataset folder" in text
    for image_id in bad:
        assert image_id in text
    assert "absolute" in text and "climbs out" in text and "copy the images into it" in text

    # a link inside the folder that leads out is refused too (links are followed)
    linked = build_phantom_dataset(tmp_path / "linked", n=8, size=32, seed=2, workers=1)
    victim = linked.root / linked.manifest["path"][0]
    victim.unlink()
    victim.symlink_to(outside.root / outside.manifest["path"][0])
    with pytest.raises(DatasetError, match="the file is a link that leads outside the dataset folder"):
        load_dataset(linked.root)
    # ... and so is every --data DIR command
    summary, _ = cli("dataset", "--data", str(linked.root))
    assert summary["ok"] is False and linked.manifest["image_id"][0] in summary["error"]

    # legit datasets still load, and "skip" keeps the good rows and lists the others
    kept = load_dataset(ds.root, unsafe_paths="skip")
    assert len(kept.manifest) == 13 and {r["image_id"] for r in kept.unsafe_rows} == set(bad)
    assert len(load_dataset(outside.root).manifest) == len(outside.manifest)


def test_an_uploaded_dataset_with_outside_paths_imports_the_rest_and_reports_each_row(two_datasets, tmp_path):
    ds, outside = two_datasets
    bad = point_outside(ds, outside)
    root = save_uploads([("ds.zip", zip_folder(ds.root))], tmp_path / "uploads" / "up")
    assert detect_source(root) == "phantom"
    result = prepare(PrepareConfig(source="phantom", root=str(root), out=str(tmp_path / "imported"), size=32,
                                   workers=1))
    m = result.dataset.manifest
    assert len(m) == 13 and not set(m["image_id"]) & set(bad)
    outside_hashes = set(outside.manifest["sha256"])
    assert not outside_hashes & set(m["sha256"])  # no outside pixels were read
    rows = {p.file: p for p in result.problems}
    assert set(rows) == set(bad.values()), result.problems
    for image_id, path in bad.items():
        assert rows[path].stage == "scan" and image_id in rows[path].reason
        assert rows[path].outcome == "file skipped" and "inside its own folder" in rows[path].action
    assert "absolute" in rows[bad[next(iter(bad))]].reason


# --- the CLI obeys the data roots ------------------------------------------------------------------

def test_cli_prepare_root_must_be_inside_the_data_roots_unless_overridden(tmp_path, isolated_workspace, monkeypatch):
    monkeypatch.delenv("MEDAUG_DATA_ROOTS", raising=False)
    src = build_phantom_dataset(tmp_path / "elsewhere" / "src", n=8, size=32, seed=3, workers=1).root
    args = ("prepare", "--source", "phantom", "--root", str(src), "--size", "32", "--workers", "1")

    refused, _ = cli(*args, "--out", str(tmp_path / "o1"))
    assert refused["ok"] is False
    assert f"{src}: outside the allowed data roots" in refused["error"]
    assert "MEDAUG_DATA_ROOTS" in refused["error"] and "--allow-any-root" in refused["error"]
    assert not (tmp_path / "o1").exists()

    forced, stdout = cli(*args, "--out", str(tmp_path / "o2"), "--allow-any-root")
    assert forced["ok"] and forced["images"] == 8
    assert f"--allow-any-root: the data roots check is overridden for --root {src}" in stdout

    env = {**os.environ, "MEDAUG_DATA_ROOTS": str(tmp_path / "elsewhere")}
    allowed, stdout = cli(*args, "--out", str(tmp_path / "o3"), env=env)
    assert allowed["ok"] and allowed["images"] == 8 and "overridden" not in stdout


# --- zip bombs and the free disk ---------------------------------------------------------------

def test_a_zip_member_with_an_absurd_compression_ratio_is_refused_before_writing(tmp_path):
    bomb = zip_of({"cls/a.png": png_bytes(0), "cls/padding.dcm": b"\0" * (50 * 1024 * 1024)})
    assert len(bomb) < 200_000  # ~50 kB on the wire, 50 MB inflated
    with pytest.raises(ZipRefused) as err:
        extract_zip(io.BytesIO(bomb), tmp_path / "bomb")
    text = str(err.value)
    assert "entry 'cls/padding.dcm' inflates" in text and "over the limit of 100:1" in text and "zip -0" in text
    assert not (tmp_path / "bomb").exists() and not list(tmp_path.glob(".*"))

    # genuine content passes: images barely compress, text ~10:1, and tiny members are not judged
    text_table = "\n".join(f"s{i},s{i},img{i},rad1,Osteophytes,{i},{i},{i + 9},{i + 9}" for i in range(40_000))
    ok = zip_of({"cls/a.png": png_bytes(1), "cls/b.png": png_bytes(2), "notes.csv": text_table.encode(),
                 "cls/blank.png": b"\0" * 500_000})
    root = extract_zip(io.BytesIO(ok), tmp_path / "ok")
    assert (root / "cls" / "a.png").is_file() and (root / "notes.csv").stat().st_size == len(text_table)


def test_uploads_that_would_fill_the_disk_are_refused(tmp_path, monkeypatch):
    from core.data import folders

    margin = getattr(folders, "DISK_MARGIN_BYTES", 2**30)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=margin + 2_000_000))
    noise = np.random.default_rng(0).integers(0, 256, 3_000_000, dtype=np.uint8).tobytes()  # incompressible
    with pytest.raises(ZipRefused) as err:
        extract_zip(io.BytesIO(zip_of({"cls/big.tif": noise})), tmp_path / "z")
    assert "the zip needs 3 MB, but the server's disk has" in str(err.value) and "free" in str(err.value)
    assert not (tmp_path / "z").exists() and not list(tmp_path.glob(".*"))
    with pytest.raises(ValueError, match="the upload needs 3 MB"):
        save_uploads([("big.png", noise)], tmp_path / "files", class_name="Osteophytes")
    assert not (tmp_path / "files").exists()
    # with room to spare the same zip extracts
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=margin + 10_000_000))
    assert (extract_zip(io.BytesIO(zip_of({"cls/big.tif": noise})), tmp_path / "z") / "cls" / "big.tif").is_file()


# --- giant images ------------------------------------------------------------------------------

def test_a_giant_png_is_refused_from_its_header_in_little_memory(tmp_path):
    path = write_blank_png(tmp_path / "giant.png", 12000, 12000)
    assert path.stat().st_size < 200_000
    # decoding it needed ~3 GB; here the address space is capped at 1 GiB, so only a refusal
    # from the header can answer
    code = ("import resource, sys\n"
            "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
            "from core.data.io import ImageReadError, read_image\n"
            "try:\n    read_image(sys.argv[1]); print('DECODED')\n"
            "except ImageReadError as e:\n    print('REFUSED', e)\n"
            # VmHWM is this process's own peak (ru_maxrss carries the forking parent's peak over exec)
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
            "print('RSS_MB', int(hwm) // 1024)\n")
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code, str(path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"REFUSED {path}: the image is 12,000 x 12,000 px (144 million pixels)" in out.stdout
    assert "downscale it" in out.stdout
    assert int(out.stdout.split("RSS_MB")[1]) < 400
    # images under the limit read as before
    small = tmp_path / "small.png"
    Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).save(small)
    assert np.array_equal(read_image(small), (np.arange(256).reshape(16, 16) / 255.0).astype(np.float32))


def test_an_image_over_the_pixel_limit_is_one_load_report_row_and_the_rest_imports(tmp_path, monkeypatch):
    from core.data import io as image_io

    monkeypatch.setattr(image_io, "MAX_DECODE_PIXELS", 1_000_000, raising=False)  # so the test stays small
    src = tmp_path / "src"
    (src / "Osteophytes").mkdir(parents=True)
    (src / "No finding").mkdir()
    (src / "Osteophytes" / "a.png").write_bytes(png_bytes(1))
    (src / "No finding" / "b.png").write_bytes(png_bytes(2))
    write_blank_png(src / "Osteophytes" / "huge.png", 1200, 1000)
    result = prepare(PrepareConfig(source="folder", root=str(src), out=str(tmp_path / "out"), size=32, workers=1))
    assert len(result.dataset.manifest) == 2
    (row,) = [p for p in result.problems if p.file == "Osteophytes/huge.png"]
    assert row.stage == "decode" and "1,200 x 1,000 px" in row.reason and row.action.startswith("downscale it")


def test_a_dicom_over_the_pixel_limit_is_refused_before_decoding(tmp_path):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from core.data.dicom import read_dicom

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Rows, ds.Columns, ds.SamplesPerPixel = "DX", 8000, 8000, 1  # 64 M px
    ds.PhotometricInterpretation, ds.BitsAllocated, ds.BitsStored, ds.HighBit = "MONOCHROME2", 16, 12, 11
    ds.PixelRepresentation, ds.PixelData = 0, b"\0" * 64
    ds.save_as(tmp_path / "big.dcm", enforce_file_format=True)
    with pytest.raises(ImageReadError, match=r"too large to decode safely \(8000 x 8000 px"):
        read_dicom(tmp_path / "big.dcm")


# --- staged uploads are deleted --------------------------------------------------------------

def test_staged_uploads_are_deleted_when_the_import_finishes_or_fails(tmp_path, isolated_workspace):
    from core.data.folders import UPLOADS_DIR, staged_upload

    uploads = isolated_workspace / UPLOADS_DIR
    tree = zip_of({"Osteophytes/a.png": png_bytes(1), "No finding/b.png": png_bytes(2)})
    with staged_upload([("tree.zip", tree)], "clean-ok") as root:
        assert root.is_dir() and uploads in root.parents
        result = prepare(PrepareConfig(source=detect_source(root), root=str(root), out=str(tmp_path / "ok"),
                                       size=32, workers=1))
    assert len(result.dataset.manifest) == 2 and not root.exists()
    assert (tmp_path / "ok" / "images").is_dir()  # the prepared dataset stays

    with pytest.raises(RuntimeError, match="import failed"):
        with staged_upload([("a.png", png_bytes(3))], "clean-fail", class_name="Osteophytes") as root:
            assert (root / "Osteophytes" / "a.png").is_file()
            raise RuntimeError("import failed")
    assert not root.exists()
    with pytest.raises(ZipRefused):
        with staged_upload([("bomb.zip", zip_of({"x/pad.png": b"\0" * (20 * 1024 * 1024)}))], "clean-bomb"):
            pass
    assert not [p for p in uploads.iterdir() if p.name.startswith(("clean-", ".clean-"))]

    # what a killed server left behind over a day ago goes on the next upload
    stale = uploads / "left-by-a-crash-20240101-000000"
    (stale / "cls").mkdir(parents=True)
    (stale / "cls" / "a.png").write_bytes(png_bytes(4))
    old = time.time() - 2 * 86400
    os.utime(stale, (old, old))
    with staged_upload([("a.png", png_bytes(5))], "clean-next", class_name="cls"):
        pass
    assert not stale.exists()


def test_the_dataset_page_deletes_its_upload_after_the_import(small_phantom, isolated_workspace, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("MEDAUG_DATASET", str(small_phantom.root))
    uploads = isolated_workspace / "uploads"
    before = set(uploads.iterdir()) if uploads.is_dir() else set()
    shutil.rmtree(isolated_workspace / "datasets" / "hardening-upload", ignore_errors=True)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.switch_page("pages/dataset.py").run()
    at.segmented_control(key="import_from").set_value("Upload").run()
    tree = zip_of({"Osteophytes/a.png": png_bytes(1), "No finding/b.png": png_bytes(2)})
    at.file_uploader(key="import_files").set_value(("tree.zip", tree, "application/zip"))
    at.text_input(key="import_name").set_value("hardening-upload")
    at.button(key="import_run").click().run()
    assert not at.exception, at.exception
    assert at.metric[0].value == "2"  # the imported dataset is the active one
    left = set(uploads.iterdir()) - before if uploads.is_dir() else set()
    assert not left, f"staged uploads left behind: {left}"
