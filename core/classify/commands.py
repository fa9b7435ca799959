"""CLI: ``python -m core train-classifier``.

Trains one classifier on a dataset folder's manifest splits (single-label, pixel cache at the
model's input size) through :func:`core.classify.train.train_classifier`; logs to MLflow
through :mod:`core.tracking` (kind ``classifier``: params once, per-epoch metrics with
``step=epoch``, test metrics, a confusion-matrix figure, a per-class metrics table and
metrics.json as artifacts) and keeps ``<out>/status.json`` current for pages and job runners:

    {"kind": "train-classifier", "state": "starting|running|finished|early_stopped|time_budget|
     diverged|failed|cancelled", "message": str, "pid": int, "epoch": int, "epochs": int,
     "eta_s": float|null, "img_per_s": float|null, "metrics": {last epoch's metrics},
     "best_epoch": int, "run_id": str|null, "checkpoint": str|null, "model": str|null,
     "test": {accuracy, balanced_accuracy, macro_f1, macro_auroc} | null, "out": str,
     "config": {ClassifierConfig fields}, "started": iso, "updated": iso}

``--config JSON`` holds the same fields as the flags (flags given on the command line win), so
a job runner can launch ``python -m core train-classifier --config job.json``. As for train-gan:
everything is validated before the first side effect, ``<out>/.lock`` keeps a second job off the
folder, a terminal status is written even on a full disk, and ``--resume`` continues the MLflow
run named in the checkpoint.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from core.cli import job_fields, log, progress_printer

# --config keys that are not ClassifierConfig fields
JOB_KEYS = ("data", "out", "resume", "classes")


def validate(fields: dict):
    """(job keys, ClassifierConfig, data folder) of a train-classifier job, once every check that needs
    no pixels has passed: values, device, data folder, classes. The command runs it first;
    :func:`core.jobs.submit` runs it before a job is queued."""
    from core.classify.train import ClassifierConfig
    from core.data.datasets import load_dataset
    from core.device import resolve_device

    fields = dict(fields)
    job = {k: fields.pop(k, None) for k in JOB_KEYS}
    for key in ("data", "out"):
        if not job[key]:
            raise ValueError(f"train-classifier needs --{key} (or \"{key}\" in --config).")
    config = ClassifierConfig.from_dict(fields)       # fail fast on bad values, before loading pixels
    resolve_device(config.device)                     # e.g. --device cuda on a machine without CUDA
    data = Path(job["data"]).expanduser()
    if not data.exists():
        raise ValueError(f"--data {data}: no such folder; create one with `python -m core phantom --out {data}`.")
    ds = load_dataset(data)
    if isinstance(job["classes"], str):
        job["classes"] = [c.strip() for c in job["classes"].split(",") if c.strip()]
    unknown = sorted(set(job["classes"] or ()) - set(ds.classes))
    if unknown:
        raise ValueError(f"--classes: {', '.join(unknown)} not in {ds.root}; its classes are {', '.join(ds.classes)}.")
    return job, config, ds


def _finite(value):
    """NaN/inf -> None, recursively, so the JSON line and status file stay strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def per_class_table(metrics: dict) -> dict[str, list]:
    """Columns of the per-class metrics table (one row per class) with CI bounds."""
    cols: dict[str, list] = {"class": [], "support": []}
    for name, values in metrics["per_class"].items():
        cols["class"].append(name)
        cols["support"].append(values["support"])
        for key in ("sensitivity", "specificity", "precision", "f1", "auroc"):
            cols.setdefault(key, []).append(_finite(values[key]))
            ci = metrics.get("ci", {}).get("per_class", {}).get(name, {}).get(key)
            if ci:
                cols.setdefault(f"{key}_ci_low", []).append(_finite(ci[0]))
                cols.setdefault(f"{key}_ci_high", []).append(_finite(ci[1]))
    return cols


def cmd_train_classifier(args) -> dict:
    from core import distributed, tracking
    from core.classify.data import classifier_splits
    from core.classify.evaluate import SUMMARY_METRICS
    from core.classify.train import (CHECKPOINT_FILE, check_resume, load_checkpoint, train_classifier,
                                     training_fingerprint)
    from core.tracked import tracked_job

    # 1. validate everything (values, device, data, classes, checkpoint, store) before any side effect
    job, config, ds = validate(job_fields(args, "train-classifier", required=()))
    out = Path(job["out"]).expanduser().resolve()
    ctx = distributed.init(config.device)   # under torchrun: join the other ranks
    with distributed.rank0_first(ctx):       # rank 0 builds the pixel cache
        splits = classifier_splits(ds, config.input_size, job["classes"],
                                   on_progress=progress_printer(0.25) if ctx.is_main else None)
    if not ctx.is_main:                      # the other ranks train silently: rank 0 logs, checkpoints, reports
        result = train_classifier(config, splits.train, splits.val, splits.test, splits.class_names,
                                  checkpoint_dir=out, resume=bool(job["resume"]))
        distributed.shutdown()
        return {"rank": ctx.rank, "state": result.state, "seconds": result.seconds}
    if config.weights_path:   # pretrained weights that exist and fit the network
        from core.classify.models import build_model

        build_model(config.model, len(splits.class_names), 1, config.weights_path, config.aux_logits)
    resume_from, first_epoch, history = None, [0], []
    if job["resume"] and (out / CHECKPOINT_FILE).is_file():
        state = load_checkpoint(out / CHECKPOINT_FILE)
        check_resume(state, config, training_fingerprint(config, splits.train, splits.val, splits.class_names),
                     splits.class_names, str(out / CHECKPOINT_FILE))
        resume_from = (state.get("meta") or {}).get("run_id")
        first_epoch[0] = int(state["loop"]["epoch"])
        history = state["loop"].get("history") or []
        del state
    tracking.check_store()

    # 2. the job: folder, lock, status file, SIGTERM, MLflow run (core.tracked)
    with tracked_job("train-classifier", out, lambda s: f"at epoch {s['epoch']}; continue with --resume --out {out}",
                     message="loading", epoch=0, epochs=config.epochs, eta_s=None, img_per_s=None, metrics={},
                     best_epoch=0, checkpoint=None, model=None, test=None, config=config.to_dict()) as tj:
        status = tj.status
        counts = splits.counts()
        log(f"train-classifier {config.model} at {config.input_size} px on {ds.id}: "
            + ", ".join(f"{s} {sum(c.values())}" for s, c in counts.items())
            + f" images, {len(splits.class_names)} classes, batch {config.batch_size}, up to {config.epochs} epochs "
              f"-> {out}")
        for note in splits.notes:
            log(f"  note: {note}")
        params = {**config.to_dict(), "data": str(ds.root), "classes": json.dumps(splits.class_names),
                  "n_train": len(splits.train[1]), "n_val": len(splits.val[1]), "n_test": len(splits.test[1]),
                  "input_size": config.input_size, "out": str(out), "world_size": ctx.world_size}
        tags = {"medaug.classifier.model": config.model, "medaug.out": str(out),
                "medaug.classifier.shuffle_labels": config.shuffle_labels}
        if job["resume"] and (out / CHECKPOINT_FILE).is_file():
            tags["medaug.resumed"] = True
        with tj.run(resume_from, "classifier", params, dataset=ds, tags=tags,
                    run_name=f"{config.model} {config.input_size}px s{config.seed}"
                             + (" shuffled labels" if config.shuffle_labels else "")) as run:
            for past in history:   # epochs the checkpoint holds but the run lacks (killed before it logged them)
                run.log_metrics({k: v for k, v in past.items() if k != "epoch" and math.isfinite(v)}, past["epoch"])
            t_start = time.monotonic()

            def on_epoch(epoch: int, metrics: dict) -> None:
                run.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)}, epoch)
                per_epoch = (time.monotonic() - t_start) / max(epoch - first_epoch[0], 1)
                eta = per_epoch * (config.epochs - epoch)
                status.update(force=True, epoch=epoch, img_per_s=round(metrics["img_per_s"], 2), eta_s=round(eta, 1),
                              metrics=_finite({k: round(v, 5) for k, v in metrics.items()}),
                              checkpoint=str(out / CHECKPOINT_FILE))
                log(f"  epoch {epoch:>3}/{config.epochs}  train loss {metrics['train_loss']:.4f} acc "
                    f"{metrics['train_acc']:.3f}  val loss {metrics['val_loss']:.4f} acc {metrics['val_acc']:.3f} "
                    f"macro-F1 {metrics['val_macro_f1']:.3f}  {metrics['img_per_s']:.0f} img/s")

            result = train_classifier(config, splits.train, splits.val, splits.test, splits.class_names,
                                      on_epoch=on_epoch, checkpoint_dir=out, resume=bool(job["resume"]),
                                      meta={"run_id": run.run_id, "dataset_id": ds.id,
                                            "dataset_hash": ds.content_hash, "data": str(ds.root)})
            for note in result.notes:
                log(f"  note: {note}")
            m = result.metrics
            if m:
                log_test_results(run, result, out)
            run.set_tags({"medaug.classifier.state": result.state,
                          "medaug.classifier.best_epoch": result.best_epoch,
                          "medaug.classifier.precision": result.precision})
            if result.state == "diverged":
                status.end("diverged", result.message)
                raise ValueError(result.message)
        distributed.shutdown()
        test = {k: m[k] for k in SUMMARY_METRICS} if m else None
        status.end(result.state, result.message, eta_s=0.0, best_epoch=result.best_epoch,
                   model=str(result.model_path) if result.model_path else None, test=_finite(test))
    log(f"{result.message} {result.images_per_s} img/s ({result.precision}, {result.device}).")
    if m:
        log("  test: " + "  ".join(f"{k} {m[k]:.3f} [{m['ci'][k][0]:.3f}, {m['ci'][k][1]:.3f}]" if m.get("ci")
                                   else f"{k} {m[k]:.3f}" for k in SUMMARY_METRICS))
    return _finite({
        "run_id": run.run_id, "state": result.state, "epochs": len(result.history) and result.history[-1]["epoch"],
        "best_epoch": result.best_epoch, "classes": splits.class_names, "test": test,
        "ci": {k: m["ci"][k] for k in SUMMARY_METRICS} if m and m.get("ci") else None,
        "sensitivity": {c: v["sensitivity"] for c, v in m["per_class"].items()} if m else None,
        "images_per_s": result.images_per_s, "seconds": result.seconds, "precision": result.precision,
        "out": str(out), "status": str(status.path), "model": str(result.model_path) if result.model_path else None,
        "checkpoint": str(result.checkpoint) if result.checkpoint else None})


def log_test_results(run, result, out: Path) -> None:
    """The test metrics of the tested weights: metrics.json, the confusion matrix, the per-class table, model.pt."""
    from core.charts import confusion_matrix_figure
    from core.classify.evaluate import flat_metrics
    from core.files import write_json_atomic

    m = result.metrics
    run.log_metrics(flat_metrics(m), result.best_epoch)
    metrics_path = out / "metrics.json"
    write_json_atomic(metrics_path, _finite({"state": result.state, "message": result.message,
                                             "best_epoch": result.best_epoch, "metrics": m,
                                             "history": result.history}))
    run.log_artifact(metrics_path)
    run.log_figure(confusion_matrix_figure(m["confusion_matrix"], m["classes"]), "confusion_matrix.html")
    run.log_table(per_class_table(m), "per_class_metrics.json")
    if result.model_path and result.model_path.stat().st_size < 200 * 2**20:
        run.log_artifact(result.model_path, "model")


def register(sub) -> None:
    s = sub.add_parser("train-classifier", help="train and test one classifier on a dataset's splits",
                       description="Train a classifier on the TRAIN split of a dataset folder, pick the epoch with "
                                   "the best val macro-F1, test it on the untouched TEST split. Every flag can also "
                                   "be given in --config JSON (flags win). Writes OUT/checkpoint.pt, OUT/model.pt, "
                                   "OUT/metrics.json and OUT/status.json; logs to MLflow.")
    s.add_argument("--data", help="dataset folder")
    s.add_argument("--out", help="job folder for checkpoint, model, metrics and status.json")
    s.add_argument("--config", help="JSON file with any of these options (flags given here win)")
    s.add_argument("--model", default=None, help="small_cnn (default), resnet18, vgg16, googlenet, inception_v3")
    s.add_argument("--classes", default=None, help="comma-separated subset of classes (default: all)")
    s.add_argument("--image-size", dest="image_size", type=int, default=None,
                   help="input side in px (default 64; Inception-v3 always 299)")
    s.add_argument("--epochs", type=int, default=None, help="most epochs (default 30)")
    s.add_argument("--batch-size", dest="batch_size", type=int, default=None, help="batch size (default 32)")
    s.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default 1e-3)")
    s.add_argument("--weight-decay", dest="weight_decay", type=float, default=None, help="AdamW weight decay")
    s.add_argument("--schedule", choices=("cosine", "constant"), default=None, help="lr schedule (default cosine)")
    s.add_argument("--balance", choices=("none", "weighted_loss", "sampler"), default=None,
                   help="none (default), weighted_loss or sampler")
    s.add_argument("--patience", type=int, default=None, help="early stopping patience in epochs (default 8)")
    s.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    s.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    s.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=None,
                   help="auto: bf16 autocast on GPUs, fp32 on CPUs")
    s.add_argument("--threads", type=int, default=None, help="CPU threads (default: one per core)")
    s.add_argument("--weights", dest="weights_path", default=None, help="local pretrained state dict (.pt)")
    s.add_argument("--aux-logits", dest="aux_logits", action="store_true", default=None,
                   help="GoogLeNet: train with its auxiliary heads (Inception-v3 always does)")
    s.add_argument("--shuffle-labels", dest="shuffle_labels", action="store_true", default=None,
                   help="control run: train and select on label-shuffled train/val (expect chance-level test scores)")
    s.add_argument("--max-seconds", dest="max_seconds", type=float, default=None, help="time budget of the training")
    s.add_argument("--n-boot", dest="n_boot", type=int, default=None, help="bootstrap replicates (default 1000)")
    s.add_argument("--resume", action="store_true", default=None, help="continue from OUT/checkpoint.pt if present")
    s.set_defaults(func=cmd_train_classifier)
