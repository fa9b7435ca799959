"""What a generator training job (``train-gan``, ``train-diffusion``) reports while it trains.

The commands differ in their trainers; what they tell MLflow, ``status.json`` and the log is the
same, and lives here once:

- :func:`training_images` reads the TRAIN split's real images (and labels) a generator learns from;
- :func:`progress_callbacks` gives ``on_step`` (metrics with step, ETA, a log line every 10 s)
  and ``on_epoch`` (the grid as an artifact, the checkpoint in the status);
- :func:`fidelity_callbacks` builds the fidelity check over the real training split and its
  ``on_fidelity`` (the KID curve in MLflow and the status);
- :func:`measure_best` measures the lowest-KID checkpoint into ``OUT/quality.json`` and the run.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

from core.cli import log


def training_images(ds, resolution: int, class_name: str | None, conditional: bool):
    """(uint8 images (N, R, R), class indices or None, class names) from the TRAIN split's real,
    readable rows (:func:`core.data.arrays.split_arrays`: a generator learns from real images only).

    Per-class: the images of ``class_name``. Conditional: every class with training images."""
    from core.data.arrays import split_arrays
    from core.cli import progress_printer

    train = split_arrays(ds, resolution, "train", classes=[class_name] if class_name is not None else None,
                         on_progress=progress_printer(0.25))
    if len(train) == 0:
        what = f"class {class_name!r}" if class_name else "any class"
        raise ValueError(f"{ds.root}: no readable training images of {what}; check the split and labels "
                         f"(`python -m core dataset --data {ds.root}`).")
    if not conditional:
        return train.images, None, ()
    classes = tuple(c for c in ds.classes if c in set(train.labels))
    return train.images, train.class_indices(classes), classes


JOB_KEYS = ("data", "out", "resume", "class")   # --config keys of a generator job that are not config fields


def validate_job(fields: dict, command: str, config_cls, *, needs_class: bool = False, extra=None):
    """(job keys, config fields, dataset) of a ``train-gan`` / ``train-diffusion`` job once every check
    that needs no pixels has passed: required keys, --class against --conditional, the config's values
    (``config_cls.from_dict``), the device, the data folder, the class, the fidelity check's data.
    ``needs_class``: a model must learn a class (one, or all conditionally); ``extra(fields)`` runs the
    command's own checks before the dataset is read."""
    from core.data.datasets import load_dataset
    from core.device import resolve_device

    fields = dict(fields)
    if "class_name" in fields:
        fields["class"] = fields.pop("class_name")
    job = {k: fields.pop(k, None) for k in JOB_KEYS}
    for key in ("data", "out"):
        if not job[key]:
            raise ValueError(f"{command} needs --{key} (or \"{key}\" in --config).")
    if job["class"] and fields.get("conditional"):
        raise ValueError("give --class NAME (one model per class) or --conditional (one model for all), not both.")
    if needs_class and not job["class"] and not fields.get("conditional"):
        raise ValueError("give --class NAME (one model of that class) or --conditional (one model for every class): "
                         "an unlabelled model's images have no class to add to a training set.")
    config_cls.from_dict({**fields, "conditional": False})   # fail fast on bad values, before loading pixels
    resolve_device(fields.get("device") or "auto")           # e.g. --device cuda on a machine without CUDA
    if extra is not None:
        extra(fields)
    ds = load_dataset(job["data"])
    if job["class"] is not None and job["class"] not in ds.classes:
        raise ValueError(f"--class {job['class']!r}: not a class of {ds.root}; its classes are "
                         f"{', '.join(ds.classes)}.")
    if fields.get("fidelity_every"):
        check_fidelity_data(ds)
    return job, fields, ds


def check_fidelity_data(ds) -> None:
    """The fidelity check's domain encoder is a classifier: it needs real training images of 2+ classes."""
    from core.data.manifest import real_rows

    df = ds.manifest
    real_classes = set(df["label"][(df["split"] == "train").to_numpy() & real_rows(df)])
    if len(real_classes) < 2:
        raise ValueError(f"--fidelity-every: {ds.root} has real training images of {len(real_classes)} class(es); "
                         f"the fidelity check's domain encoder needs 2 or more. Drop --fidelity-every.")


def progress_callbacks(run, status, config, spe: int, total: int):
    """(on_step, on_epoch) for :func:`core.trainloop.train_generator`; ``config`` has ``batch`` and
    ``max_seconds``; ``spe`` is the steps between checkpoints."""
    t_train = time.monotonic()
    next_log = [0.0]

    def on_step(step: int, metrics: dict) -> None:
        run.log_metrics(metrics, step)
        if step % spe == 0:   # the epoch's checkpoint comes next: the store must hold every step before
            run.flush()       # it, so a resume after kill -9 leaves no gap in the curves
        rate = metrics.get("img_per_s") or 0.0
        eta = (total - step) * config.batch / rate if rate > 0 and total < 2**60 else None
        if config.max_seconds:   # a time budget may end the run first
            left = max(0.0, config.max_seconds - (time.monotonic() - t_train))
            eta = left if eta is None else min(eta, left)
        status.update(step=step, epoch=math.ceil(step / spe), img_per_s=round(rate, 2),
                      eta_s=None if eta is None else round(eta, 1),
                      losses={k: round(v, 5) for k, v in metrics.items() if k != "img_per_s"})
        if time.monotonic() >= next_log[0] or step >= total:
            loss_text = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "img_per_s")
            log(f"  step {step:>6}/{total if total < 2**60 else '?'}  {loss_text}  {rate:.1f} img/s"
                + (f"  ETA {eta:.0f} s" if eta is not None else ""))
            next_log[0] = time.monotonic() + 10.0

    def on_epoch(report) -> None:
        run.log_artifact(report.grid_path, "grids")
        run.log_metrics({"epoch": report.epoch}, report.step)
        status.update(force=True, step=report.step, epoch=report.epoch, grid=str(report.grid_path),
                      checkpoint=str(report.checkpoint))

    return on_step, on_epoch


def fidelity_callbacks(run, status, ds, classes, class_name: str | None, conditional: bool, prior_curve: list):
    """(check, on_fidelity, reference) of the fidelity check against ``ds``'s real training images:
    KID on the domain encoder's features, per class (:mod:`core.quality.fidelity`)."""
    from core.quality import fidelity

    status.update(force=True, message="fidelity check: domain encoder and real train features")
    ref = fidelity.dataset_reference(ds, classes, class_name=class_name)
    check = fidelity.fidelity_fn(ref, conditional)
    curve = prior_curve

    def on_fidelity(step: int, result: dict) -> None:
        run.log_metrics({("fidelity_kid" + k[3:]): v for k, v in result.items() if k.startswith("kid")}
                        | {"fidelity_best_kid": result["best_kid"]}, step)
        curve.append([step, round(result["kid"], 6)])
        status.update(force=True, fidelity={"curve": curve, "best_kid": round(result["best_kid"], 6),
                                            "best_step": result["best_step"], "checks": result["checks"]})
        log(f"  fidelity at step {step}: KID {result['kid']:.4g} (best {result['best_kid']:.4g} at step "
            f"{result['best_step']}, {result['seconds']:.1f} s)")

    status.update(message="training")
    return check, on_fidelity, ref


def measure_best(run, ref, result, conditional: bool, out: Path, tag_prefix: str = "medaug.gan") -> dict:
    """KID, FID, precision and recall of the best-KID checkpoint, into OUT/quality.json and the run."""
    from core.quality import fidelity

    quality = fidelity.final_quality(ref, fidelity.checkpoint_sampler(result.best_checkpoint), conditional,
                                     best_step=result.fidelity["best_step"], checks=result.fidelity["checks"])
    fidelity.write_quality(out, quality)
    run.log_metrics(fidelity.mlflow_metrics(quality), result.fidelity["best_step"])
    run.set_tags({f"{tag_prefix}.usable": quality["usable"], f"{tag_prefix}.best_step": quality["best_step"]})
    run.log_artifact(result.best_checkpoint, "checkpoint")
    run.log_artifact(out / fidelity.QUALITY_FILE, "quality")
    log(f"  best checkpoint: step {quality['best_step']} of {quality['checks']} checks; KID "
        f"{quality['kid']:.4g}, precision {quality['precision']:.2f}, recall {quality['recall']:.2f}: "
        f"{'usable' if quality['usable'] else 'NOT usable'} ({quality['reason']})")
    return quality
