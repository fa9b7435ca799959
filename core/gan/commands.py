"""CLI: ``python -m core train-gan`` and ``python -m core generate``.

train-gan loads the TRAIN split of a dataset folder from the pixel cache, trains through
:func:`core.gan.train.train_gan`, logs to MLflow through :mod:`core.tracking` (params once,
metrics with step, per-epoch grids and the final checkpoint as artifacts, the dataset hash
as a tag) and keeps ``<out>/status.json`` current for pages and job runners:

    {"kind": "train-gan", "state": "starting|running|finished|diverged|failed|cancelled",
     "message": str, "pid": int, "step": int, "total_steps": int, "epoch": int, "epochs": int,
     "steps_per_epoch": int, "eta_s": float|null, "img_per_s": float|null,
     "losses": {"loss_d": .., "loss_g": .., "d_real": .., "d_fake": .., ...}, "run_id": str|null,
     "checkpoint": str|null, "grid": str|null (latest epoch grid PNG), "out": str,
     "config": {GanConfig fields}, "started": iso, "updated": iso,
     "fidelity": {"curve": [[step, kid], ...], "best_kid", "best_step", "checks"} | null,
     "best_checkpoint": str|null, "quality": {quality.json} | null}

With ``--fidelity-every N`` (and ``--fidelity-patience K``) the run checks its fidelity every N
steps (KID on the domain encoder's features against the REAL train split, per class:
:mod:`core.quality.fidelity`), keeps the lowest-KID checkpoint as ``<out>/best.pt``, logs the
curve as the MLflow metric ``fidelity_kid`` (and ``fidelity_kid/<class>``), stops after K checks
without improvement, and at the end measures best.pt (KID, FID, precision, recall with 95%
intervals) into ``<out>/quality.json``, the run's ``gen_*`` metrics and the tag
``medaug.gan.usable``.

The status file, the folder lock, cancel on SIGTERM and a terminal state even on a full disk
come from :func:`core.tracked.tracked_job`, as for every long command; :func:`validate` checks
everything that needs no pixels before the first side effect (and :func:`core.jobs.submit` runs
it before queueing). ``--resume`` continues the MLflow run named in the checkpoint
(:func:`core.tracking.continue_run`). ``--config JSON`` holds the same fields as the flags
(flags given on the command line win), so a job runner can launch
``python -m core train-gan --config job.json``.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from core.cli import job_fields, log, progress_printer

def validate(fields: dict):
    """(job keys, GanConfig fields, dataset) of a train-gan job, once every check that needs no pixels
    has passed (:func:`core.generator_job.validate_job`). The command runs it first; :func:`core.jobs.submit`
    runs it before a job is queued."""
    from core.gan.train import GanConfig
    from core.generator_job import validate_job

    return validate_job(fields, "train-gan", GanConfig)


def cmd_train_gan(args) -> dict:
    from core import distributed
    from core.gan.train import (CHECKPOINT_FILE, GanConfig, GanDiverged, check_resume, load_checkpoint, plan_steps,
                                train_gan, training_fingerprint)
    from core.device import precision_line, resolve_device
    from core.generator_job import fidelity_callbacks, measure_best, progress_callbacks, training_images
    from core.tracked import tracked_job

    # 1. validate everything (values, device, data, class, checkpoint, store) before any side effect
    job, fields, ds = validate(job_fields(args, "train-gan", required=(), rename={"class_name": "class"}))
    out = Path(job["out"]).expanduser().resolve()
    conditional = bool(fields.get("conditional"))
    ctx = distributed.init(fields.get("device") or "auto")  # under torchrun: join the other ranks
    with distributed.rank0_first(ctx):                      # rank 0 builds the pixel cache
        images, labels, classes = training_images(ds, fields.get("resolution", GanConfig.resolution), job["class"],
                                                  conditional)
    config = GanConfig.from_dict({**fields, "classes": classes, "class_name": job["class"]})
    if not ctx.is_main:                 # the other ranks train silently: rank 0 logs, checkpoints, reports
        result = train_gan(images, labels, config, out, resume=bool(job["resume"]))
        distributed.shutdown()
        return {"rank": ctx.rank, "state": result.state, "steps": result.step, "seconds": result.seconds}
    spe, total = plan_steps(len(images), config)
    resume_from, prior_curve = None, []
    if job["resume"] and (out / CHECKPOINT_FILE).is_file():
        state = load_checkpoint(out / CHECKPOINT_FILE)
        prior_curve = [list(p) for p in (state.get("fidelity") or {}).get("curve", [])]   # the checks before the cut
        check_resume(state, config, *training_fingerprint(images, labels, config), str(out / CHECKPOINT_FILE))
        resume_from = (state.get("meta") or {}).get("run_id")
        del state
    from core import tracking

    tracking.check_store()

    # 2. the job: folder, lock, status file, SIGTERM, MLflow run (core.tracked)
    what = job["class"] or ("conditional: " + ", ".join(classes) if conditional else "all classes")
    with tracked_job("train-gan", out, lambda s: f"at step {s['step']}; continue with --resume --out {out}",
                     message="loading", step=0, total_steps=total, epoch=0, epochs=math.ceil(total / spe),
                     steps_per_epoch=spe, eta_s=None, img_per_s=None, losses={}, checkpoint=None, grid=None,
                     config=config.to_dict()) as tj:
        status = tj.status
        ran = precision_line(resolve_device(config.device), config.precision)
        log(f"train-gan {config.variant} {config.resolution} px on {ds.id} ({what}): {len(images)} training images, "
            f"batch {config.batch}, {spe} steps/epoch, {total} steps, {ran} -> {out}"
            + (f"; {ctx.world_size} processes ({ctx.backend}), {config.batch // ctx.world_size} images each per step"
               if ctx.active else ""))
        params = {**config.to_dict(), "data": str(ds.root), "n_images": len(images), "steps_per_epoch": spe,
                  "total_steps": total, "out": str(out), "world_size": ctx.world_size}
        tags = {"medaug.gan.variant": config.variant, "medaug.gan.class": job["class"] or "",
                "medaug.gan.conditional": conditional, "medaug.out": str(out), "medaug.precision": ran}
        who = job["class"] or ("conditional" if conditional else "all")
        with tj.run(resume_from, "train-gan", params, dataset=ds, tags=tags,
                    run_name=f"{config.variant} {who} {config.resolution}px") as run:
            on_step, on_epoch = progress_callbacks(run, status, config, spe, total)

            meta = {"run_id": run.run_id, "dataset_id": ds.id, "dataset_hash": ds.content_hash,
                    "data": str(ds.root), "class": job["class"]}
            check, on_fidelity, ref = None, None, None
            if config.fidelity_every:
                check, on_fidelity, ref = fidelity_callbacks(run, status, ds, classes, job["class"], conditional,
                                                             prior_curve)
            result = train_gan(images, labels, config, out, on_step=on_step, on_epoch=on_epoch,
                               resume=bool(job["resume"]), meta=meta, fidelity_fn=check, on_fidelity=on_fidelity)
            for note in result.notes:
                log(f"  note: {note}")
            run.set_tags({"medaug.gan.state": result.state, "medaug.gan.cuda_graph": result.cuda_graph})
            if result.state == "diverged":
                status.end("diverged", result.message, step=result.step)
                raise GanDiverged(result.message)   # the run ends FAILED, the CLI exits 2
            if result.checkpoint is not None:
                run.log_artifact(result.checkpoint, "checkpoint")
            quality = None
            if result.best_checkpoint is not None and ref is not None:
                status.update(force=True, message="measuring the best checkpoint",
                              best_checkpoint=str(result.best_checkpoint))
                quality = measure_best(run, ref, result, conditional, out)
                status.update(quality={k: v for k, v in quality.items() if k != "warnings"})
        distributed.shutdown()
        status.end("finished", result.message, step=result.step, epoch=result.epoch, eta_s=0.0,
                   img_per_s=result.img_per_s, checkpoint=str(result.checkpoint) if result.checkpoint else None)
    log(f"{result.message} {result.img_per_s} img/s; checkpoint {result.checkpoint}")
    return {"run_id": run.run_id, "checkpoint": str(result.checkpoint) if result.checkpoint else None,
            "best_checkpoint": str(result.best_checkpoint) if result.best_checkpoint else None,
            "quality": ({k: quality[k] for k in ("kid", "precision", "recall", "usable", "best_step")}
                        if quality else None),
            "steps": result.step, "epochs": result.epoch, "img_per_s": result.img_per_s,
            "seconds": result.seconds, "state": result.state, "out": str(out),
            "status": str(status.path), "cuda_graph": result.cuda_graph, "metrics": result.metrics}


def cmd_generate(args) -> dict:
    from core.generators import generator_checkpoint
    from core.synthetic import write_synthetic_set

    t0 = time.perf_counter()
    checkpoint = generator_checkpoint(args.checkpoint)   # a run's best.pt when it has one
    if str(checkpoint) != str(args.checkpoint):
        log(f"Using {checkpoint} (the lowest-KID checkpoint of that run).")
    ds = write_synthetic_set(checkpoint, args.n, args.out, args.class_name, args.seed, dicom=args.dicom,
                             append=args.append, overwrite=args.force, device=args.device, steps=args.steps,
                             guidance=args.guidance, on_progress=progress_printer(0.25))
    seconds = round(time.perf_counter() - t0, 2)
    record = ds.meta["generator"][-1]
    log(f"Wrote {args.n} synthetic images ({record['class'] or 'all classes'}) from {record['family']} run {record['run_id']} "
        f"to {ds.root} in {seconds} s; the set now holds {len(ds.manifest)} images.")
    return {"out": str(ds.root), "images": args.n, "total_images": len(ds.manifest), "classes": ds.class_counts(),
            "run_id": record["run_id"], "seed": args.seed, "source": f"{record['family']}:{record['run_id']}",
            "dicom": args.dicom, "content_hash": ds.content_hash, "seconds": seconds, "checkpoint": str(checkpoint)}


def register(sub) -> None:
    from core.gan.variants import VARIANTS   # the table itself imports no torch

    s = sub.add_parser("train-gan", help="train a DCGAN / WGAN / WGAN-GP on a dataset's training split",
                       description="Train a GAN on the TRAIN split of a dataset folder. Every flag can also be "
                                   "given in --config JSON (flags win). Writes OUT/checkpoint.pt, OUT/grids/ and "
                                   "OUT/status.json; logs to MLflow.")
    s.add_argument("--data", help="dataset folder")
    s.add_argument("--out", help="job folder for checkpoint, grids and status.json")
    s.add_argument("--config", help="JSON file with any of these options (flags given here win)")
    s.add_argument("--variant", choices=list(VARIANTS), default=None, help="GAN variant (default dcgan)")
    s.add_argument("--resolution", type=int, default=None, help="image side: 64, 128 or 256 (default 64)")
    s.add_argument("--batch", type=int, default=None, help="batch size (default 64)")
    which = s.add_mutually_exclusive_group()
    which.add_argument("--class", dest="class_name", default=None, help="train one model on this class only")
    which.add_argument("--conditional", action="store_true", default=None,
                       help="one class-conditional model over all classes")
    s.add_argument("--epochs", type=int, default=None, help="epochs (default 25)")
    s.add_argument("--max-steps", dest="max_steps", type=int, default=None, help="stop after this many generator steps")
    s.add_argument("--max-seconds", dest="max_seconds", type=float, default=None,
                   help="stop after this much training time (a time budget; the last epoch is saved)")
    s.add_argument("--steps-per-epoch", dest="steps_per_epoch", type=int, default=None,
                   help="generator steps per epoch (default ceil(images / batch), at least 20)")
    s.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    s.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: one per core; use fewer when the cores are shared)")
    s.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=None,
                   help="auto: bf16 autocast on GPUs, fp32 on CPUs")
    s.add_argument("--cuda-graph", dest="cuda_graph", action=argparse.BooleanOptionalAction, default=None,
                   help="GPU: capture the whole D+G step in one CUDA graph and replay it (default on)")
    s.add_argument("--diffaug", action="store_true", default=None, help="DiffAugment (translation + cutout)")
    s.add_argument("--lr", type=float, default=None, help="learning rate (default: the variant's)")
    s.add_argument("--n-critic", dest="n_critic", type=int, default=None, help="critic steps per G step (default: the variant's)")
    s.add_argument("--nz", type=int, default=None, help="noise length (default 100)")
    s.add_argument("--width", type=int, default=None, help="base channels of G and D (default 64)")
    s.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    s.add_argument("--log-every", dest="log_every", type=int, default=None, help="read losses every N steps (default 10)")
    s.add_argument("--fidelity-every", dest="fidelity_every", type=int, default=None,
                   help="check KID against the real train split every N steps; keep the best as OUT/best.pt and "
                        "measure it into OUT/quality.json")
    s.add_argument("--fidelity-patience", dest="fidelity_patience", type=int, default=None,
                   help="stop when KID has not improved for K checks (needs --fidelity-every)")
    s.add_argument("--resume", action="store_true", default=None, help="continue from OUT/checkpoint.pt if present")
    s.set_defaults(func=cmd_train_gan)

    s = sub.add_parser("generate", help="generate a synthetic dataset folder from a GAN or diffusion checkpoint")
    s.add_argument("--checkpoint", required=True,
                   help="train-gan or train-diffusion folder or its checkpoint.pt (its best.pt is used when "
                        "present), or a .pt file")
    s.add_argument("--n", type=int, required=True, help="number of images")
    s.add_argument("--class", dest="class_name", default=None,
                   help="class to generate (conditional models; default: spread over all classes)")
    s.add_argument("--out", required=True, help="synthetic dataset folder to write")
    s.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    s.add_argument("--dicom", action="store_true", help="also write de-identified DICOM copies under OUT/dicom/")
    s.add_argument("--append", action="store_true", help="add to an existing synthetic set at OUT")
    s.add_argument("--force", action="store_true", help="replace OUT if it exists")
    s.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    s.add_argument("--steps", type=int, default=None,
                   help="diffusion: DDIM sampling steps (default: the model's sample_steps); ignored for a GAN")
    s.add_argument("--guidance", type=float, default=None,
                   help="diffusion: classifier-free guidance scale (default: the model's; 1 = none); ignored for a GAN")
    s.set_defaults(func=cmd_generate)
