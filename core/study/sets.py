"""Each cell's training set, made from the TRAINING split only.

- :func:`load_splits` reads the real images of a dataset folder (:func:`core.data.arrays.splits_arrays`:
  rows whose source is not ``classic:``, ``gan:`` or ``diffusion:``) at the study's size from the pixel
  cache, split by the manifest.
- :func:`classic_copies` runs a registry operation (or the study's pipeline) over the training
  images through :mod:`core.augment` (image ``k`` of copy ``c`` uses the generator
  ``[seed, c, k]``); a crop, whose output is the box's size, is letterboxed back to the
  study's size as the pixel cache letterboxes every image.
- :func:`gan_checkpoint` trains one class-conditional GAN per variant on the training images
  and labels (once per study: cached under ``<out>/gans/`` by a fingerprint of the training
  pixels and the GAN settings, with a file lock so parallel cells train it once), or takes a
  given checkpoint. :func:`gan_images` asks the balancing planner how many images each class
  needs and generates them with :func:`core.balance.generate_plan` (cached beside the GAN).
- :func:`training_set` puts a cell's training array together.

Validation and test images are never passed to any of these functions.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.files import file_lock
from core.study.grid import AUG_SETS, DIFFUSION, AugSet, StudyConfig

Log = Callable[[str], None]


@dataclass(eq=False)
class Splits:
    """The real images of one dataset at one size, by split; labels index ``class_names``."""

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    class_names: list[str]
    ids: dict[str, list[str]] = field(default_factory=dict)   # split -> image ids, in array order

    @property
    def test_hash(self) -> str:
        """SHA-256 (16 hex) of the test pixels, labels and class names: equal across all cells."""
        return array_hash(self.test_x, self.test_y, self.class_names)

    @property
    def train_hash(self) -> str:
        return array_hash(self.train_x, self.train_y, self.class_names)

    def train_counts(self) -> dict[str, int]:
        counts = np.bincount(self.train_y, minlength=len(self.class_names))
        return {c: int(n) for c, n in zip(self.class_names, counts)}


def array_hash(x: np.ndarray, y: np.ndarray, class_names) -> str:
    h = hashlib.sha256(np.ascontiguousarray(x).tobytes())
    h.update(np.asarray(y, dtype=np.int64).tobytes())
    h.update(json.dumps(list(class_names)).encode())
    return h.hexdigest()[:16]


def load_splits(ds, image_size: int, on_progress=None) -> Splits:
    """Real train/val/test images of ``ds`` at ``image_size`` (letterboxed, uint8)."""
    from core.data.arrays import splits_arrays

    arrays = splits_arrays(ds, image_size, on_progress=on_progress)
    for name, a in arrays.items():
        if len(a) == 0:
            raise ValueError(f"{ds.root}: the {name} split has no readable real images; the study needs train, "
                             f"val and test images (check `python -m core dataset --data {ds.root}`).")
    present = set().union(*(set(a.labels) for a in arrays.values()))
    class_names = [c for c in ds.classes if c in present]
    if len(class_names) < 2:
        raise ValueError(f"{ds.root}: only {len(class_names)} class with images; a classifier needs at least 2.")
    out = [x for name in ("train", "val", "test")
           for x in (arrays[name].images, arrays[name].class_indices(class_names))]
    return Splits(*out, class_names, {name: a.ids for name, a in arrays.items()})


# --- classic sets -----------------------------------------------------------------------------

def classic_pipeline(aug: AugSet):
    """The pipeline of a classic set: one registry operation, or the study's one-of-seven."""
    from core.augment.pipeline import Pipeline, Step, study_pipeline

    if aug.kind in ("classic", "classic+gan") and aug.op is None:
        return study_pipeline()
    if aug.op is None:
        raise ValueError(f"set {aug.key!r} has no classic operation.")
    return Pipeline((Step(aug.op, dict(aug.params), 1.0),), "chain", aug.label)


def fit_size(image: np.ndarray, size: int) -> np.ndarray:
    """A uint8 image of another shape (a crop) letterboxed to ``size`` x ``size``."""
    if image.shape == (size, size):
        return image
    from core.data.cache import letterbox

    return np.clip(np.rint(letterbox(image.astype(np.float32), size)), 0, 255).astype(np.uint8)


def classic_copies(images: np.ndarray, aug: AugSet, seed: int, copies: int = 1) -> np.ndarray:
    """``copies`` augmented versions of each TRAINING image (uint8, same size), copy by copy."""
    pipeline = classic_pipeline(aug)
    size = images.shape[1]
    out = np.empty((len(images) * copies, size, size), dtype=np.uint8)
    for c in range(copies):
        for k, image in enumerate(images):
            result = pipeline.apply(image, np.random.default_rng([seed, c, k]))
            out[c * len(images) + k] = fit_size(result.image, size)
    return out


# --- GAN sets ---------------------------------------------------------------------------------

def gan_config(config: StudyConfig, variant: str, splits: Splits, n_train: int):
    """The training config of this study's ``variant`` generator: a GanConfig, or a DiffusionConfig for
    ``diffusion`` (no fidelity check while it trains: a check samples 64 images a class with DDIM)."""
    present = [c for c, n in splits.train_counts().items() if n > 0]
    if variant == DIFFUSION:
        from core.diffusion.train import DiffusionConfig

        return DiffusionConfig(resolution=config.gan_resolution, batch=max(1, min(config.diffusion_batch, n_train)),
                               max_steps=config.diffusion_steps, max_seconds=config.diffusion_max_seconds,
                               grid_every=min(config.diffusion_steps, 200), width=config.diffusion_width,
                               conditional=True, classes=tuple(present), sample_steps=config.diffusion_sample_steps,
                               guidance=config.diffusion_guidance, seed=0, device=config.device,
                               threads=config.gan_threads, log_every=min(10, config.diffusion_steps),
                               precision=config.precision)
    from core.gan.train import GanConfig

    steps = config.gan_steps.get(variant, 200)
    every = min(config.gan_fidelity_every, steps) if config.gan_fidelity_every else None
    return GanConfig(variant=variant, resolution=config.gan_resolution, batch=max(2, min(config.gan_batch, n_train)),
                     epochs=None, max_steps=steps, max_seconds=config.gan_max_seconds, steps_per_epoch=min(steps, 100),
                     width=config.gan_width, conditional=True, classes=tuple(present), seed=0, device=config.device,
                     threads=config.gan_threads, log_every=min(10, steps), fidelity_every=every,
                     fidelity_patience=config.gan_fidelity_patience if every else None)


def gan_dir(root: Path, config: StudyConfig, variant: str, splits: Splits) -> Path:
    """``<root>/<variant>-<fingerprint>``: the fingerprint covers the training data and GAN settings."""
    cfg = gan_config(config, variant, splits, len(splits.train_y)).to_dict()
    for k in ("device", "threads", "log_every"):
        cfg.pop(k)
    plan = {"target": config.gan_target, "cap": config.gan_cap, "image_size": splits.train_x.shape[1]}
    h = hashlib.sha256((splits.train_hash + json.dumps([cfg, plan], sort_keys=True)).encode()).hexdigest()[:12]
    return root / f"{variant}-{h}"


def gan_checkpoint(variant: str, splits: Splits, config: StudyConfig, root: Path, *, parent_run_id: str | None = None,
                   log: Log = print, on_step=None) -> Path:
    """The checkpoint of this study's ``variant`` generator (a GAN, or the diffusion model for
    ``diffusion``): a given one, the cached one, or trained now on the TRAINING images and labels
    (conditional; MLflow child run of the study when given).

    With ``config.gan_fidelity_every`` the GAN checks its KID against the real training images every
    N steps, stops on a plateau or at ``gan_max_seconds``, and the study samples its lowest-KID
    checkpoint (best.pt); that checkpoint's quality goes to ``quality.json`` beside it
    (:func:`gan_quality` reads it) and to the GAN's run (``gen_*`` metrics, tag ``medaug.gan.usable``).
    The diffusion model trains without a check (each samples 64 images a class with DDIM) and its last
    checkpoint is measured the same way, on ``diffusion_quality_real`` real images and as many samples."""
    given = config.gan_checkpoints.get(variant)
    if given:
        path = resolve_checkpoint(given)
        log(f"  {variant}: using the given generator checkpoint {path}")
        return path
    folder = gan_dir(root, config, variant, splits)
    done = folder / "done.json"
    with file_lock(folder.with_name(folder.name + ".lock")):
        if done.is_file():
            return Path(json.loads(done.read_text())["checkpoint"])
        diffusion = variant == DIFFUSION
        if diffusion:
            from core.diffusion.train import train_diffusion as train_generator
        else:
            from core.gan.train import train_gan as train_generator

        gcfg = gan_config(config, variant, splits, len(splits.train_y))
        index = {c: i for i, c in enumerate(gcfg.classes)}
        labels = np.array([index[splits.class_names[y]] for y in splits.train_y], dtype=np.int64)
        noun = "diffusion model" if diffusion else "GAN"
        log(f"  training the {noun if diffusion else f'{variant} {noun}'} (conditional, {len(gcfg.classes)} classes) on {len(labels)} training "
            f"images: {gcfg.max_steps} steps" + (f" or {gcfg.max_seconds:g} s" if gcfg.max_seconds else "")
            + f" at {gcfg.resolution} px, width {gcfg.width} -> {folder}")
        meta = {"study_train_hash": splits.train_hash, "variant": variant}
        ref = check = None
        if gcfg.fidelity_every or diffusion:
            from core.quality import fidelity

            encoder = fidelity.array_encoder(splits.train_x, splits.train_y, splits.class_names, splits.train_hash)
            ref = fidelity.real_reference(encoder, splits.train_x, [splits.class_names[y] for y in splits.train_y],
                                          gcfg.classes)
            check = fidelity.fidelity_fn(ref, True) if gcfg.fidelity_every else None

        def train(step_cb=None, run=None):
            def on_fidelity(step, r):
                if run is not None:
                    run.log_metrics({("fidelity_kid" + k[3:]): v for k, v in r.items() if k.startswith("kid")}, step)
            result = train_generator(splits.train_x, labels, gcfg, folder, on_step=step_cb, meta=meta, resume=True,
                                     fidelity_fn=check, on_fidelity=on_fidelity)
            measured = result.best_checkpoint or (result.checkpoint if diffusion else None)
            if result.state == "finished" and measured is not None and ref is not None:
                from core.quality import fidelity

                q = fidelity.final_quality(ref, fidelity.checkpoint_sampler(measured, config.device), True,
                                           best_step=result.fidelity["best_step"] or result.step,
                                           checks=result.fidelity["checks"],
                                           **({"max_real": config.diffusion_quality_real} if diffusion else {}))
                fidelity.write_quality(folder, q)
                which = (f"best checkpoint at step {q['best_step']} ({q['checks']} checks)" if result.best_checkpoint
                         else f"last checkpoint (step {q['best_step']})")
                log(f"  {variant}: {which}: KID {q['kid']:.4g}, "
                    f"precision {q['precision']:.2f}, recall {q['recall']:.2f}: "
                    + ("usable" if q["usable"] else f"NOT USABLE ({q['reason']})"))
                if run is not None:
                    run.log_metrics(fidelity.mlflow_metrics(q), q["best_step"])
                    run.set_tags({"medaug.gan.usable": q["usable"]})
            return result

        if parent_run_id:
            from core.tracking import start_run

            with start_run("train-diffusion" if diffusion else "train-gan", {**gcfg.to_dict(), "n_images": len(labels)},
                           parent_run_id=parent_run_id, run_name=f"study {noun} {variant}",
                           tags={"medaug.gan.variant": variant, "medaug.gan.conditional": True,
                                 "medaug.generator.family": "diffusion" if diffusion else "gan",
                                 "medaug.study.train_hash": splits.train_hash}) as run:
                meta["run_id"] = run.run_id

                def step_cb(step, metrics):
                    run.log_metrics(metrics, step)
                    if on_step:
                        on_step(step, gcfg.max_steps)
                result = train(step_cb, run)
        else:
            result = train((lambda s, m: on_step(s, gcfg.max_steps)) if on_step else None)
        if result.state != "finished" or result.checkpoint is None:
            raise ValueError(f"the {variant} {noun} of the study did not finish: {result.message}")
        log(f"  {variant}: {result.message} ({result.seconds:.0f} s, {result.img_per_s:.0f} img/s)")
        from core.files import write_json_atomic

        chosen = result.best_checkpoint or result.checkpoint   # the lowest-KID checkpoint when checked
        write_json_atomic(done, {"checkpoint": str(chosen), "last_checkpoint": str(result.checkpoint),
                                 "message": result.message, "seconds": result.seconds, "run_id": meta.get("run_id"),
                                 "fidelity": result.fidelity})
        return Path(chosen)


def gan_quality(variant: str, splits: Splits, config: StudyConfig, root: Path) -> dict | None:
    """The measured quality of this study's ``variant`` GAN (its ``quality.json``: kid, fid, precision,
    recall with ``*_lo`` / ``*_hi``, usable, reason, best_step, ...), or None when it has none (a given
    checkpoint, no fidelity check, or not trained yet)."""
    from core.quality.fidelity import read_quality

    if config.gan_checkpoints.get(variant):
        given = resolve_checkpoint(config.gan_checkpoints[variant])
        return read_quality(given.parent)
    return read_quality(gan_dir(root, config, variant, splits))


def resolve_checkpoint(given: str) -> Path:
    """A checkpoint path, or an MLflow run id of a train-gan run (its ``checkpoint/checkpoint.pt``)."""
    path = Path(given).expanduser()
    if path.is_file():
        return path
    if len(given) == 32 and all(ch in "0123456789abcdef" for ch in given):
        from core.tracking import download_artifact

        try:
            from core.tracking import list_artifacts

            names = {Path(a).name for a in list_artifacts(given, "checkpoint")}
            # the run's lowest-KID checkpoint when it was trained with a fidelity check
            return download_artifact(given, "checkpoint/best.pt" if "best.pt" in names else "checkpoint/checkpoint.pt")
        except Exception as e:
            raise ValueError(f"gan_checkpoints: run {given} has no checkpoint/checkpoint.pt artifact ({e}).") from e
    raise ValueError(f"gan_checkpoints: {given!r} is neither a checkpoint file nor an MLflow run id of train-gan.")


def gan_images(variant: str, checkpoint: Path, splits: Splits, config: StudyConfig, root: Path,
               log: Log = print, mode: str = "plan") -> tuple[np.ndarray, np.ndarray]:
    """Synthetic images for ``variant`` at the study's size, and their labels: ``mode="plan"`` the
    balancing planner's top-up; ``mode="tstr"`` as many images per class as the real training split
    holds (the TSTR set's whole training array)."""
    from core.balance import class_balance_plan, generate_plan
    from core.data.arrays import split_arrays
    from core.data.datasets import load_dataset

    size = splits.train_x.shape[1]
    if mode == "tstr":
        plan = class_balance_plan(splits.train_counts(), "max", None, None)
        plan["synthetic"] = plan["real"]
        plan["after"] = plan["real"] * 2
        plan.attrs["target"] = "the real training split's counts"
    elif mode == "plan":
        plan = class_balance_plan(splits.train_counts(), config.gan_target, None, config.gan_cap)
    else:
        raise ValueError(f"gan_images: mode={mode!r}; use 'plan' or 'tstr'.")
    if int(plan["synthetic"].sum()) == 0:
        log(f"  {variant}: the planner adds no images (every class is at the target).")
        return np.empty((0, size, size), np.uint8), np.empty(0, np.int64)
    key = hashlib.sha256(f"{checkpoint.resolve()}:{checkpoint.stat().st_mtime_ns}:{plan.to_json()}".encode())
    folder = gan_dir(root, config, variant, splits) / f"synthetic-{key.hexdigest()[:10]}"
    with file_lock(folder.with_name(folder.name + ".lock")):
        if not (folder / "dataset.json").is_file():
            staging = folder.with_name(f".{folder.name}.building-{os.getpid()}")
            shutil.rmtree(staging, ignore_errors=True)
            checkpoints = {"*": str(checkpoint)}
            try:
                generate_plan(plan, checkpoints, staging, seed=0, device=config.device)   # where the study trains
                staging.rename(folder)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            log(f"  {variant}: generated {int(plan['synthetic'].sum())} synthetic training images "
                f"(target {plan.attrs['target']}" + (f", cap {config.gan_cap:g} per real image" if mode == "plan" else "")
                + f") -> {folder}")
        syn = load_dataset(folder)
    if not set(syn.manifest["split"]) <= {"train"}:
        raise ValueError(f"{folder}: synthetic images outside the train split; delete the folder and run again.")
    images = split_arrays(syn, size, None, real_only=False)
    return images.images, images.class_indices(splits.class_names)


# --- one cell's training set ------------------------------------------------------------------

def training_set(set_key: str, splits: Splits, config: StudyConfig, seed: int,
                 gan_source: Callable[..., tuple[np.ndarray, np.ndarray]] | None = None):
    """(uint8 images, labels, what was added per class) for augmentation set ``set_key``.

    The real training images come first; augmented or synthetic ones follow. ``gan_source(variant,
    mode)`` returns a variant's synthetic images and labels (see :func:`gan_images`). A TSTR set
    (``tstr-<variant>``) holds ONLY synthetic images, as many per class as the real split."""
    aug = AUG_SETS[set_key]
    if aug.kind == "tstr":
        if gan_source is None:
            raise ValueError(f"set {set_key!r} needs GAN images, but no GAN source was given.")
        gx, gy = gan_source(aug.variant, "tstr")
        if len(gy) == 0:
            raise ValueError(f"set {set_key!r}: the {aug.variant} GAN gave no images to train on.")
        added = np.bincount(gy, minlength=len(splits.class_names))
        return gx, gy, {c: int(n) for c, n in zip(splits.class_names, added)}
    parts_x, parts_y = [splits.train_x], [splits.train_y]
    if aug.kind in ("classic", "classic+gan"):
        parts_x.append(classic_copies(splits.train_x, aug, seed, config.copies))
        parts_y.append(np.tile(splits.train_y, config.copies))
    variant = aug.variant or (config.combo_variant if aug.kind == "classic+gan" else None)
    if variant:
        if gan_source is None:
            raise ValueError(f"set {set_key!r} needs GAN images, but no GAN source was given.")
        gx, gy = gan_source(variant)
        parts_x.append(gx)
        parts_y.append(gy)
    x = np.concatenate(parts_x)
    y = np.concatenate(parts_y)
    added = np.bincount(y[len(splits.train_y):], minlength=len(splits.class_names))
    return x, y, {c: int(n) for c, n in zip(splits.class_names, added)}
