"""From a checkpoint to synthetic images, and from images to a synthetic dataset folder.

- :func:`generate_images` needs only torch/numpy: G in eval mode, noise from one seeded CPU
  generator, so the same (checkpoint, seed, n, class) gives the same images on any device.
- :func:`write_synthetic_set` writes PNGs named ``synthetic-gan-...`` plus manifest rows with
  source ``gan:<run id>`` through :func:`core.data.datasets.write_dataset`; every image goes to
  the train split (synthetic images never enter a test split). The seed is in every image id
  and file name and in ``dataset.json``'s ``generator`` records.
- Optional DICOM copies are de-identified (no patient data exists to begin with) and marked
  ImageType DERIVED\\SECONDARY, ConversionType SYN, with a DerivationDescription naming the
  model and the run, so a synthetic image can never pass for a patient's.
"""
from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.gan.models import Generator
from core.device import resolve_device
from core.gan.train import GanConfig, checkpoint_config, load_checkpoint

SYNTHETIC_PREFIX = "synthetic-gan"


@dataclass
class GeneratedImages:
    images: np.ndarray          # uint8 (n, R, R)
    labels: list[str]           # class of each image
    config: GanConfig           # the checkpoint's training config
    run_id: str                 # MLflow run that trained it (or local-<data fingerprint> outside MLflow)
    step: int                   # generator steps the checkpoint had trained
    seed: int                   # noise seed


def generator_checkpoint(path: str | Path) -> Path:
    """The checkpoint to sample from: a train-gan folder or its ``checkpoint.pt`` means the run's
    ``best.pt`` (lowest fidelity KID) when there is one, else ``checkpoint.pt`` (the last); any
    other file is taken as given."""
    from core.gan.train import BEST_FILE, CHECKPOINT_FILE

    path = Path(path)
    folder = path if path.is_dir() else path.parent if path.name == CHECKPOINT_FILE else None
    if folder is not None and (folder / BEST_FILE).is_file():
        return folder / BEST_FILE
    return folder / CHECKPOINT_FILE if path.is_dir() else path


def checkpoint_run_id(state: dict) -> str:
    run_id = (state.get("meta") or {}).get("run_id")
    return str(run_id) if run_id else f"local-{str(state.get('data_fingerprint', 'unknown'))[:12]}"


def load_generator(checkpoint: str | Path, device: str = "cpu") -> tuple[Generator, dict]:
    """The checkpoint's generator in eval mode on ``device``, and the checkpoint dict."""
    dev = resolve_device(device)
    state = load_checkpoint(checkpoint, dev)
    cfg = checkpoint_config(state)
    G = Generator(cfg.nz, cfg.resolution, 1, cfg.width, len(cfg.classes) if cfg.conditional else 0)
    try:
        G.load_state_dict(state["generator"])
    except RuntimeError as e:
        raise ValueError(f"{checkpoint}: generator weights do not fit its config ({str(e)[:200]}); "
                         f"the checkpoint is damaged.") from e
    return G.to(dev).eval(), state


def class_labels_for(cfg: GanConfig, n: int, class_name: str | None, where: str) -> tuple[list[str], torch.Tensor | None]:
    """Each image's class name, and the label indices a conditional G needs."""
    if cfg.conditional:
        if class_name is None:   # spread evenly over the classes
            idx = torch.arange(n) % len(cfg.classes)
        elif class_name in cfg.classes:
            idx = torch.full((n,), cfg.classes.index(class_name))
        else:
            raise ValueError(f"{where}: class {class_name!r} is not one of this conditional model's classes "
                             f"{list(cfg.classes)}.")
        return [cfg.classes[i] for i in idx.tolist()], idx
    if cfg.class_name is None:
        raise ValueError(f"{where}: this model was trained on all classes without labels, so its images have no "
                         f"class; train one per class (--class NAME) or a conditional model (--conditional).")
    if class_name is not None and class_name != cfg.class_name:
        raise ValueError(f"{where}: this model was trained on class {cfg.class_name!r} only; "
                         f"drop --class or use a checkpoint of {class_name!r}.")
    return [cfg.class_name] * n, None


def generate_images(checkpoint: str | Path, n: int, class_name: str | None = None, seed: int = 0,
                    batch: int = 256, device: str = "cpu") -> GeneratedImages:
    """``n`` images (uint8) from the checkpoint's generator; ``class_name`` picks a conditional class."""
    if not 1 <= n <= 1_000_000:
        raise ValueError(f"n={n}: choose between 1 and 1000000 images.")
    G, state = load_generator(checkpoint, device)
    cfg = checkpoint_config(state)
    names, idx = class_labels_for(cfg, n, class_name, str(checkpoint))
    noise = torch.Generator().manual_seed(seed)
    z = torch.randn(n, cfg.nz, generator=noise)
    dev = next(G.parameters()).device
    out = np.empty((n, cfg.resolution, cfg.resolution), dtype=np.uint8)
    with torch.inference_mode():
        for i in range(0, n, batch):
            y = None if idx is None else idx[i:i + batch].to(dev)
            x = G(z[i:i + batch].to(dev), y).float()
            out[i:i + batch] = ((x[:, 0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
    return GeneratedImages(out, names, cfg, checkpoint_run_id(state), int(state["step"]), seed)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def derivation_description(gen: GeneratedImages) -> str:
    c = gen.config
    return (f"SYNTHETIC image generated by MedAug Studio: {c.variant} GAN at {c.resolution} px, MLflow run "
            f"{gen.run_id}, checkpoint step {gen.step}, noise seed {gen.seed}. Not a patient image.")


def write_dicom(path: Path, pixels: np.ndarray, *, image_id: str, label: str, description: str,
                study_uid: str, series_uid: str, number: int) -> None:
    """One de-identified Secondary Capture file, 8-bit MONOCHROME2, marked synthetic."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.DerivationDescription = description[:1024]
    ds.ConversionType = "SYN"                      # "synthetic image"
    ds.Modality = "OT"
    ds.Manufacturer = "MedAug Studio"
    ds.SeriesDescription = "SYNTHETIC - GAN generated"
    ds.ImageComments = f"Synthetic, class: {label}"
    # de-identified: no patient ever existed; identifying attributes are empty or say so
    ds.PatientName = "SYNTHETIC^GAN"
    ds.PatientID = image_id[:64]
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyDate = ds.StudyTime = ds.AccessionNumber = ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "No patient data: image synthesised by a generative model"
    ds.BurnedInAnnotation = "NO"
    ds.SeriesNumber, ds.InstanceNumber = 1, number
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.LossyImageCompression = "00"
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)


def write_synthetic_set(checkpoint: str | Path, n: int, out: str | Path, class_name: str | None = None,
                        seed: int = 0, *, dicom: bool = False, append: bool = False, overwrite: bool = False,
                        device: str = "cpu", on_progress: Callable[[int, int, str], None] | None = None):
    """Generate ``n`` images and write (or, with ``append``, extend) a synthetic dataset folder
    at ``out``. Returns the :class:`core.data.datasets.Dataset`."""
    import pandas as pd
    from PIL import Image

    from core.data.datasets import META_FILE, load_dataset, write_dataset
    from core.data.manifest import file_sha256

    out = Path(out).expanduser()
    existing, replace = None, False
    if out.exists() and any(out.iterdir()):
        if overwrite:
            replace = True     # removed once the images exist: a bad checkpoint or device leaves OUT alone
        elif append and (out / META_FILE).is_file():
            existing = load_dataset(out)
        else:
            raise ValueError(f"{out}: already exists and is not empty; pass --append to add to a synthetic set "
                             f"there, --force to replace it, or choose another --out.")
    if existing is not None and not existing.synthetic:
        raise ValueError(f"{out}: holds a non-synthetic dataset; GAN images go to their own folder.")

    report = on_progress or (lambda done, total, msg: None)
    report(0, n, f"Generating {n} images from {checkpoint}")
    gen = generate_images(checkpoint, n, class_name, seed, device=device)
    if replace:
        shutil.rmtree(out)
    run8 = gen.run_id.replace("local-", "")[:8]
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    description = derivation_description(gen)
    if dicom:
        from pydicom.uid import generate_uid

        (out / "dicom").mkdir(exist_ok=True)
        study_uid, series_uid = generate_uid(), generate_uid()
    taken = set(existing.manifest["image_id"]) if existing is not None else set()
    rows = []
    for i, (pixels, label) in enumerate(zip(gen.images, gen.labels)):
        image_id = f"{SYNTHETIC_PREFIX}-{run8}-{slug(label)}-s{seed}-{i:05d}"
        if image_id in taken:
            raise ValueError(f"{out}: already holds {image_id} (same run, class and seed); use another --seed.")
        path = images_dir / f"{image_id}.png"
        Image.fromarray(pixels).save(path, compress_level=1)
        if dicom:
            write_dicom(out / "dicom" / f"{image_id}.dcm", pixels, image_id=image_id, label=label,
                        description=description, study_uid=study_uid, series_uid=series_uid, number=i + 1)
        rows.append({"image_id": image_id, "path": f"images/{image_id}.png", "split": "train", "label": label,
                     "labels": [label], "boxes": [], "study_id": image_id, "source": f"gan:{gen.run_id}",
                     "width": int(pixels.shape[1]), "height": int(pixels.shape[0]), "sha256": file_sha256(path)})
        if (i + 1) % 100 == 0 or i + 1 == n:
            report(i + 1, n, "writing PNGs" + (" and DICOM" if dicom else ""))
    record = {"checkpoint": str(Path(checkpoint).resolve()), "run_id": gen.run_id, "variant": gen.config.variant,
              "resolution": gen.config.resolution, "step": gen.step, "seed": seed, "n": n,
              "class": class_name or gen.config.class_name, "dicom": dicom}
    df = pd.DataFrame(rows)
    if existing is not None:
        df = pd.concat([existing.manifest, df], ignore_index=True)
        meta = {k: v for k, v in existing.meta.items() if k not in ("content_hash", "images", "classes")}
        meta["generator"] = list(meta.get("generator") or []) + [record]
    else:
        meta = {"name": out.name, "kind": "synthetic", "synthetic": True, "label_mode": "single",
                "description": "GAN-generated synthetic images (MedAug Studio). Not patient data; "
                               "train split only, never for testing.",
                "generator": [record]}
    return write_dataset(out, df, meta)
