"""Apply a pipeline to the training split of a dataset and write an augmented dataset folder.

The output is a complete dataset folder (``core.data.datasets`` format): by default every row
of the source dataset (files hard-linked, or copied across file systems) plus the augmented
training images. Augmented rows carry ``source = "classic:<pipeline hash>"``, the label and
study of the image they came from (so they stay in its split and study), and its boxes moved
with the pixels. ``dataset.json`` records the parent dataset's id and content hash and the
pipeline. The run is logged to MLflow (``core.tracking``, kind ``augment``) with the pipeline
as params, a sample grid and the pipeline JSON as artifacts.
"""
from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from core.augment.pipeline import Pipeline
from core.data import manifest as mf
from core.data.datasets import Dataset, DatasetError, Progress, load_dataset, write_dataset
from core.data.io import ImageReadError, check_image_size


@dataclass(frozen=True)
class AugmentConfig:
    """What to augment and how much."""

    pipeline: Pipeline                    # the steps to apply
    classes: tuple[str, ...] = ()         # classes to augment; empty: every class
    target_per_class: int | None = None   # grow each chosen class's training split to this many images
                                          # (real + augmented); None: `copies` per training image
    copies: int = 1                       # augmented copies of each training image when no target is set
    seed: int = 0                         # image k of the run uses the generator [seed, k]
    include_source: bool = True           # carry over all source rows, so the folder is real + augmented

    def __post_init__(self):
        if not isinstance(self.pipeline, Pipeline):
            raise ValueError(f"pipeline: expected a Pipeline, got {type(self.pipeline).__name__}.")
        if not self.pipeline.steps:
            raise ValueError("pipeline: it has no steps; add at least one operation.")
        object.__setattr__(self, "classes", tuple(self.classes))
        if self.target_per_class is not None and not 1 <= int(self.target_per_class) <= 100_000:
            raise ValueError(f"target_per_class={self.target_per_class} is outside [1, 100000]; "
                             f"leave it empty to make `copies` per image instead.")
        if not 1 <= int(self.copies) <= 50:
            raise ValueError(f"copies={self.copies} is outside [1, 50].")
        if not 0 <= int(self.seed) < 2**32:
            raise ValueError(f"seed={self.seed} is outside [0, 2**32).")

    @property
    def source_tag(self) -> str:
        return f"classic:{self.pipeline.hash}"

    def tracking_params(self) -> dict[str, str]:
        return {**self.pipeline.mlflow_params(), "classes": ",".join(self.classes) or "all",
                "target_per_class": str(self.target_per_class), "copies": str(self.copies),
                "seed": str(self.seed), "include_source": str(self.include_source)}


@dataclass
class AugmentResult:
    dataset: Dataset                                   # the written folder
    added: dict[str, int]                              # augmented images per class
    skipped: dict[str, str] = field(default_factory=dict)  # source image id -> why it was skipped
    notes: list[str] = field(default_factory=list)     # e.g. a chosen class with no training images
    run_id: str | None = None
    seconds: float = 0.0


def read_native(source) -> np.ndarray:
    """An image file (path or file object) as a 2-D uint8 or uint16 array; 16-bit stays 16-bit."""
    from PIL import Image, UnidentifiedImageError

    name = getattr(source, "name", source)
    try:
        with Image.open(source) as im:
            check_image_size(name, *im.size)  # before decoding: a small upload can claim a huge size
            im.load()
            if im.mode.startswith("I;16"):
                return np.asarray(im).astype(np.uint16)
            if im.mode in ("I", "F"):
                arr = np.asarray(im)
                if arr.min() < 0 or arr.max() > 65535:
                    raise ImageReadError(f"{name}: pixel values outside 0..65535; save it as 8 or 16 bit.")
                return arr.astype(np.uint16)
            return np.asarray(im.convert("L"))
    except FileNotFoundError:
        raise ImageReadError(f"{name}: file not found; check the path or re-create the dataset.") from None
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"{name}: image is too large to open safely ({e}); downscale it first.") from e
    except (UnidentifiedImageError, OSError) as e:
        raise ImageReadError(f"{name}: not a readable image ({e}); re-export it as PNG.") from e


def plan_jobs(ds: Dataset, config: AugmentConfig) -> tuple[list[tuple[int, int]], list[str]]:
    """(row index of the source image, copy number) for every augmented image, and notes."""
    m = ds.manifest
    unknown = [c for c in config.classes if c not in ds.classes]
    if unknown:
        raise ValueError(f"classes: {', '.join(map(repr, unknown))} not in {ds.id}; "
                         f"known classes: {', '.join(ds.classes)}.")
    jobs, notes = [], []
    for label in config.classes or tuple(ds.classes):
        rows = m.index[(m["split"] == "train") & (m["label"] == label)].tolist()
        rows.sort(key=lambda i: m.at[i, "image_id"])
        if not rows:
            notes.append(f"{label}: no training images to augment; skipped.")
            continue
        need = (config.target_per_class - len(rows) if config.target_per_class is not None
                else len(rows) * config.copies)
        if need <= 0:
            notes.append(f"{label}: already has {len(rows)} training images (target {config.target_per_class}).")
        jobs += [(rows[k % len(rows)], k // len(rows)) for k in range(max(0, need))]
    return jobs, notes


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def augment_dataset(ds: Dataset, config: AugmentConfig, out: str | Path, *, on_progress: Progress | None = None,
                    overwrite: bool = False, track: bool = True, workers: int | None = None) -> AugmentResult:
    """Write the augmented dataset folder ``out`` (built beside it, renamed into place at the end)
    and log the run; see the module docstring."""
    out = Path(out).expanduser()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DatasetError(f"{out}: already exists and is not empty; choose another --out or pass --force.")
    if out.resolve() == ds.root:
        raise DatasetError(f"{out}: is the source dataset; write the augmented set to a new folder.")
    jobs, notes = plan_jobs(ds, config)
    report = on_progress or (lambda done, total, msg: None)
    if not track:
        return _build(ds, config, out, jobs, notes, report, overwrite, workers)

    from core.tracking import start_run

    with start_run("augment", config.tracking_params(), dataset=ds,
                   run_name=f"augment {ds.name} {config.pipeline.name or config.pipeline.hash}") as run:
        result = _build(ds, config, out, jobs, notes, report, overwrite, workers)
        result.run_id = run.run_id
        new = result.dataset
        run.set_tags({"medaug.output_dataset_id": new.id, "medaug.output_dataset_hash": new.content_hash,
                      "medaug.output_dir": str(new.root), "medaug.pipeline_hash": config.pipeline.hash})
        run.log_metrics({"images_added": sum(result.added.values()), "images_skipped": len(result.skipped),
                         "images_total": len(new.manifest), "seconds": result.seconds}, step=0)
        run.log_table(pd.DataFrame({"class": list(result.added), "added": list(result.added.values())}),
                      "added_per_class.json")
        run.log_image(_run_grid(ds, config), "samples.png")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "pipeline.json"
            path.write_text(config.pipeline.to_json())
            run.log_artifact(path)
    return result


def _run_grid(ds: Dataset, config: AugmentConfig):
    """Sample grid for the run: up to four training images of the chosen classes, four samples each."""
    from core.augment.preview import sample_grid

    m = ds.manifest
    chosen = m[(m["split"] == "train") & m["label"].isin(config.classes or ds.classes)]
    picks = chosen.groupby("label", sort=False).head(1).head(4)
    sources = []
    for _, row in picks.iterrows():
        try:
            sources.append((read_native(ds.root / row["path"]), row["boxes"]))
        except ImageReadError:
            continue
    if not sources:
        from PIL import Image
        return Image.new("RGB", (64, 64))
    return sample_grid(config.pipeline, sources, ds.classes, per_image=4, seed=config.seed)


def _build(ds, config, out, jobs, notes, report, overwrite, workers) -> AugmentResult:
    t0 = time.perf_counter()
    staging = out.with_name(f".{out.name}.building-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "images" / "aug").mkdir(parents=True)
    m = ds.manifest
    tag, h8 = config.source_tag, config.pipeline.hash[:8]
    total = len(jobs) + (len(m) if config.include_source else 0)
    done = 0
    report(0, total, f"Augmenting {len(jobs)} images of {ds.name} with pipeline {config.pipeline.hash}")
    try:
        rows: list[dict] = []
        if config.include_source:
            for row in m.to_dict("records"):
                _link(ds.root / row["path"], staging / row["path"])
                rows.append(row)
                done += 1
                if done % 200 == 0:
                    report(done, total, "linking the source images")

        def make(k: int) -> dict | tuple[str, str]:
            src_index, copy = jobs[k]
            src = m.loc[src_index]
            try:
                image = read_native(ds.root / src["path"])
            except ImageReadError as e:
                return (src["image_id"], str(e))
            result = config.pipeline.apply(image, np.random.default_rng([config.seed, k]), list(src["boxes"]))
            image_id = f"{src['image_id']}-aug{h8}-{copy:02d}"
            rel = f"images/aug/{image_id}.png"
            from PIL import Image

            Image.fromarray(result.image).save(staging / rel, compress_level=1)
            return {"image_id": image_id, "path": rel, "split": src["split"], "label": src["label"],
                    "labels": list(src["labels"]), "boxes": result.boxes, "study_id": src["study_id"],
                    "source": tag, "width": int(result.image.shape[1]), "height": int(result.image.shape[0]),
                    "sha256": mf.file_sha256(staging / rel)}

        added = {c: 0 for c in (config.classes or ds.classes)}
        skipped: dict[str, str] = {}
        n_workers = max(1, min(workers or os.cpu_count() or 1, 8))
        with ThreadPoolExecutor(n_workers) as pool:
            for item in pool.map(make, range(len(jobs))):
                done += 1
                if isinstance(item, tuple):
                    skipped[item[0]] = item[1]
                else:
                    rows.append(item)
                    added[item["label"]] += 1
                if done % 25 == 0 or done == total:
                    report(done, total, "augmenting")
        if not rows:
            raise DatasetError(f"{ds.root}: nothing to write (no training images in the chosen classes).")
        df = pd.DataFrame(rows)[list(mf.COLUMNS)]
        meta = {
            "name": out.name, "kind": "augmented", "synthetic": ds.synthetic,
            "label_mode": ds.meta.get("label_mode", "single"),
            "description": f"{ds.name} with classic augmentation (pipeline {config.pipeline.hash}, "
                           f"{sum(added.values())} augmented training images)."
                           + (" The source is synthetic (phantom), not patient data." if ds.synthetic else ""),
            "classes": ds.classes,
            "parent": {"id": ds.id, "name": ds.name, "content_hash": ds.content_hash, "root": str(ds.root)},
            "augment": {"source": tag, "pipeline": config.pipeline.to_dict(), "classes": list(config.classes),
                        "target_per_class": config.target_per_class, "copies": config.copies,
                        "seed": config.seed, "added": added, "include_source": config.include_source},
        }
        write_dataset(staging, df, meta)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    seconds = round(time.perf_counter() - t0, 2)
    report(total, total, f"Wrote {sum(added.values())} augmented images in {seconds} s")
    return AugmentResult(load_dataset(out), added, skipped, notes, None, seconds)


def default_output_dir(ds: Dataset, pipeline: Pipeline) -> Path:
    """``<workspace>/datasets/<source name>-classic-<pipeline hash[:8]>``."""
    from core.workspace import workspace_dir

    return workspace_dir("datasets") / f"{ds.name}-classic-{pipeline.hash[:8]}"


def augmented_zip(ds: Dataset) -> bytes:
    """A zip of the augmented images of ``ds`` (rows whose source is ``classic:...``), with their
    manifest rows as ``augmented.csv`` and the pipeline as ``pipeline.json``."""
    import json

    rows = ds.manifest[ds.manifest["source"].str.startswith("classic:")]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as z:  # PNGs are already compressed
        for row in rows.itertuples():
            z.write(ds.root / row.path, row.path)
        table = rows.assign(labels=[json.dumps(v) for v in rows["labels"]], boxes=[json.dumps(v) for v in rows["boxes"]])
        z.writestr("augmented.csv", table.to_csv(index=False))
        pipeline = ds.meta.get("augment", {}).get("pipeline")
        if pipeline:
            z.writestr("pipeline.json", json.dumps(pipeline, indent=2))
    return buffer.getvalue()
