"""Exploring one generator of either family: a latent path, one noise across classes, nearest real images.

Everything takes a :class:`core.generators.Generator` (``open_generator(checkpoint)``), so a GAN and a
diffusion model are explored the same way:

- :func:`slerp`: spherical interpolation between batches of noise tensors;
- :func:`interpolation`: uint8 frames along the great circle from seed A's noise to seed B's. For a GAN
  that is its z; for a diffusion model it is the DDIM start noise x_T, decoded by DDIM, which is
  deterministic at eta = 0, so a frame depends on its noise only (the endpoints are ``gen.sample`` of
  the two seeds);
- :func:`class_sweep`: the same noise decoded as every class of a conditional model, one row per class;
- :func:`nearest_real`: for each sample, its k nearest real TRAINING images of the same class in the
  domain encoder's feature space, with the memorization audit's verdict (:mod:`core.quality.memorization`).

Why slerp for Gaussian noise: a standard normal vector in d dimensions has a norm close to sqrt(d),
and two independent ones are nearly orthogonal, so the straight line between them passes through norm
~ sqrt(d / 2) at its midpoint, a region the generator never saw in training. The great circle keeps
the norm of the endpoints (White 2016, "Sampling generative networks").

Sampling cost: a GAN decodes hundreds of images per second on a CPU; a diffusion model runs its UNet
``steps`` times per image (twice per step with guidance), about 0.5 s per 64 px image at 25 steps on a
CPU core. So the defaults are few images (8 frames, one row per class) and every sampling call takes
``on_progress(done, total, message)``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

Progress = Callable[[int, int, str], None]

PARALLEL_COS = 0.9995     # |cos| above this: the vectors are (anti)parallel and slerp falls back to lerp
MAX_FRAMES = 64           # an interpolation strip of more frames is a video, not a page section
MAX_PER_CLASS = 16        # noise columns of a class sweep
DECODE_BATCH = 4          # images per decode call: one progress report each (diffusion batches well up to here)
GENERATOR_COMMANDS = {"train-gan": "gan", "train-diffusion": "diffusion"}
POOLED = "(all classes)"  # the label of a model trained on every class without labels


# --- noise paths ----------------------------------------------------------------------------------

def slerp(a, b, t):
    """Spherical interpolation from ``a`` to ``b``, row by row: ``a``, ``b`` (n, *d) noise batches,
    ``t`` a float or (n,) in [0, 1]; returns (n, *d) in ``a``'s dtype. Each row moves along the great
    circle through a_i and b_i; its norm goes from |a_i| to |b_i| without the dip of a straight line.
    Rows whose |cos| exceeds :data:`PARALLEL_COS` (nearly parallel or opposite: the circle is
    ill-defined) are interpolated linearly. t = 0 and t = 1 give ``a`` and ``b`` exactly."""
    import torch

    a, b = torch.as_tensor(a), torch.as_tensor(b)
    if a.shape != b.shape or a.dim() < 1:
        raise ValueError(f"slerp: a {tuple(a.shape)} and b {tuple(b.shape)} must be batches of the same shape "
                         f"(n, *latent).")
    n = a.shape[0]
    t = torch.as_tensor(t, dtype=torch.float64)
    t = t.expand(n) if t.dim() == 0 else t
    if t.shape != (n,):
        raise ValueError(f"slerp: t has shape {tuple(t.shape)}; give a float or one value per row ({n}).")
    if not bool(((t >= 0) & (t <= 1)).all()):
        raise ValueError(f"slerp: t must lie in [0, 1], got {t.min().item():g}..{t.max().item():g}.")
    fa, fb = a.reshape(n, -1).double(), b.reshape(n, -1).double()
    norms = fa.norm(dim=1) * fb.norm(dim=1)
    cos = ((fa * fb).sum(1) / norms.clamp_min(1e-300)).clamp(-1.0, 1.0)
    omega = torch.arccos(cos)
    sin = torch.sin(omega)
    linear = (cos.abs() > PARALLEL_COS) | (norms == 0)
    safe = torch.where(linear, torch.ones_like(sin), sin)
    wa = torch.where(linear, 1.0 - t, torch.sin((1.0 - t) * omega) / safe)
    wb = torch.where(linear, t, torch.sin(t * omega) / safe)
    out = wa[:, None] * fa + wb[:, None] * fb
    return out.reshape(a.shape).to(a.dtype)


def path_t(frames: int) -> np.ndarray:
    """The ``frames`` positions along a path, 0 and 1 included."""
    check_frames(frames)
    return np.linspace(0.0, 1.0, frames)


def check_frames(frames: int) -> None:
    if not 2 <= int(frames) <= MAX_FRAMES:
        raise ValueError(f"frames={frames}: choose between 2 and {MAX_FRAMES} images along the path.")


def check_seed(seed: int, name: str = "seed") -> None:
    if not 0 <= int(seed) < 2 ** 63:
        raise ValueError(f"{name}={seed}: choose a whole number between 0 and 2**63 - 1.")


def interpolation_noise(gen, seed_a: int, seed_b: int, frames: int = 8):
    """(frames, *gen.latent_shape) noise along the great circle from ``gen.noise(1, seed_a)`` to
    ``gen.noise(1, seed_b)``."""
    import torch

    check_seed(seed_a, "seed_a")
    check_seed(seed_b, "seed_b")
    t = torch.as_tensor(path_t(frames))
    a, b = gen.noise(1, int(seed_a)), gen.noise(1, int(seed_b))
    return slerp(a.expand(frames, *a.shape[1:]), b.expand(frames, *b.shape[1:]), t)


# --- classes --------------------------------------------------------------------------------------

def sample_class(gen, class_name: str | None = None) -> str | None:
    """The class a sample of ``gen`` has: a conditional model's ``class_name`` (None: its first class),
    a per-class model's own class, or None for a model trained on all classes without labels."""
    if gen.conditional:
        name = gen.classes[0] if class_name is None else class_name
        gen.labels_for(1, name)   # a clear ValueError for a class the model does not know
        return name
    if gen.class_name is None:
        if class_name is not None:
            raise ValueError(f"{gen.path}: this model was trained on all classes without labels, so it cannot be "
                             f"asked for class {class_name!r}; leave the class empty.")
        return None
    gen.labels_for(1, class_name)   # a per-class model asked for another class: a clear ValueError
    return gen.class_name


def _decode(gen, noise, label_index: int | None, what: str, *, steps: int | None, guidance: float | None,
            on_progress: Progress | None, batch: int = DECODE_BATCH, labels=None) -> np.ndarray:
    """uint8 (n, R, R) from ``noise``, all with class index ``label_index`` (or per-row ``labels``), in
    batches of ``batch`` with a progress report after each."""
    import torch

    n = len(noise)
    if labels is None and label_index is not None:
        labels = torch.full((n,), int(label_index), dtype=torch.long)
    report = on_progress or (lambda d, t, m: None)
    out = np.empty((n, gen.resolution, gen.resolution), np.uint8)
    report(0, n, what)
    for i in range(0, n, batch):
        y = None if labels is None else labels[i:i + batch]
        out[i:i + batch] = gen.decode(noise[i:i + batch], y, steps=steps, guidance=guidance, batch=batch)
        report(min(n, i + batch), n, what)
    return out


def _how(gen, steps: int | None, guidance: float | None) -> str:
    if gen.family == "gan":
        return "GAN"
    o = gen.options(steps, guidance)
    return f"DDIM {o['steps']} steps, guidance {o['guidance']:g}"


def interpolation(gen, seed_a: int, seed_b: int, frames: int = 8, class_name: str | None = None, *,
                  steps: int | None = None, guidance: float | None = None,
                  on_progress: Progress | None = None) -> np.ndarray:
    """uint8 (frames, R, R): the images along the slerp path from seed A's noise to seed B's, all of
    class ``class_name`` (see :func:`sample_class`). Frame 0 and the last frame are
    ``gen.sample(1, class_name, seed_a / seed_b)``. ``steps``, ``guidance``: a diffusion model's DDIM
    steps and guidance scale (None: the values it was trained to sample with; ignored for a GAN)."""
    name = sample_class(gen, class_name)
    noise = interpolation_noise(gen, seed_a, seed_b, frames)
    label = gen.classes.index(name) if gen.conditional else None
    return _decode(gen, noise, label, f"interpolation ({_how(gen, steps, guidance)})", steps=steps,
                   guidance=guidance, on_progress=on_progress)


def class_sweep(gen, seed: int, n_per_class: int = 1, *, steps: int | None = None, guidance: float | None = None,
                on_progress: Progress | None = None) -> np.ndarray:
    """uint8 (C, n_per_class, R, R): ``gen.noise(n_per_class, seed)`` decoded as each of a conditional
    model's C classes (row c is ``gen.sample(n_per_class, gen.classes[c], seed)``), so the rows differ
    only by the class label."""
    import torch

    if not gen.conditional:
        who = f"trained on {gen.class_name!r} only" if gen.class_name else "trained on all classes without labels"
        raise ValueError(f"{gen.path}: this model is {who}, so it has no class label to change; the same-noise "
                         f"class sweep needs a conditional model (train-gan or train-diffusion with --conditional).")
    check_seed(seed)
    if not 1 <= int(n_per_class) <= MAX_PER_CLASS:
        raise ValueError(f"n_per_class={n_per_class}: choose between 1 and {MAX_PER_CLASS} images per class.")
    n, c = int(n_per_class), len(gen.classes)
    z = gen.noise(n, int(seed))
    noise = z.repeat(c, *([1] * (z.dim() - 1)))            # (C * n, *latent): the same n noises for each class
    labels = torch.arange(c).repeat_interleave(n)           # class of each row
    out = _decode(gen, noise, None, f"same noise across {c} classes ({_how(gen, steps, guidance)})", steps=steps,
                  guidance=guidance, on_progress=on_progress, labels=labels)
    return out.reshape(c, n, gen.resolution, gen.resolution)


# --- nearest real training images -----------------------------------------------------------------

@dataclass
class RealReference:
    """Real TRAINING images (real rows only) and their features: what samples are compared with."""
    images: np.ndarray          # uint8 (N, S, S)
    labels: np.ndarray          # class name of each (N,)
    ids: list[str]              # image ids (N)
    features: np.ndarray        # (N, D) in the extractor's space
    extractor: object           # core.quality.features.Extractor (its description goes with every distance)
    where: str                  # the dataset they came from (for messages)


def real_reference(ds, size: int, *, extractor=None, on_progress: Progress | None = None) -> RealReference:
    """The real training rows of dataset ``ds`` at ``size`` px (``split_arrays(..., real_only=True)``) and
    their features from ``extractor`` (default: the dataset's domain encoder with the Quality page's
    settings, so the memorization audit's cached encoder is reused; trained on first use)."""
    from core.data.arrays import split_arrays

    if extractor is None:
        from core.quality.evaluate import QualityConfig
        from core.quality.features import domain_encoder

        extractor = domain_encoder(ds, QualityConfig.encoder_size, QualityConfig.encoder_epochs, QualityConfig.seed,
                                   on_progress=on_progress)
    real = split_arrays(ds, size, "train", real_only=True, on_progress=on_progress)
    if len(real) < 2:
        raise ValueError(f"{ds.root}: fewer than 2 readable real training images; nearest real images need a "
                         f"dataset with a train split (switch the active dataset or import one).")
    if on_progress:
        on_progress(0, 1, f"features of {len(real)} real training images")
    return RealReference(real.images, real.labels, real.ids, extractor(real.images), extractor, str(ds.root))


@dataclass
class NearestReal:
    """Each sample's k nearest real training images of its class (rank 0 is the nearest)."""
    classes: np.ndarray         # class of each sample (n,); POOLED for a model without labels
    distances: np.ndarray       # (n, k) feature distances (NaN where the class has fewer than k images)
    ratios: np.ndarray          # (n, k) distance / the class's median real-to-real nearest-neighbour distance
    indices: np.ndarray         # (n, k) rows of the reference (-1 where missing)
    ids: list[list[str]]        # (n, k) image ids ("" where missing)
    images: np.ndarray          # uint8 (n, k, S, S) the neighbours (black where missing)
    flagged: np.ndarray         # (n,) bool: the memorization audit flags the sample as a near-copy
    threshold: float            # the audit's distance threshold for this reference
    real_real_median: dict = field(default_factory=dict)   # class -> median real-to-real NN distance
    extractor: str = ""         # what the distances are measured in

    def table(self):
        """One row per (sample, rank): sample, class, rank, image_id, distance, ratio, flagged."""
        import pandas as pd

        n, k = self.distances.shape
        return pd.DataFrame({"sample": np.repeat(np.arange(n), k), "class": np.repeat(self.classes, k),
                             "rank": np.tile(np.arange(1, k + 1), n), "image_id": [i for row in self.ids for i in row],
                             "distance": self.distances.ravel(), "ratio": self.ratios.ravel(),
                             "flagged": np.repeat(self.flagged, k)})


def _reference(ds_or_arrays, size: int, extractor, on_progress) -> RealReference:
    from core.data.arrays import SplitArrays

    if isinstance(ds_or_arrays, RealReference):
        return ds_or_arrays
    if isinstance(ds_or_arrays, SplitArrays):
        if extractor is None:
            raise ValueError("nearest_real: with arrays instead of a dataset, give extractor= (e.g. "
                             "core.quality.features.domain_encoder(ds)); or pass the dataset itself.")
        a = ds_or_arrays
        return RealReference(a.images, a.labels, list(a.ids), extractor(a.images), extractor, "the given arrays")
    if hasattr(ds_or_arrays, "manifest") and hasattr(ds_or_arrays, "content_hash"):
        return real_reference(ds_or_arrays, size, extractor=extractor, on_progress=on_progress)
    raise ValueError(f"nearest_real: expected a Dataset, SplitArrays (real training rows) or RealReference, got "
                     f"{type(ds_or_arrays).__name__}.")


def nearest_real(images: np.ndarray, image_classes, ds_or_arrays, k: int = 3, *, classes: Sequence[str] | None = None,
                 extractor=None, quantile: float | None = None, on_progress: Progress | None = None) -> NearestReal:
    """For each uint8 sample (n, R, R), its ``k`` nearest real TRAINING images of the same class
    (``image_classes``: one class name per sample, or one for all; None: a model without labels, compared
    with every class) in the domain encoder's feature space, and whether the memorization audit flags it.

    ``ds_or_arrays``: a Dataset (its real train rows at R px, :func:`real_reference`), a
    :class:`RealReference` (reused, e.g. cached by a page) or ``SplitArrays`` of real training rows
    (then give ``extractor``). ``classes``: the classes whose real images set the audit's threshold, as
    the Quality page sets it for a set sampled from the generator (default: the samples' classes); give
    the generator's classes so a sample's verdict does not depend on which other samples are checked.
    Distances, ratios and the flag come from :func:`core.quality.memorization.audit` and the same
    Euclidean distance in the same features."""
    import torch

    from core.quality import memorization

    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3 or len(images) == 0:
        raise ValueError(f"nearest_real: expected uint8 samples (n, R, R) with n >= 1, got {images.dtype} "
                         f"{images.shape}.")
    if not 1 <= int(k) <= 32:
        raise ValueError(f"k={k}: choose between 1 and 32 nearest real images.")
    n = len(images)
    if image_classes is None or isinstance(image_classes, str):
        image_classes = [image_classes] * n
    image_classes = list(image_classes)
    if len(image_classes) != n:
        raise ValueError(f"nearest_real: {len(image_classes)} classes for {n} samples; give one per sample.")
    ref = _reference(ds_or_arrays, images.shape[1], extractor, on_progress)

    pooled = [c is None for c in image_classes]
    if any(pooled) and not all(pooled):
        raise ValueError("nearest_real: some samples have a class and some do not (None); check them separately.")
    if all(pooled):   # a model without labels: every real training image is a candidate
        query_labels, ref_labels = np.full(n, POOLED), np.full(len(ref.labels), POOLED)
    else:
        query_labels, ref_labels = np.asarray(image_classes, dtype=str), np.asarray(ref.labels, dtype=str)
    unknown = sorted(set(query_labels) - set(ref_labels))
    if unknown:
        raise ValueError(f"{ref.where}: no real training images of class(es) {unknown}; was the generator trained "
                         f"on another dataset? Make that dataset the active one.")
    wanted = np.unique(query_labels if classes is None or all(pooled) else [*classes, *query_labels])
    mask = np.isin(ref_labels, wanted)
    r_feat, r_lab, r_rows = ref.features[mask], ref_labels[mask], np.flatnonzero(mask)

    if on_progress:
        on_progress(0, 1, f"features of {n} sample(s)")
    f = ref.extractor(images)
    audit, summary = memorization.audit(r_feat, r_lab, f, query_labels,
                                        memorization.DEFAULT_QUANTILE if quantile is None else quantile)
    rr, _ = memorization.nearest_by_class(r_feat, r_lab, r_feat, r_lab, exclude_self=True)
    median = {c: float(np.nanmedian(rr[r_lab == c])) if np.isfinite(rr[r_lab == c]).any() else float("nan")
              for c in np.unique(query_labels)}

    k = int(k)
    size = ref.images.shape[1]
    dist, idx = np.full((n, k), np.nan), np.full((n, k), -1, np.int64)
    for c in np.unique(query_labels):       # the same Euclidean distance as memorization.nearest, top k
        q, r = np.flatnonzero(query_labels == c), np.flatnonzero(r_lab == c)
        d = torch.cdist(torch.as_tensor(f[q], dtype=torch.float64), torch.as_tensor(r_feat[r], dtype=torch.float64))
        top = d.topk(min(k, len(r)), dim=1, largest=False)
        dist[q, :top.values.shape[1]] = top.values.numpy()
        idx[q, :top.indices.shape[1]] = r_rows[r[top.indices.numpy()]]
    found = idx >= 0
    neighbours = np.zeros((n, k, size, size), np.uint8)
    neighbours[found] = ref.images[idx[found]]
    ratios = dist / np.array([median[c] if median[c] > 0 else np.nan for c in query_labels])[:, None]
    return NearestReal(classes=query_labels, distances=dist, ratios=ratios, indices=idx,
                       ids=[[ref.ids[i] if i >= 0 else "" for i in row] for row in idx], images=neighbours,
                       flagged=audit["flagged"].to_numpy(bool), threshold=float(summary["threshold"]),
                       real_real_median=median, extractor=getattr(ref.extractor, "description", ""))


# --- which generators there are -------------------------------------------------------------------

@dataclass
class GeneratorJob:
    label: str       # how a picker names it: the job's label, family and id
    path: Path       # the checkpoint to open (best.pt over checkpoint.pt, see generator_checkpoint)
    family: str      # "gan" or "diffusion" (from the command that trained it)
    job_id: str


def finished_generators() -> list[GeneratorJob]:
    """Finished train-gan and train-diffusion jobs of the workspace that left a checkpoint, newest first."""
    from core import jobs
    from core.generators import CHECKPOINT_FILE, generator_checkpoint

    out = []
    for j in jobs.list_jobs():
        family = GENERATOR_COMMANDS.get(j.command)
        if family is None or j.state != "finished":
            continue
        folder = j.status.get("out")
        if folder and (Path(folder) / CHECKPOINT_FILE).is_file():
            path = generator_checkpoint(folder)
        else:
            path = j.status.get("best_checkpoint") or j.status.get("checkpoint")
        if path and Path(path).is_file():
            out.append(GeneratorJob(f"{j.label} · {family} ({j.id})", Path(path), family, j.id))
    return out
