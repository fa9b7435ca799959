"""CLI: ``python -m core study``, ``python -m core run-cell`` and ``python -m core study-results``.

    python -m core study --data DIR --preset quick [--out DIR] [--resume]
    python -m core study --data DIR --preset quick --plan-only --out DIR     # one JSON spec per cell
    for spec in DIR/specs/*.json; do python -m core run-cell "$spec"; done   # any scheduler
    python -m core study-results --study RUN_ID [--csv results.csv]          # the table, from MLflow
    python -m core study --data DIR --preset paper --executor ray [--address auto|ray://host:10001]

``study`` keeps ``<out>/status.json`` current (atomic, like train-gan's) for pages and job runners:

    {"kind": "study", "state": "starting|running|finished|failed|cancelled", "message": str,
     "cells_done": int, "cells_total": int, "cells_skipped": int, "current": "set|network|s0"|null,
     "cell_epoch": int, "cell_epochs": int, "eta_s": float|null, "run_id": parent run id,
     "results_csv": str (at the end), "out": str, "config": {StudyConfig}, "started", "updated",
     "executor": "local|ray", "cell_states": {cell: "pending|running|finished|failed"}, "cells_pending": int,
     "cells_running": int, "cells_failed": int, "failed": {cell: reason}, "ray_slots": int (ray),
     "tracking_spilled": [folder] (a lost tracking store: replay each, then --resume)}

``--config JSON`` holds StudyConfig fields plus ``data``, ``out``, ``preset``, ``resume``,
``plan_only``, ``executor``, ``address``, ``max_retries`` and ``ray_data``; flags given on the command
line win. The executor is not part of the study's key: a study started by one executor resumes
with the other.
"""
from __future__ import annotations

from pathlib import Path

from core.cli import job_fields, log

JOB_KEYS = ("data", "out", "preset", "resume", "plan_only", "executor", "address", "max_retries", "ray_data")


def _parse_gan_steps(items: list[str]) -> dict[str, int]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            out[name] = int(value)
        except ValueError:
            raise ValueError(f"--gan-steps {item!r}: write VARIANT=STEPS, like dcgan=400.") from None
        if not sep:
            raise ValueError(f"--gan-steps {item!r}: write VARIANT=STEPS, like dcgan=400.")
    return out


def validate(fields: dict):
    """(job keys, preset name, StudyConfig) of a study job once its values are checked. The command
    runs it first (then :func:`core.study.run.check_study` checks data, networks and checkpoints);
    :func:`core.jobs.submit` runs it before a job is queued."""
    from core.study.grid import StudyConfig, preset

    fields = dict(fields)
    job = {k: fields.pop(k, None) for k in JOB_KEYS}
    name = job["preset"] or "quick"
    base = preset(name)   # raises for an unknown preset
    if isinstance(fields.get("gan_steps"), (list, tuple)):   # VARIANT=STEPS words from the command line
        fields["gan_steps"] = _parse_gan_steps(fields["gan_steps"])
    if "gan_steps" in fields:
        fields["gan_steps"] = {**base.gan_steps, **fields["gan_steps"]}
    config = StudyConfig.from_dict({**base.to_dict(), **fields})
    _check_executor(job)
    return job, name, config


def _check_executor(job: dict) -> None:
    """Executor options (filled with their defaults in ``job``); Ray must be installed for ``ray``
    (checked without importing it)."""
    from core.study.ray_executor import DATA_MODES, check_available
    from core.study.run import EXECUTORS

    job["executor"] = job["executor"] or "local"
    if job["executor"] not in EXECUTORS:
        raise ValueError(f"--executor {job['executor']!r}: choose one of {', '.join(EXECUTORS)}.")
    job["max_retries"] = 3 if job["max_retries"] is None else job["max_retries"]
    job["ray_data"] = job["ray_data"] or "auto"
    if job["executor"] == "local":
        given = [f"--{k.replace('_', '-')}" for k in ("address",) if job[k]]
        if given:
            raise ValueError(f"{', '.join(given)} is for --executor ray; add --executor ray or leave it out.")
        return
    if job["plan_only"]:
        raise ValueError("--plan-only writes job specs for a scheduler of your own; --executor ray runs the cells "
                         "itself. Choose one.")
    if not isinstance(job["max_retries"], int) or isinstance(job["max_retries"], bool) or job["max_retries"] < 0:
        raise ValueError(f"--max-retries {job['max_retries']!r}: give 0 or more retries per cell.")
    if job["ray_data"] not in DATA_MODES:
        raise ValueError(f"--ray-data {job['ray_data']!r}: choose one of {', '.join(DATA_MODES)}.")
    check_available()


def cmd_study(args) -> dict:
    from core.study.run import check_study, run_study
    from core.tracked import tracked_job
    from core.tracking import check_store
    from core.workspace import workspace_dir

    job, name, config = validate(job_fields(args, "study", required=()))
    if job["data"]:
        data = job["data"]
    else:
        from core.data.datasets import ensure_default_dataset

        data = str(ensure_default_dataset().root)
        log(f"no --data: using the built-in phantom at {data}")
    out = Path(job["out"] or workspace_dir("studies") / f"{name}-{config.key()}").expanduser().resolve()
    check_study(data, config, out, bool(job["resume"]))   # before out, its status file or a run exist
    check_store()
    # one study per folder (run-cell workers share it on purpose)
    with tracked_job("study", out, lambda s: f"after {s.get('cells_done')} cells; continue with "
                                             f"`python -m core study --resume --out {out}` and the same options",
                     cells_done=0, cells_total=None, eta_s=None, preset=name, config=config.to_dict()) as tj:
        summary = run_study(data, config, out, resume=bool(job["resume"]), plan_only=bool(job["plan_only"]), log=log,
                            status=tj.status, executor=job["executor"],
                            ray_options={"address": job["address"], "max_retries": job["max_retries"],
                                         "data": job["ray_data"]})
        if summary.get("message"):   # failed cells, a lost tracking store: the job ends failed, saying what to run
            raise ValueError(summary["message"])
    return {"preset": name, **summary, "status": str(tj.status.path)}


def cmd_run_cell(args) -> dict:
    from core.study.run import run_cell_spec

    return run_cell_spec(args.spec, log=log)


def cmd_study_results(args) -> dict:
    from core.study.results import table_text, write_results
    from core.study.run import summary_rows
    from core.study.verdict import study_answer

    answer = study_answer(args.study, args.metric, args.out)
    cells, table, sens, verdict = answer["cells"], answer["table"], answer["sensitivity"], answer["verdict"]
    if cells.empty:
        raise ValueError(f"study {args.study}: no finished cells in MLflow yet; run its cells first.")
    log(table_text(table, answer["metric"]))
    log("\n".join(verdict))
    summary = {"study_run_id": args.study, "cells": len(cells), "metric": answer["metric"], "verdict": verdict,
               "table": summary_rows(table)}
    if args.csv:
        summary["results_csv"], summary["results_wide_csv"] = write_results(table, args.csv, sens)
    return summary


def register(sub) -> None:
    from core.study.grid import AUG_SETS, METRICS, PRESETS

    s = sub.add_parser("study", help="run the augmentation study grid (sets x networks x seeds), or plan it",
                       description="Train and test one classifier per cell of augmentation set x network x seed; "
                                   "each cell is an MLflow child run of one study run. Ends with the results table "
                                   "(CSV path in the JSON line). --plan-only writes one job spec per cell instead.")
    s.add_argument("--data", help="dataset folder (default: the built-in phantom)")
    s.add_argument("--preset", choices=None, default=None, metavar="|".join(PRESETS),
                   help="quick (phantom 64 px, small CNN, 7 classic ops + DCGAN + WGAN, 1 seed, CPU), standard "
                        "(the same with 3 seeds, the classic pipeline and TSTR rows: 39 cells, < 45 min on 2 "
                        "CPU cores) or paper (VGG16 + Inception-v3, all sets, 3 seeds, GPU); default quick")
    s.add_argument("--out", help="study folder (status.json, specs, GAN cache, results.csv); "
                                 "default workspace/studies/<preset>-<key>")
    s.add_argument("--config", help="JSON file with study fields (flags given here win)")
    s.add_argument("--sets", nargs="+", default=None, metavar="SET", help=f"augmentation sets: {', '.join(AUG_SETS)}")
    s.add_argument("--networks", nargs="+", default=None, metavar="NET", help="networks of core.classify")
    s.add_argument("--seeds", nargs="+", type=int, default=None, help="one cell per seed")
    s.add_argument("--epochs", type=int, default=None, help="classifier epochs per cell")
    s.add_argument("--image-size", dest="image_size", type=int, default=None, help="classifier input size (px)")
    s.add_argument("--gan-steps", dest="gan_steps", nargs="+", default=None, metavar="VARIANT=STEPS",
                   help="generator steps per GAN variant, e.g. dcgan=400 wgan=200")
    s.add_argument("--gan-threads", dest="gan_threads", type=int, default=None, help="CPU threads for GAN training")
    s.add_argument("--metric", choices=METRICS, default=None, help="the results table's metric (default macro_f1)")
    s.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    s.add_argument("--resume", action="store_true", default=None,
                   help="continue the study in --out: finished cells are skipped")
    s.add_argument("--plan-only", dest="plan_only", action="store_true", default=None,
                   help="write one JSON job spec per pending cell to OUT/specs and stop")
    s.add_argument("--executor", choices=("local", "ray"), default=None,
                   help="local (default): the cells one after another in this process; ray: generators and cells "
                        "as Ray tasks, as many at once as the cluster has GPUs (or CPUs)")
    s.add_argument("--address", default=None,
                   help="with --executor ray: auto (the Ray started here with `ray start`), ray://HOST:10001 (Ray "
                        "Client) or HOST:6379; default: start a local Ray with this machine's CPUs and GPUs")
    s.add_argument("--max-retries", dest="max_retries", type=int, default=None,
                   help="with --executor ray: retries of a task whose worker died (default 3); errors are not retried")
    s.add_argument("--ray-data", dest="ray_data", choices=("auto", "object-store", "path"), default=None,
                   help="with --executor ray: tasks read the images from Ray's object store, or each loads --data "
                        "(a path every node sees); auto: the object store up to 512 MB (default)")
    s.set_defaults(func=cmd_study)

    s = sub.add_parser("run-cell", help="run one study cell from a job spec written by study --plan-only")
    s.add_argument("spec", help="OUT/specs/NNN-<cell>.json")
    s.set_defaults(func=cmd_run_cell)

    s = sub.add_parser("study-results", help="rebuild a study's results table from MLflow")
    s.add_argument("--study", required=True, help="the study's parent MLflow run id")
    s.add_argument("--metric", choices=METRICS, default=None, help="metric (default: the study's, else macro_f1)")
    s.add_argument("--csv", help="write the table here, one row per set and network with every number (and "
                                 "<stem>_wide.csv as shown, <stem>_sensitivity.csv per class)")
    s.add_argument("--out", default=None, help="the study folder with cells/*/predictions.json (default: the "
                                               "study run's folder, else the runs' artifacts)")
    s.set_defaults(func=cmd_study_results)
