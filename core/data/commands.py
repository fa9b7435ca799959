"""CLI commands for dataset folders: phantom, dataset, cache."""
from __future__ import annotations

import time

from core.cli import log, progress_printer


def cmd_phantom(args) -> dict:
    if args.format == "vindr":
        from core.data.ingest_commands import cmd_phantom_vindr

        return cmd_phantom_vindr(args)
    from core.data.datasets import build_phantom_dataset

    t0 = time.perf_counter()
    ds = build_phantom_dataset(args.out, n=args.n, size=args.size, seed=args.seed, workers=args.workers,
                               on_progress=progress_printer(), overwrite=args.force)
    seconds = round(time.perf_counter() - t0, 2)
    counts = ds.class_counts()
    for name, count in counts.items():
        log(f"  {name:<22} {count:>6}")
    log(f"Wrote {len(ds.manifest)} images to {ds.root} in {seconds} s (content hash {ds.content_hash[:12]})")
    return {"images": len(ds.manifest), "classes": counts, "seconds": seconds, "out": str(ds.root),
            "content_hash": ds.content_hash, "splits": ds.manifest["split"].value_counts().to_dict()}


def cmd_dataset(args) -> dict:
    from core.data.datasets import imbalance_ratio, load_dataset, verify_dataset

    ds = load_dataset(args.data)
    table = ds.split_counts()
    log(f"{ds.id}  {'SYNTHETIC ' if ds.synthetic else ''}{ds.meta.get('kind', '')}  {ds.root}")
    log(table.to_string())
    counts = ds.class_counts()
    summary = {"id": ds.id, "images": len(ds.manifest), "classes": counts, "synthetic": ds.synthetic,
               "imbalance_ratio": round(imbalance_ratio(counts), 2), "content_hash": ds.content_hash,
               "splits": ds.manifest["split"].value_counts().to_dict()}
    if args.verify:
        problems = verify_dataset(ds)
        for p in problems:
            log(f"  problem: {p}")
        log(f"Verified {len(ds.manifest)} files: {len(problems)} problem(s).")
        summary["problems"] = problems
    return summary


def cmd_cache(args) -> dict:
    from core.data.cache import pixel_cache
    from core.data.datasets import load_dataset

    t0 = time.perf_counter()
    ds = load_dataset(args.data)
    cache = pixel_cache(ds, args.size, on_progress=progress_printer())
    for image_id, msg in list(cache.errors.items())[:20]:
        log(f"  skipped {image_id}: {msg}")
    seconds = round(time.perf_counter() - t0, 2)
    log(f"Cache {cache.path}: {int(cache.ok.sum())} images, {len(cache.errors)} unreadable, {seconds} s")
    return {"path": str(cache.path), "images": int(cache.ok.sum()), "failed": len(cache.errors),
            "size": args.size, "seconds": seconds}


def register(sub) -> None:
    s = sub.add_parser("phantom", help="render the synthetic phantom spine dataset into a dataset folder")
    s.add_argument("--out", required=True, help="dataset folder to create")
    s.add_argument("--n", type=int, default=1000, help="number of images (default 1000)")
    s.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    s.add_argument("--seed", type=int, default=0, help="random seed; same seed, same dataset (default 0)")
    s.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    s.add_argument("--force", action="store_true", help="replace --out if it exists")
    s.add_argument("--format", default="dataset", choices=["dataset", "vindr"],
                   help="dataset: a MedAug dataset folder; vindr: the VinDr-SpineXR layout (DICOM + CSV), "
                        "where --size is the film height")
    s.add_argument("--noise", type=float, default=0.0, help="vindr: detector noise in 12-bit counts (default 0)")
    s.set_defaults(func=cmd_phantom)

    s = sub.add_parser("dataset", help="summarise a dataset folder (classes, splits, hash)")
    s.add_argument("--data", required=True, help="dataset folder")
    s.add_argument("--verify", action="store_true", help="re-hash every file against the manifest")
    s.set_defaults(func=cmd_dataset)

    s = sub.add_parser("cache", help="build the memory-mapped pixel cache of a dataset at one size")
    s.add_argument("--data", required=True, help="dataset folder")
    s.add_argument("--size", type=int, default=256, help="square side in pixels (default 256)")
    s.set_defaults(func=cmd_cache)
