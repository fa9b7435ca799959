"""The synthetic phantom written as a VinDr-SpineXR folder (the layout :mod:`core.data.vindr`
reads): 12-bit data stored in 16 bits, lossless JPEG 2000 through pydicom's encoder, hashed
UIDs like the release, some files MONOCHROME1, and ``annotations/{train,test}.csv`` with one
row per box. ``python -m core phantom --format vindr`` runs :func:`export_phantom_vindr`.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from core.data.prepare import usable_cores
from core.data.vindr import NO_FINDING, VINDR_COLUMNS, VINDR_SPLITS
from core.files import atomic_path

BITS_STORED = 12
# DX Image Storage - For Presentation: what a digital radiograph is stored as
DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"


@dataclass(frozen=True)
class VindrExportConfig:
    """The phantom written as a VinDr-SpineXR-style folder."""

    n: int = 40                       # images, 1-20000 (class mix as the phantom's)
    height: int = 256                 # image height in px, 128-4096; width is 45-60 % of it (lateral spine film)
    seed: int = 0                     # same seed, same files
    noise: float = 0.0                # detector noise, standard deviation in 12-bit counts, 0-200 (0: exact phantom)
    monochrome1_fraction: float = 0.2 # share of files stored MONOCHROME1 (inverted grey scale), 0-1
    test_fraction: float = 0.2        # share of studies in the test split, 0-0.9
    workers: int = 0                  # processes; 0 = one per CPU core

    def __post_init__(self):
        if not 1 <= self.n <= 20000:
            raise ValueError(f"n={self.n}: choose between 1 and 20000 images.")
        if not 128 <= self.height <= 4096:  # JPEG 2000's 6 resolution levels need 32 px per side
            raise ValueError(f"height={self.height}: choose an image height between 128 and 4096 pixels.")
        if not 0.0 <= self.noise <= 200.0:
            raise ValueError(f"noise={self.noise}: choose a noise level between 0 and 200 counts.")
        if not 0.0 <= self.monochrome1_fraction <= 1.0:
            raise ValueError(f"monochrome1_fraction={self.monochrome1_fraction}: choose a share between 0 and 1.")
        if not 0.0 <= self.test_fraction <= 0.9:
            raise ValueError(f"test_fraction={self.test_fraction}: choose a share between 0 and 0.9.")
        if not 0 <= self.workers <= 64:
            raise ValueError(f"workers={self.workers}: choose 0 (all cores) to 64 processes.")

    @property
    def render_size(self) -> int:
        """The phantom is drawn at this square size, then cropped and scaled to ``height``."""
        return min(self.height, 1024)


def hashed_uid(*parts) -> str:
    """A 32-hex-digit id like the release's hashed UIDs (not a valid DICOM UID, on purpose)."""
    return hashlib.md5("/".join(str(p) for p in parts).encode()).hexdigest()


def crop_window(sample, render_size: int, aspect: float) -> tuple[int, int]:
    """The vertical strip (x0, width) of a square phantom render that becomes the film:
    ``aspect`` of its side, placed where it holds the most bone (the spine with its posterior
    elements, whichever way the film faces), and always holding every box."""
    width = int(round(render_size * aspect))
    image = sample.image
    bone = (image > np.percentile(image, 85)).sum(axis=0).astype(np.float64)  # bright pixels per column
    window = np.convolve(bone, np.ones(width), mode="valid")  # bone inside each strip x0 .. x0 + width
    x0 = int(np.argmax(window))
    if sample.boxes:
        bx0 = int(np.floor(min(b.xmin for b in sample.boxes)))
        bx1 = int(np.ceil(max(b.xmax for b in sample.boxes)))
        width = max(width, bx1 - bx0 + 2)
        x0 = min(max(x0, bx1 + 1 - width), bx0 - 1)
    width = min(width, render_size)
    return int(np.clip(x0, 0, render_size - width)), width


def _film(index: int, label: str, render_seed: int, config: VindrExportConfig) -> dict:
    """Draw one film: 12-bit counts (rows, cols) as displayed (bright = bone), its boxes in film
    pixels, and the geometry used."""
    from PIL import Image

    from core.data.phantom import render_phantom

    rng = np.random.default_rng([config.seed, index, 7])
    size = config.render_size
    sample = render_phantom(label, size=size, seed=render_seed)
    x0, cw = crop_window(sample, size, float(rng.uniform(0.45, 0.60)))
    strip = sample.image[:, x0:x0 + cw]
    height = config.height
    width = int(round(cw * height / size))
    if (height, width) != strip.shape:
        strip = np.asarray(Image.fromarray(strip, mode="F").resize((width, height), Image.Resampling.BILINEAR))
    counts = strip.astype(np.float64) * (2**BITS_STORED - 1)
    if config.noise > 0:
        counts = counts + rng.normal(0.0, config.noise, counts.shape)
    counts = np.clip(np.round(counts), 0, 2**BITS_STORED - 1).astype(np.uint16)
    sx, sy = width / cw, height / size
    boxes = [{"label": b.label, "xmin": round((b.xmin - x0) * sx, 2), "ymin": round(b.ymin * sy, 2),
              "xmax": round((b.xmax - x0) * sx, 2), "ymax": round(b.ymax * sy, 2)} for b in sample.boxes]
    return {"counts": counts, "boxes": boxes, "crop_x0": x0, "crop_width": cw, "scale_x": sx, "scale_y": sy,
            "monochrome1": bool(rng.random() < config.monochrome1_fraction)}


def write_vindr_dicom(path: Path, counts: np.ndarray, monochrome1: bool, uids: dict, description: str) -> None:
    """Write 12-bit counts as a lossless JPEG 2000 DX file with VinDr-style hashed UIDs, marked
    as derived/synthetic and carrying no identity; atomically (temp name + rename)."""
    from pydicom import config as dicom_config
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

    from core.data.dicom import quiet_uid_warnings

    top = 2**BITS_STORED - 1
    lo, hi = np.percentile(counts[::4, ::4], [0.5, 99.5])
    stored = (top - counts) if monochrome1 else counts
    center = (top - (lo + hi) / 2) if monochrome1 else (lo + hi) / 2
    previous = dicom_config.settings.writing_validation_mode
    with quiet_uid_warnings():
        dicom_config.settings.writing_validation_mode = dicom_config.WARN  # hashed UIDs, as in the release
        try:
            ds = Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.MediaStorageSOPClassUID = DX_SOP_CLASS
            ds.file_meta.MediaStorageSOPInstanceUID = uids["image"]
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.SOPClassUID = DX_SOP_CLASS
            ds.SOPInstanceUID = uids["image"]
            ds.StudyInstanceUID = uids["study"]
            ds.SeriesInstanceUID = uids["series"]
            ds.Modality = "DX"
            ds.PatientName = "Phantom^Synthetic"
            ds.PatientID = "PHANTOM"
            ds.PatientIdentityRemoved = "YES"
            ds.BodyPartExamined = "LSPINE"
            ds.ImageType = ["DERIVED", "SECONDARY"]
            ds.DerivationDescription = description
            ds.BurnedInAnnotation = "NO"
            ds.Rows, ds.Columns = (int(v) for v in counts.shape)
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, BITS_STORED, BITS_STORED - 1, 0
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
            ds.WindowCenter, ds.WindowWidth = round(float(center), 1), max(1.0, round(float(hi - lo), 1))
            ds.compress(JPEG2000Lossless, stored.astype(np.uint16), encoding_plugin="pylibjpeg",
                        generate_instance_uid=False)
            with atomic_path(path) as tmp:
                ds.save_as(tmp, enforce_file_format=True)
        finally:
            dicom_config.settings.writing_validation_mode = previous


def _export_chunk(jobs: list[dict], out: str, config: dict) -> list[dict]:
    """Worker: draw and write a chunk of films; return their records (counts left out)."""
    cfg = VindrExportConfig(**config)
    records = []
    for job in jobs:
        film = _film(job["index"], job["label"], job["render_seed"], cfg)
        path = Path(out) / f"{job['split']}_images" / f"{job['image_id']}.dicom"
        description = (f"Synthetic phantom radiograph (MedAug Studio core.data.phantom, seed {cfg.seed}, "
                       f"render seed {job['render_seed']}); not patient data")
        write_vindr_dicom(path, film["counts"], film["monochrome1"],
                          {"image": job["image_id"], "study": job["study_id"], "series": job["series_id"]},
                          description)
        rows, cols = film.pop("counts").shape
        records.append({**job, **film, "file": str(path), "width": cols, "height": rows})
    return records


def export_phantom_vindr(out: str | Path, config: VindrExportConfig | None = None,
                         on_progress: Callable[[int, int, str], None] | None = None, overwrite: bool = False):
    """Write the phantom as a VinDr-SpineXR folder at ``out``; return a DataFrame with one row
    per image: ids, split, label, file, photometric, film size, crop geometry, boxes (film px)."""
    import shutil
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    import pandas as pd

    from core.data.datasets import phantom_plan
    from core.data.splits import study_split

    config = config or VindrExportConfig()
    out = Path(out).expanduser()
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(f"{out}: already exists and is not empty; choose another --out or pass --force.")
        shutil.rmtree(out)
    for split in VINDR_SPLITS:
        (out / f"{split}_images").mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(exist_ok=True)

    plan = phantom_plan(config.n, config.seed)
    studies = pd.DataFrame({"study_id": [p[2] for p in plan], "label": [p[0] for p in plan],
                            "labels": [[p[0]] for p in plan]})
    splits = study_split(studies, {"train": 1 - config.test_fraction, "test": config.test_fraction},
                         seed=config.seed)
    jobs = []
    for i, ((label, render_seed, study), split) in enumerate(zip(plan, splits)):
        jobs.append({"index": i, "label": label, "render_seed": render_seed, "split": split,
                     "image_id": hashed_uid("image", config.seed, i), "study_id": hashed_uid("study", study),
                     "series_id": hashed_uid("series", study), "rad_id": f"rad{1 + i % 3}"})
    report = on_progress or (lambda done, total, msg: None)
    workers = max(1, min(config.workers or usable_cores(), len(jobs)))
    records: list[dict] = []
    report(0, len(jobs), f"Writing {len(jobs)} phantom DICOMs ({config.height} px high) on {workers} worker(s)")
    if workers == 1:
        for job in jobs:
            records += _export_chunk([job], str(out), asdict(config))
            report(len(records), len(jobs), "writing DICOM")
    else:
        chunk = max(1, min(8, len(jobs) // (workers * 4)))
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(_export_chunk, jobs[i:i + chunk], str(out), asdict(config))
                       for i in range(0, len(jobs), chunk)]
            for f in as_completed(futures):
                records += f.result()
                report(len(records), len(jobs), "writing DICOM")
    table = pd.DataFrame(sorted(records, key=lambda r: r["index"]))
    for split in VINDR_SPLITS:
        _write_csv(table[table["split"] == split], out / "annotations" / f"{split}.csv")
    return table


def _write_csv(table, path: Path) -> None:
    """One row per box; a normal image gets one 'No finding' row with empty coordinates."""
    import csv

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(VINDR_COLUMNS)
        for r in table.itertuples():
            ids = [r.study_id, r.series_id, r.image_id, r.rad_id]
            if not r.boxes:
                w.writerow([*ids, NO_FINDING, "", "", "", ""])
            for b in r.boxes:
                w.writerow([*ids, b["label"], b["xmin"], b["ymin"], b["xmax"], b["ymax"]])


def export_summary(table) -> dict:
    """Counts for the CLI's JSON line."""
    return {"images": len(table), "classes": {k: int(v) for k, v in table["label"].value_counts().items()},
            "splits": {k: int(v) for k, v in table["split"].value_counts().items()},
            "monochrome1": int(table["monochrome1"].sum()), "boxes": int(table["boxes"].map(len).sum()),
            "size": {"width": [int(table["width"].min()), int(table["width"].max())],
                     "height": int(table["height"].max())}}

