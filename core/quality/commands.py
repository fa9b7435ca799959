"""CLI: ``python -m core quality --real DIR --synthetic DIR_OR_CHECKPOINT [--synthetic ...] [--epochs-of RUN_DIR]``.

Writes the report into ``--out`` (report.json, sets.csv, per_image.csv, memorization.csv, epochs.csv,
pairs.csv and pairs/*.png; status.json while it runs), logs it to MLflow as a ``quality`` run
(metrics per set, the sets table as a table artifact, the report files as artifacts) and prints one
JSON summary line last.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

from core.cli import job_fields, log

CONFIG_FIELDS = ("real", "synthetic", "epochs_of", "extractor", "inception_weights", "size", "n_per_class",
                 "max_images", "n_boot", "kid_subsets", "pr_k", "memorization_quantile", "diversity_pairs",
                 "encoder_epochs", "encoder_size", "pairs_shown", "seed")
SET_METRICS = ("fid", "fid_lo", "fid_hi", "kid", "kid_lo", "kid_hi", "precision", "precision_lo", "precision_hi",
               "recall", "recall_lo", "recall_hi", "mean_ssim", "mean_psnr", "mean_ms_ssim", "diversity_synthetic",
               "diversity_real", "flagged")


def metric_key(name: str) -> str:
    """A set name as an MLflow metric prefix (letters, digits, _ - . / and spaces only)."""
    return re.sub(r"[^A-Za-z0-9_\-./ ]+", "_", name).strip() or "set"


def validate(fields: dict):
    """(QualityConfig, out or None) of a quality job once its values and inputs are checked (each
    --synthetic a dataset folder or a checkpoint, --epochs-of a folder with grids). The command runs
    it first; :func:`core.jobs.submit` runs it before a job is queued."""
    from core.quality.evaluate import QualityConfig

    fields = dict(fields)
    out = fields.pop("out", None)
    unknown = sorted(set(fields) - set(CONFIG_FIELDS))
    if unknown:
        raise ValueError(f"unknown quality field(s) {unknown}; known: {', '.join(CONFIG_FIELDS)}.")
    if not fields.get("real"):
        raise ValueError("quality needs --real DIR (the real dataset folder).")
    if isinstance(fields.get("synthetic"), str):
        fields["synthetic"] = [fields["synthetic"]]
    cfg = QualityConfig(**{**fields, "synthetic": tuple(fields.get("synthetic") or ())})
    check_inputs(cfg)
    return cfg, out


def check_inputs(cfg) -> None:
    """Each --synthetic is a dataset folder or a checkpoint and --epochs-of holds epoch grids: checked
    before anything is written (the sets themselves load inside the run)."""
    from core.data.datasets import META_FILE
    from core.quality.evaluate import checkpoint_file

    for spec in cfg.synthetic:
        path = Path(spec).expanduser()
        if not path.exists():
            raise ValueError(f"--synthetic {spec}: no such file or folder; give a synthetic dataset folder, a "
                             f"checkpoint.pt or a train-gan output folder.")
        if not (path.is_dir() and (path / META_FILE).is_file()) and checkpoint_file(path) is None:
            raise ValueError(f"--synthetic {spec}: neither a dataset folder (no {META_FILE}) nor a GAN checkpoint "
                             f"(checkpoint.pt).")
    if cfg.epochs_of and not any((Path(cfg.epochs_of).expanduser() / "grids").glob("epoch_*.png")):
        raise ValueError(f"--epochs-of {cfg.epochs_of}: no grids/epoch_*.png here; give a train-gan output folder.")


def cmd_quality(args) -> dict:
    from core.data.datasets import load_dataset
    from core.quality.evaluate import evaluate
    from core.tracked import tracked_job
    from core.tracking import check_store
    from core.workspace import workspace_dir

    # validate (inputs there, dataset loadable, store reachable) before the first side effect
    cfg, out = validate(job_fields(args, "quality", required=()))
    ds = load_dataset(cfg.real)
    check_store()
    out = Path(out).expanduser() if out else workspace_dir("quality") / "reports" / time.strftime("%Y%m%d-%H%M%S")
    log(f"quality: {len(cfg.synthetic)} synthetic set(s){' + epochs of ' + cfg.epochs_of if cfg.epochs_of else ''} "
        f"against {ds.id} train split, extractor {cfg.extractor} -> {out}")
    with tracked_job("quality", out, lambda s: f"at {s['message']}; run it again", step=0,
                     total_steps=1) as tj:   # one job per report folder
        status = tj.status

        last = [0.0]

        def on_progress(done: int, total: int, message: str) -> None:
            status.update(step=done, total_steps=max(1, total), message=message, force=done >= total)
            if time.monotonic() - last[0] > 1.0 or done >= total:
                log(f"  {message} ({done}/{total})")
                last[0] = time.monotonic()

        with tj.run(None, "quality", cfg, dataset=ds, running="scoring",
                    run_name=f"quality · {len(cfg.synthetic)} set(s)",
                    tags={"medaug.quality.extractor": cfg.extractor, "medaug.out": str(out)}) as run:
            summary = evaluate(cfg, out, on_progress=on_progress)
            log_quality(run, summary, out)
        status.end("finished", "done", step=status.fields["total_steps"])
    for row in summary["sets"]:
        log(f"  {row['set']}: FID {row['fid']:.3g} [{row['fid_lo']:.3g}, {row['fid_hi']:.3g}]  KID {row['kid']:.3g}  "
            f"precision {row['precision']:.2f}  recall {row['recall']:.2f}  SSIM {row['mean_ssim']:.3f}  "
            f"PSNR {row['mean_psnr']:.2f} dB  flagged {row['flagged']}/{row['n_synthetic']}")
        for w in filter(None, [row.get("warnings")]):
            log(f"  warning: {w}")
    log(f"extractor: {summary['extractor_description']}")
    keep = ("set", "fid", "fid_lo", "fid_hi", "kid", "precision", "recall", "mean_ssim", "mean_psnr", "flagged",
            "n_synthetic", "diversity_synthetic", "diversity_real")
    return {"run_id": run.run_id, "out": str(out), "extractor": summary["extractor"],
            "extractor_description": summary["extractor_description"], "size": summary["size"],
            "sets": [{k: r.get(k) for k in keep} for r in summary["sets"]], "epochs": summary["epochs"],
            "seconds": summary["seconds"]}


def log_quality(run, summary: dict, out: Path) -> None:
    """A quality report into its MLflow run: metrics per set and per epoch, the sets table, the files."""
    import pandas as pd

    from core.quality.report import PAIRS_DIR, REPORT_FILES, load_report

    for row in summary["sets"]:
        key = metric_key(row["set"])
        run.log_metrics({f"{key}.{m}": row[m] for m in SET_METRICS
                         if isinstance(row.get(m), (int, float)) and row[m] == row[m]}, step=0)
    for r in load_report(out).epochs.to_dict("records"):
        run.log_metrics({f"epoch.{m}": r[m] for m in ("fid", "kid", "precision", "recall", "mean_ssim")
                         if r.get(m) == r.get(m)}, step=int(r["epoch"]))
    if summary["sets"]:
        run.log_table(pd.DataFrame(summary["sets"]), "quality/sets_table.json")
    run.set_tags({"medaug.quality.sets": " | ".join(r["set"] for r in summary["sets"])[:4000],
                  "medaug.quality.extractor_description": summary["extractor_description"][:4000]})
    for name in REPORT_FILES:
        if (out / name).is_file():
            run.log_artifact(out / name, "quality")
    if any((out / PAIRS_DIR).iterdir()):
        run.client.log_artifacts(run.run_id, str(out / PAIRS_DIR), f"quality/{PAIRS_DIR}")


def register(sub) -> None:
    s = sub.add_parser("quality", help="score synthetic sets against a real set (SSIM/PSNR, FID/KID, memorization)",
                       description="Per-image metrics against the nearest real training image (same class), set "
                                   "metrics with bootstrap intervals, and a memorization audit. Logs to MLflow.")
    s.add_argument("--real", help="real dataset folder (its train split is the reference)")
    s.add_argument("--synthetic", action="append", default=None,
                   help="synthetic dataset folder, checkpoint.pt, or train-gan output folder (repeat for several)")
    s.add_argument("--epochs-of", dest="epochs_of", default=None,
                   help="train-gan output folder: score its per-epoch sample grids (fidelity over training)")
    s.add_argument("--extractor", choices=("domain", "inception"), default=None,
                   help="features for FID/KID/precision-recall and nearest neighbours (default domain)")
    s.add_argument("--inception-weights", dest="inception_weights", default=None,
                   help="local Inception-v3 weights file (else MEDAUG_INCEPTION_WEIGHTS or the torch hub cache)")
    s.add_argument("--size", type=int, default=None, help="comparison size in px (default: the first set's)")
    s.add_argument("--n-per-class", dest="n_per_class", type=int, default=None,
                   help="images sampled per class from a checkpoint (default 64)")
    s.add_argument("--max-images", dest="max_images", type=int, default=None, help="cap per set (default 2000)")
    s.add_argument("--boot", dest="n_boot", type=int, default=None, help="bootstrap resamples (default 50)")
    s.add_argument("--kid-subsets", dest="kid_subsets", type=int, default=None, help="KID subsets (default 50)")
    s.add_argument("--diversity-pairs", dest="diversity_pairs", type=int, default=None,
                   help="random pairs for the within-set MS-SSIM diversity (default 200)")
    s.add_argument("--encoder-epochs", dest="encoder_epochs", type=int, default=None,
                   help="domain encoder training epochs (default 8; cached per dataset)")
    s.add_argument("--seed", type=int, default=None, help="seed (default 0)")
    s.add_argument("--out", default=None, help="report folder (default workspace/quality/reports/<time>)")
    s.add_argument("--config", default=None, help="JSON file with any of these fields (flags win)")
    s.set_defaults(func=cmd_quality)
