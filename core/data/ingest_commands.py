"""CLI commands for real data: ``prepare`` (any source -> dataset folder + pixel cache) and
the VinDr-SpineXR export of the phantom (``phantom --format vindr``)."""
from __future__ import annotations

import time
from pathlib import Path

from core.cli import log, progress_printer


def check_prepare_root(root: str, allow_any_root: bool = False) -> None:
    """The page's rule at the CLI: ``--root`` must lie inside the data roots (the workspace and
    ``MEDAUG_DATA_ROOTS``), unless a trusted shell user passes ``--allow-any-root``, which is
    logged. The library function ``prepare()`` stays unrestricted: trusted Python calls it."""
    from core.data.folders import ENV_DATA_ROOTS, FolderAccessError, allowed_data_roots, resolve_server_folder

    try:
        resolve_server_folder(root, how_to_allow=f"set {ENV_DATA_ROOTS} to its parent folder, or pass "
                                                 "--allow-any-root if you trust this folder")
    except FolderAccessError:
        if not allow_any_root:
            raise
        log(f"--allow-any-root: the data roots check is overridden for --root {Path(root).expanduser().resolve()} "
            f"(data roots: {', '.join(str(r) for r in allowed_data_roots())})")


def cmd_prepare(args) -> dict:
    from core.data.prepare import PrepareConfig, prepare

    check_prepare_root(args.root, args.allow_any_root)
    config = PrepareConfig(source=args.source, root=args.root, out=args.out, size=args.size,
                           label_mode=args.label_mode, patch_margin=args.patch_margin, min_patch=args.min_patch,
                           window=args.window, seed=args.seed, workers=args.workers)
    result = prepare(config, on_progress=progress_printer(), force=args.force)
    ds = result.dataset
    counts = ds.class_counts()
    for name, count in counts.items():
        log(f"  {name:<24} {count:>6}")
    for p in result.problems[:20]:
        log(f"  {p.outcome}: {p.file} [{p.stage}] {p.reason}; {p.action}")
    if len(result.problems) > 20:
        log(f"  ... {len(result.problems) - 20} more in {result.report_path}")
    log(f"Prepared {len(ds.manifest)} images into {ds.root} in {result.seconds} s "
        f"({result.prepared} decoded, {result.reused} reused, {result.skipped} skipped)")
    return {"images": len(ds.manifest), "skipped": result.skipped, "problems": len(result.problems),
            "classes": counts, "manifest": str(ds.root / "manifest.parquet"), "load_report": str(result.report_path),
            "out": str(ds.root), "prepared": result.prepared, "reused": result.reused, "seconds": result.seconds,
            "content_hash": ds.content_hash, "cache": str(result.cache_path),
            "splits": ds.manifest["split"].value_counts().to_dict()}


def cmd_phantom_vindr(args) -> dict:
    """``phantom --format vindr``: the phantom in the VinDr-SpineXR layout; --size is the film height."""
    from core.data.vindr_export import VindrExportConfig, export_phantom_vindr, export_summary

    t0 = time.perf_counter()
    config = VindrExportConfig(n=args.n, height=args.size, seed=args.seed, noise=args.noise,
                               workers=args.workers or 0)
    table = export_phantom_vindr(args.out, config, on_progress=progress_printer(), overwrite=args.force)
    seconds = round(time.perf_counter() - t0, 2)
    summary = export_summary(table)
    log(f"Wrote {summary['images']} VinDr-style DICOMs ({summary['monochrome1']} MONOCHROME1, "
        f"{summary['boxes']} boxes) to {args.out} in {seconds} s")
    return {**summary, "out": str(args.out), "format": "vindr", "seconds": seconds}


def register(sub) -> None:
    s = sub.add_parser("prepare", help="decode a phantom / VinDr-SpineXR / image folder into a dataset folder "
                                       "and pixel cache (resumable; bad files go to a load report)")
    s.add_argument("--source", required=True, choices=["phantom", "vindr", "folder"],
                   help="phantom: a dataset folder from `phantom`; vindr: annotations/ + {train,test}_images/; "
                        "folder: <class>/<file> images")
    s.add_argument("--root", required=True, help="the source folder; it must lie inside the data roots (the "
                                                 "workspace and the folders in MEDAUG_DATA_ROOTS), as on the page")
    s.add_argument("--allow-any-root", action="store_true",
                   help="read a --root outside the data roots (a trusted shell user's override; it is logged)")
    s.add_argument("--out", required=True, help="dataset folder to write (an interrupted run there resumes)")
    s.add_argument("--size", type=int, default=256, help="stored square side in pixels (default 256)")
    s.add_argument("--label-mode", default="single", choices=["single", "multi", "patch"],
                   help="single: one finding per image plus normals; multi: all findings; patch: lesion crops")
    s.add_argument("--patch-margin", type=float, default=0.25, help="patch mode: margin per side, in box sizes")
    s.add_argument("--min-patch", type=int, default=32, help="patch mode: smallest crop side in source pixels")
    s.add_argument("--window", default="voi", choices=["voi", "percentile", "none"],
                   help="DICOM brightness: header window (voi), 0.5-99.5 percentiles, or the full range")
    s.add_argument("--seed", type=int, default=0, help="seed of the split by study (default 0)")
    s.add_argument("--workers", type=int, default=0, help="worker processes (default: all cores)")
    s.add_argument("--force", action="store_true", help="replace --out if it holds something else")
    s.set_defaults(func=cmd_prepare)
