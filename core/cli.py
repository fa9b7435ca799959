"""Command line: each command prints a readable log, then one JSON summary line last.

Scripts and tests read the last line: ``json.loads(stdout.splitlines()[-1])``. A failed
command prints ``{"ok": false, "error": "..."}`` last and exits with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def _log(msg: str) -> None:
    print(msg, flush=True)


def _progress_printer(every: float = 0.1):
    """on_progress callback that prints a line at each ``every`` fraction of the work."""
    state = {"next": 0.0}

    def report(done: int, total: int, message: str) -> None:
        frac = done / total if total else 1.0
        if frac >= state["next"] or done == total:
            _log(f"  [{done:>6}/{total}] {frac:6.1%}  {message}")
            state["next"] = frac + every
    return report


def cmd_phantom(args) -> dict:
    from core.data.datasets import build_phantom_dataset

    t0 = time.perf_counter()
    ds = build_phantom_dataset(args.out, n=args.n, size=args.size, seed=args.seed, workers=args.workers,
                               on_progress=_progress_printer(), overwrite=args.force)
    seconds = round(time.perf_counter() - t0, 2)
    counts = ds.class_counts()
    for name, count in counts.items():
        _log(f"  {name:<22} {count:>6}")
    _log(f"Wrote {len(ds.manifest)} images to {ds.root} in {seconds} s (content hash {ds.content_hash[:12]})")
    return {"images": len(ds.manifest), "classes": counts, "seconds": seconds, "out": str(ds.root),
            "content_hash": ds.content_hash, "splits": ds.manifest["split"].value_counts().to_dict()}


def cmd_dataset(args) -> dict:
    from core.data.datasets import imbalance_ratio, load_dataset, verify_dataset

    ds = load_dataset(args.data)
    table = ds.split_counts()
    _log(f"{ds.id}  {'SYNTHETIC ' if ds.synthetic else ''}{ds.meta.get('kind', '')}  {ds.root}")
    _log(table.to_string())
    counts = ds.class_counts()
    summary = {"id": ds.id, "images": len(ds.manifest), "classes": counts, "synthetic": ds.synthetic,
               "imbalance_ratio": round(imbalance_ratio(counts), 2), "content_hash": ds.content_hash,
               "splits": ds.manifest["split"].value_counts().to_dict()}
    if args.verify:
        problems = verify_dataset(ds)
        for p in problems:
            _log(f"  problem: {p}")
        _log(f"Verified {len(ds.manifest)} files: {len(problems)} problem(s).")
        summary["problems"] = problems
    return summary


def cmd_cache(args) -> dict:
    from core.data.cache import pixel_cache
    from core.data.datasets import load_dataset

    t0 = time.perf_counter()
    ds = load_dataset(args.data)
    cache = pixel_cache(ds, args.size, on_progress=_progress_printer())
    for image_id, msg in list(cache.errors.items())[:20]:
        _log(f"  skipped {image_id}: {msg}")
    seconds = round(time.perf_counter() - t0, 2)
    _log(f"Cache {cache.path}: {int(cache.ok.sum())} images, {len(cache.errors)} unreadable, {seconds} s")
    return {"path": str(cache.path), "images": int(cache.ok.sum()), "failed": len(cache.errors),
            "size": args.size, "seconds": seconds}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m core", description="MedAug Studio: headless commands. "
                                "Each prints a readable log and one JSON summary line last.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("phantom", help="render the synthetic phantom spine dataset into a dataset folder")
    s.add_argument("--out", required=True, help="dataset folder to create")
    s.add_argument("--n", type=int, default=1000, help="number of images (default 1000)")
    s.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    s.add_argument("--seed", type=int, default=0, help="random seed; same seed, same dataset (default 0)")
    s.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    s.add_argument("--force", action="store_true", help="replace --out if it exists")
    s.set_defaults(func=cmd_phantom)

    s = sub.add_parser("dataset", help="summarise a dataset folder (classes, splits, hash)")
    s.add_argument("--data", required=True, help="dataset folder")
    s.add_argument("--verify", action="store_true", help="re-hash every file against the manifest")
    s.set_defaults(func=cmd_dataset)

    s = sub.add_parser("cache", help="build the memory-mapped pixel cache of a dataset at one size")
    s.add_argument("--data", required=True, help="dataset folder")
    s.add_argument("--size", type=int, default=256, help="square side in pixels (default 256)")
    s.set_defaults(func=cmd_cache)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = args.func(args)
    except (ValueError, OSError) as e:  # our errors are ValueErrors that say what to do
        print(f"error: {e}", file=sys.stderr, flush=True)
        print(json.dumps({"ok": False, "command": args.command, "error": str(e)}), flush=True)
        return 2
    print(json.dumps({"ok": True, "command": args.command, **summary}, default=str), flush=True)
    return 0
