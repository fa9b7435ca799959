"""CLI command ``augment``: apply a pipeline to a dataset's training split, write a new folder."""
from __future__ import annotations

from core.cli import log, progress_printer


def cmd_augment(args) -> dict:
    from core.augment.apply import AugmentConfig, augment_dataset
    from core.augment.pipeline import load_pipeline
    from core.data.datasets import load_dataset

    ds = load_dataset(args.data)
    pipeline = load_pipeline(args.pipeline)
    config = AugmentConfig(pipeline, tuple(args.classes or ()), args.target_per_class, args.copies, args.seed,
                           include_source=not args.only_augmented)
    log(f"Source {ds.id} ({len(ds.manifest)} images); pipeline {pipeline.name or '(unnamed)'} "
        f"{pipeline.hash}, mode {pipeline.mode}:")
    for i, step in enumerate(pipeline.steps, start=1):
        log(f"  {i}. {step.op:<20} p={step.probability:<4g} {step.to_dict()['params']}")
    result = augment_dataset(ds, config, args.out, on_progress=progress_printer(), overwrite=args.force)
    for note in result.notes:
        log(f"  note: {note}")
    for image_id, msg in list(result.skipped.items())[:20]:
        log(f"  skipped {image_id}: {msg}")
    new = result.dataset
    train = new.class_counts("train")
    log(f"{'class':<22} {'added':>6} {'train now':>10}")
    for name in new.classes:
        log(f"{name:<22} {result.added.get(name, 0):>6} {train.get(name, 0):>10}")
    log(f"Wrote {new.root} ({len(new.manifest)} images, content hash {new.content_hash[:12]}) in "
        f"{result.seconds} s; MLflow run {result.run_id}")
    return {"out": str(new.root), "id": new.id, "content_hash": new.content_hash, "images": len(new.manifest),
            "added": result.added, "skipped": len(result.skipped), "source": config.source_tag,
            "pipeline_hash": pipeline.hash, "run_id": result.run_id, "seconds": result.seconds,
            "train_counts": train}


def register(sub) -> None:
    s = sub.add_parser("augment", help="apply a classic augmentation pipeline to a dataset's training split")
    s.add_argument("--data", required=True, help="source dataset folder")
    s.add_argument("--pipeline", required=True,
                   help="pipeline JSON file (exported from the Augment page) or a preset: spine-safe, original-study")
    s.add_argument("--classes", nargs="+", default=None, metavar="CLASS",
                   help="classes to augment (quote names with spaces; default: all)")
    s.add_argument("--target-per-class", type=int, default=None, metavar="N",
                   help="grow each chosen class's training split to N images (default: --copies per image)")
    s.add_argument("--copies", type=int, default=1, help="augmented copies per training image without a target (default 1)")
    s.add_argument("--seed", type=int, default=0, help="random seed; same seed, same images (default 0)")
    s.add_argument("--only-augmented", action="store_true",
                   help="write only the augmented images (default: the source rows too, real + augmented)")
    s.add_argument("--out", required=True, help="dataset folder to create")
    s.add_argument("--force", action="store_true", help="replace --out if it exists")
    s.set_defaults(func=cmd_augment)
