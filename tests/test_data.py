"""Data layer: manifest round-trip and validation, study splits, content hash, pixel cache."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.data import manifest as mf
from core.data.cache import box_to_cache, letterbox, pixel_cache
from core.data.datasets import (DatasetError, build_phantom_dataset, imbalance_ratio, load_dataset,
                                verify_dataset, write_dataset)
from core.data.io import ImageReadError, read_image
from core.data.phantom import CLASS_NAMES
from core.data.splits import study_split


def test_phantom_dataset_is_complete(small_phantom):
    ds = small_phantom
    assert ds.synthetic and ds.meta["kind"] == "phantom"
    assert ds.classes == list(CLASS_NAMES)
    assert len(ds.manifest) == 160
    assert (ds.manifest["source"] == "phantom").all()
    for row in ds.manifest.itertuples():
        assert (ds.root / row.path).is_file()
        assert (row.label == "No finding") == (len(row.boxes) == 0)
        assert row.labels == [row.label]
    assert verify_dataset(ds) == []


def test_manifest_round_trips(small_phantom, tmp_path):
    path = tmp_path / "m.parquet"
    mf.write_manifest(small_phantom.manifest, path)
    back = mf.read_manifest(path)
    pd.testing.assert_frame_equal(back[list(mf.COLUMNS)], small_phantom.manifest[list(mf.COLUMNS)],
                                  check_dtype=False)
    assert back.loc[0, "boxes"] == small_phantom.manifest.loc[0, "boxes"]
    assert mf.content_hash(back) == small_phantom.content_hash


def test_manifest_errors_name_the_problem(small_phantom, tmp_path):
    df = small_phantom.manifest
    with pytest.raises(mf.ManifestError, match="missing column.*split"):
        mf.validate_manifest(df.drop(columns="split"))
    dup = pd.concat([df, df.iloc[:1]])
    with pytest.raises(mf.ManifestError, match="duplicate image_id"):
        mf.validate_manifest(dup)
    bad = df.copy()
    bad.loc[0, "split"] = "holdout"
    with pytest.raises(mf.ManifestError, match="unknown split.*holdout"):
        mf.validate_manifest(bad)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    with pytest.raises(mf.ManifestError, match="broken.parquet"):
        mf.read_manifest(broken)


def test_content_hash_ignores_row_order_but_not_labels(small_phantom):
    df = small_phantom.manifest
    assert mf.content_hash(df.sample(frac=1.0, random_state=0)) == small_phantom.content_hash
    changed = df.copy()
    changed.loc[3, "label"] = "Osteophytes" if changed.loc[3, "label"] != "Osteophytes" else "No finding"
    assert mf.content_hash(changed) != small_phantom.content_hash


def test_study_split_has_no_leak_and_reaches_every_class(small_phantom):
    df = small_phantom.manifest
    per_study = df.groupby("study_id")["split"].nunique()
    assert (per_study == 1).all(), "a study is cut across splits"
    assert set(df["split"]) == {"train", "val", "test"}
    frac = df["split"].value_counts(normalize=True)
    assert 0.6 < frac["train"] < 0.8 and 0.12 < frac["test"] < 0.28
    # every class with enough studies is in train and in test
    for label, group in df.groupby("label"):
        if group["study_id"].nunique() >= 4:
            assert {"train", "test"} <= set(group["split"]), label


def test_study_split_is_seeded_and_validates():
    df = pd.DataFrame({"study_id": [f"s{i // 2}" for i in range(200)],
                       "label": ["a" if i < 150 else "b" for i in range(200)]})
    df["labels"] = [[x] for x in df["label"]]
    a, b = study_split(df, seed=3), study_split(df, seed=3)
    assert a.equals(b)
    assert not a.equals(study_split(df, seed=4))
    with pytest.raises(ValueError, match="non-negative"):
        study_split(df, {"train": -1, "test": 1})


def test_phantom_build_is_deterministic(tmp_path, small_phantom):
    again = build_phantom_dataset(tmp_path / "again", n=160, size=64, seed=1, workers=1)
    assert again.content_hash == small_phantom.content_hash
    other = build_phantom_dataset(tmp_path / "other", n=160, size=64, seed=2, workers=1)
    assert other.content_hash != small_phantom.content_hash
    with pytest.raises(DatasetError, match="already exists"):
        build_phantom_dataset(tmp_path / "other", n=10, size=64, seed=2, workers=1)
    with pytest.raises(ValueError, match="size=8"):
        build_phantom_dataset(tmp_path / "tiny", n=10, size=8)
    assert not (tmp_path / "tiny").exists()


def test_load_dataset_explains_a_wrong_folder(tmp_path):
    with pytest.raises(DatasetError, match="not a MedAug dataset folder.*python -m core phantom"):
        load_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text("{oops")
    with pytest.raises(DatasetError, match="invalid JSON"):
        load_dataset(tmp_path)


def test_imbalance_ratio():
    assert imbalance_ratio({"a": 100, "b": 20, "c": 0}) == 5.0
    assert imbalance_ratio({"a": 7}) == 1.0


def test_pixel_cache_matches_files_and_survives_a_bad_file(small_phantom, tmp_path):
    # copy the dataset and corrupt one file: the cache is built, the bad file is reported
    df = small_phantom.manifest.iloc[:12].copy()
    (tmp_path / "images").mkdir()
    for row in df.itertuples():
        (tmp_path / row.path).write_bytes((small_phantom.root / row.path).read_bytes())
    (tmp_path / df.iloc[5]["path"]).write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    ds = write_dataset(tmp_path, df, {"name": "copy"})
    cache = pixel_cache(ds, 32)
    assert cache.array.shape == (12, 32, 32) and cache.array.dtype == np.uint8
    assert isinstance(cache.array, np.memmap)
    assert cache.ok.tolist() == [i != 5 for i in range(12)]
    bad_id = df.iloc[5]["image_id"]
    assert bad_id in cache.errors and df.iloc[5]["path"].split("/")[-1] in cache.errors[bad_id]
    expected = letterbox(read_image(ds.root / df.iloc[0]["path"]), 32)
    assert np.abs(cache.array[0].astype(float) / 255 - expected).max() < 1 / 255 + 1e-6
    # a second open reuses the file
    again = pixel_cache(ds, 32)
    assert again.path == cache.path and np.array_equal(again.array, cache.array)
    with pytest.raises(ValueError, match="between 8 and 2048"):
        pixel_cache(ds, 4)


def test_letterbox_keeps_aspect_and_boxes_follow():
    img = np.zeros((100, 50), dtype=np.float32)
    img[10:20, 30:40] = 1.0  # a bright square
    out = letterbox(img, 50)
    box = box_to_cache({"label": "x", "xmin": 30, "ymin": 10, "xmax": 40, "ymax": 20}, width=50, height=100, size=50)
    assert (box["xmin"], box["ymin"], box["xmax"], box["ymax"]) == (27.5, 5.0, 32.5, 10.0)
    inside = out[int(box["ymin"]):int(box["ymax"]), int(np.ceil(box["xmin"])):int(box["xmax"])]
    assert inside.mean() > 0.9 and out.sum() == pytest.approx(img.sum() / 4, rel=0.05)


def test_read_image_handles_depths_and_names_bad_files(tmp_path):
    a = (np.arange(64 * 64).reshape(64, 64) % 4096).astype(np.uint16)  # 12-bit data in 16 bits
    Image.fromarray(a).save(tmp_path / "x12.png")
    out = read_image(tmp_path / "x12.png")
    assert out.dtype == np.float32 and out.max() == pytest.approx(1.0) and out.min() == 0.0
    Image.fromarray((a // 16).astype(np.uint8)).save(tmp_path / "x8.png")
    assert read_image(tmp_path / "x8.png").max() == pytest.approx(1.0)
    (tmp_path / "bad.png").write_text("hello")
    with pytest.raises(ImageReadError, match="bad.png"):
        read_image(tmp_path / "bad.png")
    with pytest.raises(ImageReadError, match="not found"):
        read_image(tmp_path / "missing.png")


def test_dataset_json_records_generator(small_phantom):
    meta = json.loads((small_phantom.root / "dataset.json").read_text())
    assert meta["generator"] == {"n": 160, "size": 64, "seed": 1}
    assert meta["content_hash"] == small_phantom.content_hash and meta["synthetic"] is True
