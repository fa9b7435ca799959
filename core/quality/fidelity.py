"""A generator's fidelity: the cheap check that picks its best checkpoint during training, and the
final quality of the checkpoint it chose (``quality.json``).

- :func:`real_reference` holds the domain features of the REAL training images (the one predicate
  :func:`core.data.manifest.real_rows`), by the generator's class indices.
- :func:`fidelity_fn` builds the callback :func:`core.gan.train.train_gan` calls every
  ``fidelity_every`` steps: KID (Binkowski et al.) of ``CHECK_PER_CLASS`` samples per class against
  that class's real features, averaged over the classes (each class also reported as
  ``kid/<class>``). A few hundred images and a 128-d encoder: about a second on a CPU. The noise is
  fixed, so checks compare like with like. core.gan never imports this module: the CLI and the
  study hand the callback in.
- :func:`final_quality` measures the chosen checkpoint on FRESH noise (not the noise it was chosen
  on) with :func:`core.quality.setmetrics.set_metrics` (KID, FID, k-NN precision/recall with
  coverage-tested 95% intervals), synthetic classes in the real set's proportions, and decides
  ``usable``: k-NN precision at or above :data:`PRECISION_FLOOR`.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CHECK_PER_CLASS = 64          # synthetic (and at most this many real) images per class in each check
CHECK_KID_SUBSETS = 20        # KID subsets per class in a check (the final measure uses set_metrics' 50)
FINAL_MAX_REAL = 1000         # real images in the final measure (all of them below this)
QUALITY_FILE = "quality.json"
QUALITY_KEYS = ("kid", "kid_lo", "kid_hi", "fid", "fid_lo", "fid_hi", "precision", "precision_lo", "precision_hi",
                "recall", "recall_lo", "recall_hi", "best_step", "checks", "usable", "reason", "extractor",
                "n_real", "n_synthetic")
# k-NN precision (k = 3) below this marks a generator unusable. Measured on the default phantom (701
# real training images, 8 classes, domain encoder at 64 px; as many synthetic as real, classes in the
# real proportions; GAN runs on 1 CPU thread each, two at a time on 2 shared cores):
#   real vs real (one half of the train split against the other)   0.94 [0.91, 0.98]  <- the ceiling
#   untrained conditional DCGAN, and after 20 steps (noise blobs)   0.00 [0.00, 0.00]
#   DCGAN / WGAN at 64 px, width 16, after 6 CPU minutes (grey)     0.00
#   WGAN at 32 px after 6 CPU minutes (KID 0.17)                    0.09 [0.00, 0.39]
#   DCGAN at 32 px after 2 / 6 CPU minutes (KID 0.075 / 0.020)      0.35 [0.15, 0.55] / 0.82 [0.66, 0.98]
# Noise-like generators sit at 0 and real data near 0.94; 0.3 (about a third of the ceiling) needs a
# clear share of the images to land on the real manifold, drops everything that still looks like
# noise with a margin, and is itself outside the blob-makers' intervals. Precision says nothing about
# diversity: the recall and the collapse warnings in quality.json do (recall was ~0 in every short run).
PRECISION_FLOOR = 0.3


@dataclass
class RealReference:
    """Domain features of the real TRAINING images, with class indices into ``classes``."""
    features: np.ndarray        # float64 (N, D)
    labels: np.ndarray          # int64 (N,), -1 where the generator has no such class
    classes: tuple[str, ...]    # the generator's classes (conditional) or the one class it learns
    extractor: object           # core.quality.features.Extractor (its name and description are recorded)

    def of_class(self, i: int | None) -> np.ndarray:
        return self.features if i is None else self.features[self.labels == i]


def real_reference(extractor, images: np.ndarray, labels, classes) -> RealReference:
    """Features of real training ``images`` (uint8 (N, H, W)) with class names ``labels`` (N,),
    indexed by the generator's ``classes``."""
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index.get(str(c), -1) for c in labels], dtype=np.int64)
    return RealReference(extractor(np.asarray(images)), y, tuple(classes), extractor)


def dataset_reference(ds, classes, size: int = 64, class_name: str | None = None) -> RealReference:
    """The reference of a dataset folder: its domain encoder (cached per content hash) and the real
    TRAIN rows (of ``class_name`` only for a per-class generator)."""
    from core.data.arrays import split_arrays
    from core.quality.features import domain_encoder

    extractor = domain_encoder(ds, size)
    train = split_arrays(ds, size, "train", classes=[class_name] if class_name is not None else None)
    return real_reference(extractor, train.images, train.labels, classes if classes else (class_name or "all",))


def array_encoder(images: np.ndarray, labels: np.ndarray, class_names, key: str, size: int = 64,
                  epochs: int = 8, seed: int = 0):
    """A domain encoder trained on real training arrays (the study's splits), cached in the workspace
    by ``key`` (e.g. the split's train hash) as :func:`core.quality.features.domain_encoder` caches
    a dataset's."""
    from core.quality.features import cached_encoder, encoder_path, train_domain_encoder

    def train() -> dict:
        present = sorted(set(np.asarray(labels).tolist()))
        if len(present) < 2:
            raise ValueError("the domain encoder is a classifier and needs training images of at least 2 classes.")
        remap = {c: i for i, c in enumerate(present)}
        names = [str(class_names[c]) for c in present]
        state = train_domain_encoder(np.asarray(images), np.array([remap[c] for c in np.asarray(labels).tolist()]),
                                     names, size, epochs, seed)
        return {**state, "dataset_hash": key}

    return cached_encoder(encoder_path(f"arrays{key}", size, epochs, seed), train, "the study's real train split", size)


def metric_name(class_name: str) -> str:
    """A class name as MLflow accepts it in a metric key (letters, digits, ``_ - . /`` and spaces)."""
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", str(class_name))


def fidelity_fn(ref: RealReference, conditional: bool, n_per_class: int = CHECK_PER_CLASS,
                subsets: int = CHECK_KID_SUBSETS, seed: int = 0) -> Callable[[Callable], dict]:
    """The check :func:`core.gan.train.train_gan` calls: ``sample -> {"kid": mean over classes,
    "kid/<class>": ...}``. Classes with fewer than 2 real training images are left out of the mean."""
    from core.quality.setmetrics import kid

    rng = np.random.default_rng(seed)
    groups = []   # (class index or None, name, real features (at most n_per_class, fixed once))
    for i, name in (enumerate(ref.classes) if conditional else [(None, ref.classes[0])]):
        real = ref.of_class(i)
        if len(real) < 2:
            continue
        if len(real) > n_per_class:
            real = real[np.sort(rng.choice(len(real), n_per_class, replace=False))]
        groups.append((i, name, real))
    if not groups:
        raise ValueError("the fidelity check needs a class with at least 2 real training images.")

    def check(sample) -> dict:
        out = {}
        for i, name, real in groups:
            fake = ref.extractor(sample(n_per_class, label=i))
            out[f"kid/{metric_name(name)}"] = kid(real, fake, subsets=subsets, seed=seed)[0]
        return {"kid": float(np.mean(list(out.values()))), **out}

    return check


def quality_reason(precision: float, floor: float = PRECISION_FLOOR) -> tuple[bool, str]:
    if not math.isfinite(precision):
        return False, "precision could not be measured"
    if precision < floor:
        return False, (f"k-NN precision {precision:.3f} is below the floor {floor:.2f}: most of its images lie "
                       f"off the real images' manifold (noise-like blobs or an unfinished generator); "
                       f"train longer or pick another variant")
    return True, f"k-NN precision {precision:.3f} is at or above the floor {floor:.2f}"


def final_quality(ref: RealReference, sample_class: Callable[[int, int | None], np.ndarray], conditional: bool, *,
                  best_step: int = 0, checks: int = 0, max_real: int = FINAL_MAX_REAL, n_boot: int = 50,
                  seed: int = 1, floor: float = PRECISION_FLOOR) -> dict:
    """Set metrics of the chosen checkpoint against the real training features.

    ``sample_class(n, class_index)`` returns n uint8 images of that class (None: a per-class or
    unconditional generator) drawn on fresh noise. As many synthetic images as real ones, class by
    class in the real proportions, so precision and recall weigh the classes alike."""
    from core.quality.setmetrics import set_metrics

    rng = np.random.default_rng(seed)
    real, labels = ref.features, ref.labels
    if conditional:
        keep = labels >= 0
        real, labels = real[keep], labels[keep]
    if len(real) > max_real:
        pick = np.sort(rng.choice(len(real), max_real, replace=False))
        real, labels = real[pick], labels[pick]
    if conditional:
        counts = np.bincount(labels, minlength=len(ref.classes))
        fake = np.concatenate([ref.extractor(sample_class(int(n), i)) for i, n in enumerate(counts) if n > 0])
    else:
        fake = ref.extractor(sample_class(len(real), None))
    m = set_metrics(real, fake, n_boot=n_boot, seed=seed)
    usable, reason = quality_reason(m["precision"], floor)
    q = {k: m[k] for k in QUALITY_KEYS if k in m}
    q.update(best_step=int(best_step), checks=int(checks), usable=usable, reason=reason,
             extractor=getattr(ref.extractor, "description", str(ref.extractor)), n_real=int(len(real)),
             n_synthetic=int(len(fake)), precision_floor=floor, warnings=m.get("warnings", []))
    return {k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in q.items()}


def checkpoint_sampler(checkpoint: str | Path, device: str = "cpu", seed: int = 1) -> Callable:
    """``sample_class(n, class_index)`` over a generator checkpoint of either family (GAN or diffusion,
    through :mod:`core.generators`; the checkpoint is read once)."""
    from core.generators import open_generator

    gen = open_generator(checkpoint, device)

    def sample_class(n: int, i: int | None) -> np.ndarray:
        name = gen.config.classes[i] if (gen.conditional and i is not None) else None
        return gen.sample(n, name, seed=seed + (i or 0) * 1009).images

    return sample_class


def write_quality(folder: str | Path, quality: Mapping) -> Path:
    """``<folder>/quality.json`` (atomic), beside the checkpoint it describes."""
    from core.files import write_json_atomic

    path = Path(folder) / QUALITY_FILE
    write_json_atomic(path, {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                             for k, v in quality.items()})
    return path


def read_quality(folder: str | Path) -> dict | None:
    import json

    path = Path(folder) / QUALITY_FILE
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def mlflow_metrics(quality: Mapping) -> dict[str, float]:
    """``gen_kid``, ``gen_kid_lo``, ... ``gen_recall_hi`` (finite values only) for the GAN's run."""
    out = {}
    for k in QUALITY_KEYS[:12]:
        v = quality.get(k)
        if isinstance(v, (int, float)) and math.isfinite(v):
            out[f"gen_{k}"] = float(v)
    out["gen_usable"] = 1.0 if quality.get("usable") else 0.0
    return out
