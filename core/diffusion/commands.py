"""CLI: ``python -m core train-diffusion``.

Loads the TRAIN split's real images of a dataset folder, trains a DDPM through
:func:`core.diffusion.train.train_diffusion` (the one generator loop of :mod:`core.trainloop`) and
logs to MLflow as train-gan does (params once, the loss with step, every grid and the checkpoints as
artifacts, the dataset hash as a tag). ``OUT/status.json`` has the train-gan shape (kind
``train-diffusion``; ``losses`` holds ``loss``), so the pages and the job runner read both alike.
With ``--fidelity-every N`` the KID check picks ``OUT/best.pt`` and its quality goes to
``OUT/quality.json``; a check samples 64 images per class with DDIM, so on a CPU keep N large.
``generate --checkpoint OUT`` samples the model (``--steps``, ``--guidance``).
"""
from __future__ import annotations

from pathlib import Path

from core.cli import job_fields, log

def validate(fields: dict):
    """(job keys, DiffusionConfig fields, dataset) once every check that needs no pixels has passed
    (:func:`core.generator_job.validate_job`; a diffusion model learns one class or all, and 256 px needs
    a GPU). The command runs it first; :func:`core.jobs.submit` runs it before a job is queued."""
    from core.device import resolve_device
    from core.diffusion.train import DiffusionConfig
    from core.generator_job import validate_job

    def gpu_for_256(fields: dict) -> None:
        if fields.get("resolution") == 256 and resolve_device(fields.get("device") or "auto").type == "cpu":
            raise ValueError("resolution=256: a diffusion model at 256 px needs a GPU (--device cuda); on a CPU "
                             "use 64 or 128 px.")

    return validate_job(fields, "train-diffusion", DiffusionConfig, needs_class=True, extra=gpu_for_256)


def cmd_train_diffusion(args) -> dict:
    from core import tracking
    from core.diffusion.train import (CHECKPOINT_FILE, DiffusionConfig, check_resume, load_checkpoint, plan_steps,
                                      train_diffusion, training_fingerprint)
    from core.device import precision_line, resolve_device
    from core.generator_job import fidelity_callbacks, measure_best, progress_callbacks, training_images
    from core.tracked import tracked_job

    job, fields, ds = validate(job_fields(args, "train-diffusion", required=(), rename={"class_name": "class"}))
    out = Path(job["out"]).expanduser().resolve()
    conditional = bool(fields.get("conditional"))
    images, labels, classes = training_images(ds, fields.get("resolution", DiffusionConfig.resolution), job["class"],
                                              conditional)
    config = DiffusionConfig.from_dict({**fields, "classes": classes, "class_name": job["class"]})
    spe, total = plan_steps(config)
    resume_from, prior_curve = None, []
    if job["resume"] and (out / CHECKPOINT_FILE).is_file():
        state = load_checkpoint(out / CHECKPOINT_FILE)
        prior_curve = [list(p) for p in (state.get("fidelity") or {}).get("curve", [])]
        check_resume(state, config, *training_fingerprint(images, labels, config), str(out / CHECKPOINT_FILE))
        resume_from = (state.get("meta") or {}).get("run_id")
        del state
    tracking.check_store()

    what = job["class"] or "conditional: " + ", ".join(classes)
    shown_total = total if total < 2**60 else None
    with tracked_job("train-diffusion", out, lambda s: f"at step {s['step']}; continue with --resume --out {out}",
                     message="loading", step=0, total_steps=shown_total, epoch=0,
                     epochs=None if shown_total is None else -(-total // spe), steps_per_epoch=spe, eta_s=None,
                     img_per_s=None, losses={}, checkpoint=None, grid=None, config=config.to_dict()) as tj:
        status = tj.status
        ran = precision_line(resolve_device(config.device), config.precision)
        log(f"train-diffusion {config.resolution} px on {ds.id} ({what}): {len(images)} training images, batch "
            f"{config.batch}, UNet width {config.width}, {ran}, grid + checkpoint every {spe} steps, "
            + (f"{total} steps" if shown_total else "") + (f", at most {config.max_seconds:g} s" if config.max_seconds
                                                           else "") + f" -> {out}")
        params = {**config.to_dict(), "data": str(ds.root), "n_images": len(images), "grid_every_steps": spe,
                  "total_steps": shown_total, "out": str(out)}
        tags = {"medaug.generator.family": "diffusion", "medaug.gan.variant": config.variant,
                "medaug.gan.class": job["class"] or "", "medaug.gan.conditional": conditional, "medaug.out": str(out),
                "medaug.precision": ran}
        who = job["class"] or "conditional"
        with tj.run(resume_from, "train-diffusion", params, dataset=ds, tags=tags,
                    run_name=f"ddpm {who} {config.resolution}px") as run:
            on_step, on_epoch = progress_callbacks(run, status, config, spe, total)
            meta = {"run_id": run.run_id, "dataset_id": ds.id, "dataset_hash": ds.content_hash,
                    "data": str(ds.root), "class": job["class"]}
            check, on_fidelity, ref = None, None, None
            if config.fidelity_every:
                check, on_fidelity, ref = fidelity_callbacks(run, status, ds, classes, job["class"], conditional,
                                                             prior_curve)
            status.update(force=True, message="training")
            result = train_diffusion(images, labels, config, out, on_step=on_step, on_epoch=on_epoch,
                                     resume=bool(job["resume"]), meta=meta, fidelity_fn=check, on_fidelity=on_fidelity)
            run.set_tags({"medaug.gan.state": result.state})
            if result.state == "diverged":
                status.end("diverged", result.message, step=result.step)
                raise DiffusionDiverged(result.message)   # the run ends FAILED, the CLI exits 2
            if result.checkpoint is not None:
                run.log_artifact(result.checkpoint, "checkpoint")
            quality = None
            if result.best_checkpoint is not None and ref is not None:
                status.update(force=True, message="measuring the best checkpoint",
                              best_checkpoint=str(result.best_checkpoint))
                quality = measure_best(run, ref, result, conditional, out)
                status.update(quality={k: v for k, v in quality.items() if k != "warnings"})
        status.end("finished", result.message, step=result.step, epoch=result.epoch, eta_s=0.0,
                   img_per_s=result.img_per_s, checkpoint=str(result.checkpoint) if result.checkpoint else None)
    log(f"{result.message} {result.img_per_s} img/s; checkpoint {result.checkpoint}")
    return {"run_id": run.run_id, "checkpoint": str(result.checkpoint) if result.checkpoint else None,
            "best_checkpoint": str(result.best_checkpoint) if result.best_checkpoint else None,
            "quality": ({k: quality[k] for k in ("kid", "precision", "recall", "usable", "best_step")}
                        if quality else None),
            "steps": result.step, "epochs": result.epoch, "img_per_s": result.img_per_s, "seconds": result.seconds,
            "state": result.state, "out": str(out), "status": str(status.path), "metrics": result.metrics}


class DiffusionDiverged(ValueError):
    """Training diverged (NaN or runaway loss); raised by the CLI after it records the status."""


def register(sub) -> None:
    s = sub.add_parser("train-diffusion", help="train a class-conditional diffusion model (DDPM, DDIM sampling)",
                       description="Train a DDPM (MONAI UNet, v-prediction, cosine schedule, EMA weights) on the TRAIN "
                                   "split of a dataset folder. Every flag can also be given in --config JSON (flags "
                                   "win). Writes OUT/checkpoint.pt, OUT/grids/ and OUT/status.json; logs to MLflow.")
    s.add_argument("--data", help="dataset folder")
    s.add_argument("--out", help="job folder for checkpoint, grids and status.json")
    s.add_argument("--config", help="JSON file with any of these options (flags given here win)")
    s.add_argument("--resolution", type=int, default=None, help="image side: 64 (default) or 128; 256 on a GPU")
    s.add_argument("--batch", type=int, default=None, help="images per step (default 32)")
    which = s.add_mutually_exclusive_group()
    which.add_argument("--class", dest="class_name", default=None, help="train one model on this class only")
    which.add_argument("--conditional", action="store_true", default=None,
                       help="one class-conditional model over all classes (classifier-free guidance)")
    s.add_argument("--max-steps", dest="max_steps", type=int, default=None, help="stop after this many steps (default 2000)")
    s.add_argument("--max-seconds", dest="max_seconds", type=float, default=None,
                   help="stop after this much training time (a time budget; the last step is saved)")
    s.add_argument("--grid-every", dest="grid_every", type=int, default=None,
                   help="checkpoint and fixed-noise sample grid every N steps (default 200)")
    s.add_argument("--width", type=int, default=None, help="UNet base channels, a multiple of 8 (default 32; 16 on 2 CPU cores)")
    s.add_argument("--no-attention", dest="attention", action="store_false", default=None,
                   help="leave out the self-attention block at 16 px")
    s.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default 1e-3)")
    s.add_argument("--ema-decay", dest="ema_decay", type=float, default=None, help="EMA decay of the weights (default 0.999)")
    s.add_argument("--cond-drop", dest="cond_drop", type=float, default=None,
                   help="share of labels dropped in training for classifier-free guidance (default 0.15)")
    s.add_argument("--prediction", choices=("v_prediction", "epsilon"), default=None, help="default v_prediction")
    s.add_argument("--schedule", choices=("cosine", "linear_beta", "scaled_linear_beta"), default=None,
                   help="noise schedule (default cosine)")
    s.add_argument("--sample-steps", dest="sample_steps", type=int, default=None,
                   help="DDIM steps of the grids, the fidelity check and generate's default (default 25)")
    s.add_argument("--guidance", type=float, default=None, help="guidance scale of the grids and generate (default 2)")
    s.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    s.add_argument("--threads", type=int, default=None, help="CPU threads (default: one per core)")
    s.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=None,
                   help="auto: bf16 autocast on GPUs and CPUs with native bf16, else fp32")
    s.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    s.add_argument("--log-every", dest="log_every", type=int, default=None, help="read the loss every N steps (default 10)")
    s.add_argument("--fidelity-every", dest="fidelity_every", type=int, default=None,
                   help="check KID against the real train split every N steps; keep the best as OUT/best.pt")
    s.add_argument("--fidelity-patience", dest="fidelity_patience", type=int, default=None,
                   help="stop when KID has not improved for K checks (needs --fidelity-every)")
    s.add_argument("--resume", action="store_true", default=None, help="continue from OUT/checkpoint.pt if present")
    s.set_defaults(func=cmd_train_diffusion)
