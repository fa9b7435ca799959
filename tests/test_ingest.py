"""Real-data ingest: the phantom's VinDr export read back, label modes, the bad-input corpus,
zip and folder safety, resumability, the CLI, and the Dataset page's import flow."""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

from core.data.cache import box_to_cache, letterbox, pixel_cache
from core.data.datasets import load_dataset
from core.data.dicom import MASK, DicomReadOptions, quiet_uid_warnings, read_dicom
from core.data.folders import (
    FolderAccessError,
    ZipRefused,
    detect_source,
    extract_zip,
    resolve_server_folder,
    save_uploads,
)
from core.data.io import to_uint8
from core.data.manifest import file_sha256
from core.data.phantom import render_phantom
from core.data.prepare import JOURNAL_FILE, STATE_DIR, PrepareConfig, prepare, read_report, staging_dir
from core.data.vindr import NO_FINDING, read_vindr
from core.data.vindr_export import VindrExportConfig, export_phantom_vindr

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "tests" / "artifacts"


@pytest.fixture(scope="session")
def vindr_export(tmp_path_factory):
    """The phantom in the VinDr layout: 48 films 256 px high, a third MONOCHROME1."""
    folder = tmp_path_factory.mktemp("vindr") / "phantom-vindr"
    table = export_phantom_vindr(folder, VindrExportConfig(n=48, height=256, seed=5, monochrome1_fraction=0.34,
                                                           workers=2))
    return folder, table


def run_prepare(root, out, **kw) -> object:
    kw.setdefault("workers", 1)
    return prepare(PrepareConfig(root=str(root), out=str(out), **kw))


# --- the VinDr round trip ----------------------------------------------------------------------

def test_vindr_export_has_the_release_layout(vindr_export):
    folder, table = vindr_export
    assert sorted(p.name for p in (folder / "annotations").iterdir()) == ["test.csv", "train.csv"]
    train = pd.read_csv(folder / "annotations" / "train.csv", dtype=str, keep_default_na=False)
    assert list(train.columns) == ["study_id", "series_id", "image_id", "rad_id", "lesion_type",
                                   "xmin", "ymin", "xmax", "ymax"]
    normal = train[train["lesion_type"] == NO_FINDING]
    assert len(normal) and (normal[["xmin", "ymin", "xmax", "ymax"]] == "").all().all()
    assert set(table["split"]) == {"train", "test"}
    row = table.iloc[0]
    ds = pydicom.dcmread(row["file"])
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"  # lossless JPEG 2000
    assert (ds.BitsAllocated, ds.BitsStored) == (16, 12)
    assert ds.Rows == 256 and ds.Columns < ds.Rows  # a tall, non-square film
    assert "DERIVED" in ds.ImageType and "synthetic" in ds.DerivationDescription.lower()
    assert table["monochrome1"].sum() >= 5 and (~table["monochrome1"]).sum() >= 5


def test_vindr_round_trip_pixels_and_boxes_match_what_the_phantom_drew(vindr_export):
    folder, table = vindr_export
    items, problems = read_vindr(folder)
    assert problems == []
    by_id = {it.image_id: it for it in items}
    assert set(by_id) == set(table["image_id"])
    for r in table.itertuples():
        sample = render_phantom(r.label, size=256, seed=r.render_seed)
        # pixels: the 12-bit counts read back equal the phantom's own image, cropped to the film
        im = read_dicom(r.file, DicomReadOptions(window="none", out_dtype="uint16"))
        counts = np.round(im.pixels / 65535 * 4095).astype(np.int64)
        drawn = np.clip(np.round(sample.image[:, r.crop_x0:r.crop_x0 + r.crop_width].astype(np.float64) * 4095),
                        0, 4095)
        assert im.photometric == ("MONOCHROME1" if r.monochrome1 else "MONOCHROME2")
        assert np.array_equal(counts, drawn), r.image_id
        # boxes: the CSV's boxes are the phantom's boxes in film pixels
        item = by_id[r.image_id]
        got = sorted((b["label"], b["xmin"], b["ymin"], b["xmax"], b["ymax"]) for b in item.boxes)
        want = sorted((b.label, b.xmin - r.crop_x0, b.ymin, b.xmax - r.crop_x0, b.ymax) for b in sample.boxes)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert g[0] == w[0] and np.allclose(g[1:], w[1:], atol=0.006)
        assert item.labels == ((sample.label,) if sample.label != NO_FINDING else (NO_FINDING,))


def test_prepared_vindr_dataset_keeps_labels_boxes_splits_and_pixels(vindr_export, tmp_path):
    folder, table = vindr_export
    result = run_prepare(folder, tmp_path / "ds", source="vindr", size=64)
    ds = result.dataset
    m = ds.manifest.set_index("image_id")
    assert result.problems == [] and len(m) == len(table)
    # class names come from the data (the release's spelling included), normals first
    assert ds.classes[0] == NO_FINDING and set(ds.classes) == set(table["label"])
    assert "Spondylolysthesis" in ds.classes
    assert ds.class_counts() == {c: int((table["label"] == c).sum()) for c in ds.classes}
    # the release's test split stays test; val is carved from train by study
    test_ids = set(table.loc[table["split"] == "test", "image_id"])
    assert set(m.index[m["split"] == "test"]) == test_ids
    assert (m["split"] == "val").any() and ds.meta["synthetic"] and set(m["source"]) == {"phantom"}
    for r in table.itertuples():
        row = m.loc[r.image_id]
        want = [box_to_cache(b, r.width, r.height, 64) for b in r.boxes]
        assert len(row["boxes"]) == len(want)
        for g, w in zip(sorted(row["boxes"], key=lambda b: b["xmin"]), sorted(want, key=lambda b: b["xmin"])):
            assert np.allclose([g[k] for k in ("xmin", "ymin", "xmax", "ymax")],
                               [w[k] for k in ("xmin", "ymin", "xmax", "ymax")], atol=0.011)
    # the stored pixels are the DICOM's window, letterboxed: identical to reading it by hand
    cache = pixel_cache(ds, 64)
    index = cache.index_of(ds)
    for r in table.head(6).itertuples():
        by_hand = to_uint8(letterbox(read_dicom(r.file, DicomReadOptions(out_dtype="float32")).pixels, 64))
        assert np.array_equal(cache.array[index[r.image_id]], by_hand)
    card = ds.meta["card"]
    assert card["bit_depth"] == {"12": len(table)}
    assert card["photometric"] == {"MONOCHROME1": int(table["monochrome1"].sum()),
                                   "MONOCHROME2": int((~table["monochrome1"]).sum())}
    assert card["source_height"]["max"] == 256 and card["source_width"]["max"] < 256
    assert card["boxes_per_class"] == {c: n for c, n in pd.Series([b["label"] for bs in table["boxes"] for b in bs])
                                       .value_counts().items()}
    assert sum(v["train"] + v["val"] + v["test"] for v in card["per_class_split"].values()) == len(table)


def test_label_modes_single_multi_and_patch(vindr_export, tmp_path):
    folder, table = vindr_export
    src = tmp_path / "two-types"
    shutil.copytree(folder, src)
    csv = src / "annotations" / "train.csv"
    rows = pd.read_csv(csv, dtype=str, keep_default_na=False)
    lesion = rows[rows["lesion_type"] == "Osteophytes"].iloc[0]
    extra = lesion.copy()
    extra["lesion_type"] = "Vertebral collapse"
    pd.concat([rows, extra.to_frame().T]).to_csv(csv, index=False)

    single = run_prepare(src, tmp_path / "single", source="vindr", size=48)
    assert lesion["image_id"] not in set(single.dataset.manifest["image_id"])
    assert any(lesion["image_id"] in p.file or "2 finding types" in p.reason for p in single.problems)
    multi = run_prepare(src, tmp_path / "multi", source="vindr", size=48, label_mode="multi")
    row = multi.dataset.manifest.set_index("image_id").loc[lesion["image_id"]]
    assert set(row["labels"]) == {"Osteophytes", "Vertebral collapse"}
    assert row["label"] == "Vertebral collapse"  # the rarer finding labels the image
    assert len(multi.dataset.manifest) == len(table)

    patch = run_prepare(folder, tmp_path / "patch", source="vindr", size=32, label_mode="patch", patch_margin=0.5)
    n_boxes = int(table["boxes"].map(len).sum())
    m = patch.dataset.manifest
    assert len(m) == n_boxes and NO_FINDING not in set(m["label"])
    for r in m.itertuples():
        (b,) = r.boxes
        assert b["label"] == r.label and 0 <= b["xmin"] < b["xmax"] <= 32 and 0 <= b["ymin"] < b["ymax"] <= 32
        assert b["xmax"] - b["xmin"] >= 8 or b["ymax"] - b["ymin"] >= 8  # the lesion fills the patch


def test_phantom_dataset_as_a_source_gives_lesion_patches(small_phantom, tmp_path):
    result = run_prepare(small_phantom.root, tmp_path / "patches", source="phantom", size=32, label_mode="patch")
    m = result.dataset.manifest
    boxes = [b for bs in small_phantom.manifest["boxes"] for b in bs]
    assert len(m) == len(boxes) and result.problems == []
    assert sorted(m["label"]) == sorted(b["label"] for b in boxes)
    assert result.dataset.synthetic and set(m["source"]) == {"phantom"}
    parent_split = dict(zip(small_phantom.manifest["image_id"], small_phantom.manifest["split"]))
    assert all(parent_split[r.image_id.rsplit("-p", 1)[0]] == r.split for r in m.itertuples())  # no leak


# --- the bad-input corpus ----------------------------------------------------------------------

def bomb_png(path: Path, side: int = 20000) -> Path:
    """A tiny PNG whose header claims side x side pixels (over Pillow's decompression-bomb limit)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def report_rows(report: pd.DataFrame, needle: str) -> pd.DataFrame:
    return report[report["file"].str.contains(needle, regex=False)]


def test_bad_vindr_inputs_are_reported_and_the_rest_loads(vindr_export, tmp_path):
    folder, table = vindr_export
    src = tmp_path / "bad-vindr"
    shutil.copytree(folder, src)
    train = table[table["split"] == "train"]
    normals = train[train["label"] == NO_FINDING]["image_id"].tolist()
    lesion_id = train[train["boxes"].map(len) > 0]["image_id"].iloc[0]
    images = src / "train_images"
    rows = pd.read_csv(src / "annotations" / "train.csv", dtype=str, keep_default_na=False)

    truncated, no_pixels = normals[0], normals[1]
    data = (images / f"{truncated}.dicom").read_bytes()
    (images / f"{truncated}.dicom").write_bytes(data[: len(data) // 3])
    with quiet_uid_warnings():
        ds = pydicom.dcmread(images / f"{no_pixels}.dicom")
        del ds.PixelData
        ds.save_as(images / f"{no_pixels}.dicom", enforce_file_format=True)
    (images / "notdicom.dicom").write_text("this is a text file, not a DICOM")
    (images / "zerobytes.dicom").write_bytes(b"")
    shutil.copy(images / f"{normals[2]}.dicom", images / "unlisted.dicom")
    template = rows[rows["image_id"] == normals[3]].iloc[0]
    extra = []
    for image_id in ("notdicom", "zerobytes", "missingfile"):
        extra.append({**template, "image_id": image_id})
    lesion_row = rows[rows["image_id"] == lesion_id].iloc[0]
    for coords in (("5000", "5000", "5100", "5100"), ("60", "60", "20", "20"), ("", "", "", "")):
        extra.append({**lesion_row, **dict(zip(("xmin", "ymin", "xmax", "ymax"), coords))})
    extra.append(dict(lesion_row))  # a duplicate row
    pd.concat([rows, pd.DataFrame(extra)]).to_csv(src / "annotations" / "train.csv", index=False)
    test_csv = pd.read_csv(src / "annotations" / "test.csv", dtype=str, keep_default_na=False)
    test_csv.drop(columns="rad_id").to_csv(src / "annotations" / "test.csv", index=False)

    result = run_prepare(src, tmp_path / "out", source="vindr", size=48)  # nothing raises
    report = read_report(result.report_path)
    assert list(report.columns) == ["file", "stage", "reason", "action", "outcome"]
    assert len(report) == len(result.problems) and (report["reason"] != "").all() and (report["action"] != "").all()

    def one(needle: str, phrase: str, stage: str, outcome: str):
        hits = report_rows(report, needle)
        hits = hits[hits["reason"].str.contains(phrase, regex=False)]
        assert len(hits) == 1, (needle, phrase, report.to_string())
        assert (hits["stage"] == stage).all() and (hits["outcome"] == outcome).all(), hits.to_string()

    one(f"{truncated}.dicom", "truncated", "decode", "file skipped")
    one(f"{no_pixels}.dicom", "no pixel data", "decode", "file skipped")
    one("notdicom.dicom", "not a DICOM file", "decode", "file skipped")
    one("zerobytes.dicom", "empty (0 bytes)", "decode", "file skipped")
    one("unlisted.dicom", "no row in annotations/train.csv", "csv", "file skipped")
    one("annotations/train.csv", "names image missingfile", "csv", "row skipped")
    one("annotations/test.csv", "missing column(s) rad_id", "csv", "csv skipped")
    one("annotations/train.csv", "duplicate", "csv", "row skipped")
    one(f"{lesion_id}.dicom", "lies outside the", "boxes", "box skipped")
    one(f"{lesion_id}.dicom", "is inverted", "boxes", "box skipped")
    one(f"{lesion_id}.dicom", "missing coordinate (NaN)", "boxes", "box skipped")

    # every valid train file is in the manifest, with its valid boxes
    valid = set(train["image_id"]) - {truncated, no_pixels}
    m = result.dataset.manifest.set_index("image_id")
    assert set(m.index) == valid
    assert len(m.loc[lesion_id, "boxes"]) == len(table.set_index("image_id").loc[lesion_id, "boxes"])
    assert result.skipped == 6  # 4 unreadable files, 1 unlisted file, the test CSV


def test_bad_image_folder_inputs_are_reported_and_the_rest_loads(vindr_export, tmp_path):
    _, table = vindr_export
    src = tmp_path / "images"
    a, b, empty = src / "Osteophytes", src / "No finding", src / "Vertebral collapse"
    for d in (a, b, empty):
        d.mkdir(parents=True)
    valid = {}
    for k in range(3):
        img = to_uint8(render_phantom("Osteophytes", size=64, seed=k).image)
        Image.fromarray(img).save(a / f"ost{k}.png")
        valid[f"Osteophytes-ost{k}"] = img
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = 200, 128
    Image.fromarray(rgba, "RGBA").save(a / "rgba.png")
    ramp16 = (np.arange(64 * 64, dtype=np.uint32) * 65535 // (64 * 64 - 1)).astype(np.uint16).reshape(64, 64)
    Image.fromarray(ramp16).save(a / "deep16.tif")
    bomb_png(a / "bomb.png")
    (a / "zero.png").write_bytes(b"")
    (a / "notes.txt").write_text("scan notes")
    for k in range(2):
        Image.fromarray(to_uint8(render_phantom(NO_FINDING, size=64, seed=10 + k).image)).save(b / f"n{k}.jpg")
    shutil.copy(table["file"].iloc[0], b / "film.dicom")
    (b / "fake.dcm").write_text("not a dicom")
    (empty / ".DS_Store").write_bytes(b"\0\0")
    Image.fromarray(valid["Osteophytes-ost0"]).save(src / "stray.png")

    result = run_prepare(src, tmp_path / "out", source="folder", size=64)
    report = read_report(result.report_path)
    m = result.dataset.manifest.set_index("image_id")
    assert set(m.index) == {"Osteophytes-ost0", "Osteophytes-ost1", "Osteophytes-ost2", "Osteophytes-rgba",
                            "Osteophytes-deep16", "No_finding-n0", "No_finding-n1", "No_finding-film"}
    expect = {"Osteophytes/bomb.png": "too large to open safely", "Osteophytes/zero.png": "empty (0 bytes)",
              "Osteophytes/notes.txt": "not an image type", "No finding/fake.dcm": "not a DICOM file",
              "Vertebral collapse/": "has no images", "stray.png": "not inside a class folder",
              "Osteophytes/rgba.png": "alpha channel"}
    for file, phrase in expect.items():
        hit = report[(report["file"] == file) & report["reason"].str.contains(phrase, regex=False)]
        assert len(hit) == 1, (file, phrase, report.to_string())
    assert report.loc[report["file"] == "Osteophytes/rgba.png", "outcome"].tolist() == ["used with a change"]
    # 8-bit PNGs and the 16-bit TIFF keep their values (same size: no resampling)
    cache = pixel_cache(result.dataset, 64)
    index = cache.index_of(result.dataset)
    for image_id, img in valid.items():
        assert np.array_equal(cache.array[index[image_id]], img)
    assert np.array_equal(cache.array[index["Osteophytes-deep16"]],
                          to_uint8(ramp16.astype(np.float64) / 65535).astype(np.uint8))
    assert result.dataset.meta["card"]["bit_depth"] == {"8": 6, "12": 1, "16": 1}
    assert result.dataset.classes == ["No finding", "Osteophytes"]


def test_an_unforeseen_decoder_failure_is_reported_not_raised(vindr_export, tmp_path, monkeypatch):
    import core.data.prepare as prep

    folder, table = vindr_export
    victim = table["image_id"].iloc[3]
    real = prep.decode_source

    def flaky(path, window="voi"):
        if Path(path).stem == victim:
            raise RuntimeError("decoder crashed")
        return real(path, window)
    monkeypatch.setattr(prep, "decode_source", flaky)
    result = run_prepare(folder, tmp_path / "out", source="vindr", size=32)
    assert len(result.dataset.manifest) == len(table) - 1
    (problem,) = result.problems
    assert problem.reason == "unexpected RuntimeError: decoder crashed" and victim in problem.file


def _zip(entries: dict[str, bytes], links: tuple[str, ...] = ()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def test_zip_safety_refuses_with_the_reason(tmp_path):
    png = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png, format="PNG")
    cases = {
        "traversal": (_zip({"cls/a.png": png.getvalue(), "../../evil.png": b"x"}), "path traversal"),
        "absolute": (_zip({"/etc/evil.png": b"x"}), "absolute path"),
        "symlink": (_zip({"cls/a.png": png.getvalue()}, links=("cls/link.png",)), "symbolic link"),
        "bomb": (_zip({"cls/big.png": b"\0" * (30 * 1024 * 1024)}), "inflates to more than"),
    }
    for name, (data, phrase) in cases.items():
        assert len(data) < 200_000  # small on the wire
        with pytest.raises(ZipRefused, match=phrase):
            extract_zip(io.BytesIO(data), tmp_path / name, max_bytes=10 * 1024 * 1024)
        assert not (tmp_path / name).exists()
    assert not (tmp_path.parent / "evil.png").exists() and not list(tmp_path.glob(".*"))
    with pytest.raises(ZipRefused, match="not a readable zip"):
        extract_zip(io.BytesIO(b"PK\x03\x04 broken"), tmp_path / "broken")
    # a good zip with a wrapping folder extracts to the class tree
    good = extract_zip(io.BytesIO(_zip({"data/cls/a.png": png.getvalue(), "__MACOSX/._a": b"x"})), tmp_path / "ok")
    assert good == tmp_path / "ok" / "data" and (good / "cls" / "a.png").is_file()


def test_uploads_of_files_and_of_a_vindr_zip(vindr_export, tmp_path):
    folder, table = vindr_export
    files = []
    for k in range(3):
        buf = io.BytesIO()
        Image.fromarray(to_uint8(render_phantom("Surgical implant", size=64, seed=k).image)).save(buf, format="PNG")
        files.append((f"../../sneaky/implant{k}.png", buf.getvalue()))
    root = save_uploads(files, tmp_path / "up1", class_name="Surgical implant")
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png")) == [
        f"Surgical implant/implant{k}.png" for k in range(3)]
    assert detect_source(root) == "folder"
    with pytest.raises(ValueError, match="class"):
        save_uploads(files, tmp_path / "up2", class_name="../x")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in folder.rglob("*"):
            if p.is_file():
                zf.write(p, f"vindr/{p.relative_to(folder).as_posix()}")
    root = save_uploads([("vindr.zip", buf.getvalue())], tmp_path / "up3")
    assert detect_source(root) == "vindr"
    assert len(run_prepare(root, tmp_path / "ds3", source="vindr", size=32).dataset.manifest) == len(table)


def test_server_folders_only_inside_the_data_roots(tmp_path, isolated_workspace, monkeypatch):
    inside = isolated_workspace / "data" / "mine"
    inside.mkdir(parents=True, exist_ok=True)
    assert resolve_server_folder(inside) == inside.resolve()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for path in (outside, "/etc", str(inside / ".." / ".." / ".."), "/"):
        with pytest.raises(FolderAccessError, match="outside the allowed data roots") as err:
            resolve_server_folder(path)
        assert "MEDAUG_DATA_ROOTS" in str(err.value)
    link = isolated_workspace / "data" / "link-out"
    if not link.exists():
        link.symlink_to(outside)
    with pytest.raises(FolderAccessError, match="outside"):
        resolve_server_folder(link)  # a link inside the workspace does not lead out
    monkeypatch.setenv("MEDAUG_DATA_ROOTS", f"{tmp_path}{os.pathsep}/nonexistent")
    assert resolve_server_folder(outside) == outside.resolve()
    with pytest.raises(FolderAccessError, match="no such folder"):
        resolve_server_folder(tmp_path / "missing")


# --- resumability ------------------------------------------------------------------------------

def test_second_run_skips_finished_files_and_other_settings_are_refused(vindr_export, tmp_path):
    folder, table = vindr_export
    first = run_prepare(folder, tmp_path / "ds", source="vindr", size=40)
    assert (first.prepared, first.reused) == (len(table), 0)
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ds" / "images").iterdir()}
    second = run_prepare(folder, tmp_path / "ds", source="vindr", size=40)
    assert (second.prepared, second.reused) == (0, len(table))
    assert second.dataset.content_hash == first.dataset.content_hash
    assert stamps == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ds" / "images").iterdir()}
    with pytest.raises(ValueError, match="other settings.*size 40 -> 48"):
        run_prepare(folder, tmp_path / "ds", source="vindr", size=48)
    with pytest.raises(ValueError, match="not made by `prepare`"):
        run_prepare(folder, first.dataset.root / "images", source="vindr", size=40)
    with pytest.raises(ValueError, match="must not be --root or inside it"):
        run_prepare(folder, folder / "prepared", source="vindr", size=40)


def test_killed_run_resumes_without_redoing_or_half_written_entries(vindr_export, tmp_path):
    folder, table = vindr_export
    out = tmp_path / "killed"
    journal = staging_dir(out) / STATE_DIR / JOURNAL_FILE  # built beside --out, renamed when complete
    cmd = [sys.executable, "-m", "core", "prepare", "--source", "vindr", "--root", str(folder), "--out", str(out),
           "--size", "512", "--workers", "1", "--allow-any-root"]  # a test's tmp folder: outside the data roots
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if journal.is_file() and journal.read_text().count("\n") >= 4:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not out.exists()
    done_before = journal.read_text().count("\n")
    assert 4 <= done_before < len(table)
    with open(journal, "a") as f:
        f.write('{"key": "cut-short", "records": [{"pa')  # a line the kill cut in half

    result = run_prepare(folder, out, source="vindr", size=512)
    assert result.reused == done_before and result.prepared == len(table) - done_before
    ds = load_dataset(out)
    assert len(ds.manifest) == len(table)
    assert not list((out / "images").glob("*.tmp-*"))
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(Path(p).name for p in ds.manifest["path"])
    for row in ds.manifest.itertuples():
        assert file_sha256(out / row.path) == row.sha256


# --- the CLI -----------------------------------------------------------------------------------

def cli(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode in (0, 2), out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cli_phantom_vindr_then_prepare(tmp_path):
    exported = cli("phantom", "--format", "vindr", "--out", str(tmp_path / "v"), "--n", "12", "--size", "160",
                   "--seed", "3", "--workers", "1")
    assert exported["ok"] and exported["images"] == 12 and exported["size"]["height"] == 160
    summary = cli("prepare", "--source", "vindr", "--root", str(tmp_path / "v"), "--size", "32", "--out",
                  str(tmp_path / "ds"), "--label-mode", "multi", "--workers", "1", "--allow-any-root")
    assert summary["ok"] and summary["images"] == 12 and summary["skipped"] == 0
    assert sum(summary["classes"].values()) == 12
    assert Path(summary["manifest"]).is_file() and Path(summary["load_report"]).is_file()
    failed = cli("prepare", "--source", "vindr", "--root", str(tmp_path / "nothing"), "--size", "32", "--out",
                 str(tmp_path / "ds2"), "--allow-any-root")
    assert failed["ok"] is False and "does not exist" in failed["error"]


# --- the Dataset page --------------------------------------------------------------------------

def test_dataset_page_imports_a_server_folder_and_switches_to_it(small_phantom, vindr_export, isolated_workspace,
                                                                  monkeypatch):
    from streamlit.testing.v1 import AppTest

    folder, table = vindr_export
    inside = isolated_workspace / "incoming" / "vindr-page"
    if not inside.exists():
        shutil.copytree(folder, inside)
    shutil.rmtree(isolated_workspace / "datasets" / "vindr-page-test", ignore_errors=True)
    monkeypatch.setenv("MEDAUG_DATASET", str(small_phantom.root))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.switch_page("pages/dataset.py").run()
    assert not at.exception, at.exception

    at.text_input(key="import_path").set_value("/etc")
    at.text_input(key="import_name").set_value("refused")
    at.button(key="import_run").click().run()
    assert any("outside the allowed data roots" in str(e.value) for e in at.error), [e.value for e in at.error] + [str(at.exception)]

    at.text_input(key="import_path").set_value(str(inside))
    at.text_input(key="import_name").set_value("vindr-page-test")
    at.selectbox(key="import_size").set_value(128)
    at.button(key="import_run").click().run()
    assert not at.exception, at.exception
    assert at.metric[0].value == f"{len(table):,}"  # the imported set is now the active one
    assert any("Prepared" in str(s.value) for s in at.success)
    assert any(str(s.value) == "Dataset card" for s in at.subheader)
    assert Path(at.session_state["dataset_dir"]).name == "vindr-page-test"
    assert at.sidebar.selectbox(key="dataset_picker").value.endswith("vindr-page-test")
    # an image's view shows its DICOM header with PHI masked (AppTest drops the first click after
    # a script's st.rerun, which a browser does not: the Chromium test clicks View right away)
    at.run()
    view = [b for b in at.button if str(b.key).startswith("view_")][0]
    view.click().run()
    assert not at.exception, at.exception
    headers = [d.value for d in at.dataframe if "keyword" in d.value.columns]
    assert headers, "no DICOM header in the image view"
    header = headers[0].set_index("keyword")["value"]
    assert header["PatientName"] == MASK and header["BitsStored"] == "12" and header["Modality"] == "DX"
    # the picker switches back to the phantom
    at.sidebar.selectbox(key="dataset_picker").set_value(str(small_phantom.root)).run()
    assert at.metric[0].value == f"{len(small_phantom.manifest):,}"


def test_dataset_page_upload_of_files(small_phantom, isolated_workspace, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("MEDAUG_DATASET", str(small_phantom.root))
    shutil.rmtree(isolated_workspace / "datasets" / "upload-test", ignore_errors=True)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    at.switch_page("pages/dataset.py").run()
    at.segmented_control(key="import_from").set_value("Upload").run()
    files = []
    for label, seeds in (("Osteophytes", (1, 2, 3)), ("No finding", (4, 5))):
        for s in seeds:
            buf = io.BytesIO()
            Image.fromarray(to_uint8(render_phantom(label, size=64, seed=s).image)).save(buf, format="PNG")
            files.append((f"{label}-{s}.png", buf.getvalue(), "image/png"))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data, _ in files:
            zf.writestr(f"{name.split('-')[0]}/{name}", data)
        zf.writestr("Empty/", b"")
    at.file_uploader(key="import_files").set_value(("tree.zip", buf.getvalue(), "application/zip"))
    at.text_input(key="import_name").set_value("upload-test")
    at.button(key="import_run").click().run()
    assert not at.exception, at.exception
    assert at.metric[0].value == "5" and at.metric[1].value == "2"
    reports = [d.value for d in at.dataframe if "reason" in d.value.columns]
    assert reports and "has no images" in " ".join(reports[0]["reason"])  # the empty class folder is reported


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists("/usr/bin/chromium"), reason="/usr/bin/chromium missing: apt-get install chromium")
def test_dataset_page_after_importing_a_vindr_folder_in_chromium(vindr_export, isolated_workspace, small_phantom):
    from tests.browser import HOME_READY, chromium_page, serve_app, tall_screenshot, wait_rendered

    folder, table = vindr_export
    inside = isolated_workspace / "incoming" / "vindr-browser"
    if not inside.exists():  # the export plus two problems, so the load report has something to show
        shutil.copytree(folder, inside)
        (inside / "train_images" / "zerobytes.dicom").write_bytes(b"")
        with open(inside / "annotations" / "train.csv", "a") as f:
            f.write("s1,s1,zerobytes,rad1,No finding,,,,\ns2,s2,missingfile,rad1,No finding,,,,\n")
    shutil.rmtree(isolated_workspace / "datasets" / "vindr-spinexr-phantom", ignore_errors=True)
    SHOTS.mkdir(exist_ok=True)
    env = {"MEDAUG_DATASET": str(small_phantom.root), "MEDAUG_HOME": str(isolated_workspace),
           "MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"]}
    with serve_app(env) as (url, _), chromium_page() as page:
        page.goto(url)
        wait_rendered(page, HOME_READY)
        page.get_by_role("link", name="Dataset").first.click()
        wait_rendered(page, "text=Import data")
        page.get_by_text("Import data: VinDr-SpineXR folder").click()
        page.get_by_role("textbox", name="Folder on the server").fill(str(inside))
        page.get_by_role("textbox", name="Folder on the server").press("Enter")
        page.get_by_role("textbox", name="Dataset name").fill("vindr-spinexr-phantom")
        page.get_by_role("textbox", name="Dataset name").press("Enter")
        page.wait_for_timeout(500)
        page.get_by_role("button", name="Prepare dataset").click()
        page.wait_for_selector("text=Dataset card", timeout=90_000)
        wait_rendered(page, "[data-testid='stImage'] img")
        assert page.locator("[data-testid='stException']").count() == 0
        body = page.inner_text("body")
        assert f"Prepared {len(table)} images" in body and "Synthetic data" in body
        assert f"MONOCHROME1 {int(table['monochrome1'].sum())}" in body
        assert "Load report: 2 problem(s), 1 file(s) skipped" in body
        tall_screenshot(page, SHOTS / "dataset_vindr.png")
        # the image view shows the film's DICOM header with PHI masked
        page.get_by_role("button", name="View").first.click()
        page.wait_for_selector("[role='dialog'] [data-testid='stImage'] img", timeout=30_000)
        page.get_by_text("(PHI masked)").click()
        page.wait_for_selector("[role='dialog'] [data-testid='stDataFrame']", timeout=30_000)
        page.wait_for_timeout(500)
        page.screenshot(path=str(SHOTS / "dataset_vindr_view.png"))
