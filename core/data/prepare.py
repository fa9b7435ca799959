"""``prepare``: turn a source (phantom dataset, VinDr-SpineXR folder, image folder) into a
MedAug dataset folder plus its pixel cache, tolerating bad files.

    source folder --scan--> SourceItem per image (+ problems)
                  --label mode--> tasks: single / multi-label images, or lesion patches
                  --worker processes--> decode, window, letterbox to size x size, PNG per image
                  --> dataset folder: images/*.png, manifest.parquet, dataset.json (with the
                      dataset card), load_report.csv, sources.csv; then the pixel cache.

Staged: the folder is built as ``.<name>.partial`` beside ``--out`` and renamed to ``--out``
only when complete (pixel cache included), so a killed or failed run never looks like a
dataset. Re-preparing a finished folder moves it back to the staging name first.

Resumable: every finished source file is appended to ``.prepare/done.jsonl`` after its
PNG is in place (PNGs, like every file here, are written to a temp name and renamed), so a killed run leaves no
half-written entry and a second run skips what is done. The run's settings are kept in
``.prepare/config.json``; a folder prepared with other settings is refused.

One bad file never stops the run: it becomes a row of the load report
(file, stage, reason, action, outcome). Running out of room is not a bad file: a full
disk or quota, the file size limit, a read-only file system or a disk I/O error stops the
run at once with :class:`OutOfSpaceError` (temp files removed, finished files kept for
the rerun). Worker processes die with the run, kill -9 included.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from core.data.io import ImageReadError
from core.data.sources import LoadProblem, SourceItem
from core.files import STORAGE_ERRORS, atomic_path, is_storage_error, write_json_atomic

SOURCES = ("phantom", "vindr", "folder")
LABEL_MODES = ("single", "multi", "patch")
WINDOWS = ("voi", "percentile", "none")
REPORT_COLUMNS = ("file", "stage", "reason", "action", "outcome")
STATE_DIR = ".prepare"
JOURNAL_FILE = "done.jsonl"
CONFIG_FILE = "config.json"
REPORT_FILE = "load_report.csv"
SOURCES_FILE = "sources.csv"
IMAGES_DIR = "images"
PARTIAL_SUFFIX = ".partial"  # the staging folder beside --out is .<name>.partial
# the settings that decide the stored pixels: a folder prepared with other values is refused
_PIXEL_SETTINGS = ("source", "root", "size", "label_mode", "patch_margin", "min_patch", "window")

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class PrepareConfig:
    """Everything that defines a prepared dataset."""

    source: str                  # "phantom" (a dataset folder from `python -m core phantom`), "vindr" or "folder"
    root: str                    # the source folder
    out: str                     # the dataset folder to write; an unfinished run there with the same settings resumes
    size: int = 256              # side of the stored square images and of the pixel cache, 32-2048 px
    label_mode: str = "single"   # "single": one finding per image (+ normals); "multi": all findings; "patch": lesion crops
    patch_margin: float = 0.25   # patch mode: margin on each side of a box, as a fraction of its larger side, 0-2
    min_patch: int = 32          # patch mode: smallest crop side in source pixels, 8-4096
    window: str = "voi"          # DICOM brightness: "voi" (header window), "percentile" or "none" (full range)
    val_fraction: float = 0.125  # share of train studies moved to val when the source has no val split, 0-0.5
    seed: int = 0                # seed of the split by study
    workers: int = 0             # worker processes; 0 = one per CPU core, 1 = in this process

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"source={self.source!r}: choose one of {', '.join(SOURCES)}.")
        if self.label_mode not in LABEL_MODES:
            raise ValueError(f"label_mode={self.label_mode!r}: choose one of {', '.join(LABEL_MODES)}.")
        if self.window not in WINDOWS:
            raise ValueError(f"window={self.window!r}: choose one of {', '.join(WINDOWS)}.")
        if not 32 <= self.size <= 2048:
            raise ValueError(f"size={self.size}: choose an image size between 32 and 2048 pixels.")
        if not 0.0 <= self.patch_margin <= 2.0:
            raise ValueError(f"patch_margin={self.patch_margin}: choose a margin between 0 and 2 box sizes.")
        if not 8 <= self.min_patch <= 4096:
            raise ValueError(f"min_patch={self.min_patch}: choose a smallest patch between 8 and 4096 pixels.")
        if not 0.0 <= self.val_fraction <= 0.5:
            raise ValueError(f"val_fraction={self.val_fraction}: choose a share between 0 and 0.5.")
        if not 0 <= self.workers <= 64:
            raise ValueError(f"workers={self.workers}: choose 0 (all cores) to 64 worker processes.")


@dataclass(eq=False)
class PrepareResult:
    dataset: object               # the written core.data.datasets.Dataset
    problems: list[LoadProblem]   # the load report's rows
    report_path: Path             # load_report.csv
    prepared: int                 # source files decoded in this run
    reused: int                   # source files taken from an earlier (interrupted) run
    seconds: float
    cache_path: Path | None = None

    @property
    def skipped(self) -> int:
        """Source files (or whole CSVs / class folders) that could not be used."""
        return sum(p.outcome in ("file skipped", "class skipped", "csv skipped") for p in self.problems)

    @property
    def card(self) -> dict:
        return self.dataset.meta.get("card", {})


class OutOfSpaceError(OSError):
    """The output could not be written (disk or quota full, file size limit, read-only file
    system, I/O error), so ``prepare`` stopped at once. The message names the folder, its free
    space, the space still needed and what to do; the original OSError is its ``__cause__``
    (its own ``errno`` stays None, so the message is shown as it is)."""


# --- messages ------------------------------------------------------------------------------

def problem_from_error(file: str, stage: str, error: Exception, default_action: str) -> LoadProblem:
    """Split our ``"<path>: <reason>; <action>"`` error messages into report columns."""
    text = str(error).removeprefix(f"{Path(file)}: ")
    reason, sep, action = text.rpartition("; ")
    if not sep:
        reason, action = text, default_action
    return LoadProblem(file=file, stage=stage, reason=reason.strip(), action=action.strip().rstrip("."))


def write_report(problems: list[LoadProblem], path: Path) -> Path:
    """Write the load report CSV atomically (a header-only file when there were no problems)."""
    import csv

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(REPORT_COLUMNS)
        for p in problems:
            w.writerow([getattr(p, c) for c in REPORT_COLUMNS])
    return path


def read_report(path: str | Path):
    """The load report as a DataFrame (empty with the report's columns when there is none)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        return pd.DataFrame(columns=list(REPORT_COLUMNS))
    return pd.read_csv(path, dtype=str, keep_default_na=False)


# --- decoding (runs in worker processes) ----------------------------------------------------

_PIL_BITS = {"1": 1, "L": 8, "LA": 8, "P": 8, "PA": 8, "RGB": 8, "RGBA": 8, "CMYK": 8, "YCbCr": 8,
             "I;16": 16, "I;16L": 16, "I;16B": 16, "I": 32, "F": 32}


def decode_source(path: str | Path, window: str = "voi") -> tuple[np.ndarray, dict]:
    """Decode one DICOM or image file to float32 brightness in [0, 1], shape (rows, cols),
    and describe it: bits, photometric, transfer_syntax, synthetic, notes."""
    from core.data.dicom import DicomReadOptions, looks_like_dicom, read_dicom

    path = Path(path)
    if looks_like_dicom(path):
        im = read_dicom(path, DicomReadOptions(window=window, out_dtype="float32"))
        return im.pixels, {"bits": im.bits_stored, "photometric": im.photometric,
                           "transfer_syntax": im.transfer_syntax, "synthetic": im.synthetic,
                           "notes": list(im.notes)}
    from PIL import Image

    from core.data.io import read_image

    if path.is_file() and path.stat().st_size == 0:
        raise ImageReadError(f"{path}: the file is empty (0 bytes); copy or export it again.")
    image = read_image(path)  # raises ImageReadError for unreadable files and decompression bombs
    with Image.open(path) as im:
        mode, fmt = im.mode, im.format or path.suffix.lstrip(".").upper()
        has_alpha = "A" in mode or "transparency" in im.info
    notes = []
    if mode not in ("1", "L", "I;16", "I;16L", "I;16B", "I", "F"):
        notes.append(f"colour ({mode}) converted to grey luminance")
    if has_alpha:
        notes.append("alpha channel (transparency) ignored")
    return image, {"bits": _PIL_BITS.get(mode, 8), "photometric": "MONOCHROME2" if not notes else mode,
                   "transfer_syntax": fmt, "synthetic": False, "notes": notes}


def clean_box(box: dict, width: int, height: int) -> tuple[dict | None, str]:
    """Clip a box to the image; return ``(box, "")`` or ``(None, reason)`` for a degenerate one
    (missing coordinates, inverted, or outside the image)."""
    coords = [box.get(k) for k in ("xmin", "ymin", "xmax", "ymax")]
    try:
        x0, y0, x1, y1 = (float(c) for c in coords)
    except (TypeError, ValueError):
        return None, f"box {coords} has a missing or non-numeric coordinate"
    if not all(np.isfinite([x0, y0, x1, y1])):
        return None, f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) has a missing coordinate (NaN)"
    if x1 <= x0 or y1 <= y0:
        return None, f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is inverted or empty (needs xmin < xmax, ymin < ymax)"
    cx0, cy0, cx1, cy1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))
    if cx1 - cx0 < 1.0 or cy1 - cy0 < 1.0:
        return None, f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies outside the {width} x {height} image"
    return {"label": box["label"], "xmin": cx0, "ymin": cy0, "xmax": cx1, "ymax": cy1}, ""


def _round_box(box: dict) -> dict:
    return {"label": box["label"], **{k: round(float(box[k]), 2) for k in ("xmin", "ymin", "xmax", "ymax")}}


def _save_png(pixels: np.ndarray, path: Path) -> str:
    """Write an 8-bit PNG atomically; return its sha256."""
    from PIL import Image

    from core.data.manifest import file_sha256

    try:
        with atomic_path(path) as tmp:
            Image.fromarray(pixels).save(tmp, format="PNG", compress_level=1)
    except OSError as e:
        if e.filename is None:
            e.filename = str(path)  # a failed write() does not say which file it was
        raise
    return file_sha256(path)


def patch_window(box: dict, width: int, height: int, margin: float, min_side: int) -> tuple[int, int, int, int]:
    """The crop (x0, y0, x1, y1) around a box: a square of the box's larger side plus ``margin``
    on each side (at least ``min_side``), centred on the box and clipped to the image."""
    side = max(box["xmax"] - box["xmin"], box["ymax"] - box["ymin"]) * (1.0 + 2.0 * margin)
    side = max(side, float(min_side))
    cx, cy = (box["xmin"] + box["xmax"]) / 2.0, (box["ymin"] + box["ymax"]) / 2.0
    x0, y0 = int(np.floor(max(0.0, cx - side / 2))), int(np.floor(max(0.0, cy - side / 2)))
    x1, y1 = int(np.ceil(min(float(width), cx + side / 2))), int(np.ceil(min(float(height), cy + side / 2)))
    return x0, y0, x1, y1


def prepare_item(task: dict, images_dir: str, settings: dict) -> dict:
    """Worker: decode one source file, check its boxes, write its PNG(s); return its records
    and problems. ``task`` holds a SourceItem (as a dict), the label(s) and the file's rel name."""
    from core.data.cache import box_to_cache, letterbox
    from core.data.io import to_uint8

    item, rel = task["item"], task["rel"]
    size, mode = settings["size"], settings["label_mode"]
    out = {"key": item["image_id"], "sig": task["sig"], "records": [], "problems": []}
    try:
        unit, info = decode_source(item["file"], settings["window"])
    except ImageReadError as e:
        out["problems"].append(asdict(problem_from_error(item["file"], "decode", e, "fix or remove the file")))
        out["problems"][-1]["file"] = rel
        return out
    height, width = unit.shape
    notes = info.pop("notes")
    if notes:  # used, but converted: say how
        out["problems"].append(asdict(LoadProblem(rel, "decode", ", ".join(notes), "none needed if this is intended",
                                                  "used with a change")))
    boxes = []
    for box in item["boxes"]:
        clean, reason = clean_box(box, width, height)
        if clean is None:
            out["problems"].append(asdict(LoadProblem(f"{rel} ({box.get('where', '')})".replace(" ()", ""), "boxes",
                                                      f"{box['label']}: {reason}", "fix the box coordinates",
                                                      "box skipped")))
        else:
            boxes.append(clean)
    common = {"study_id": item["study_id"], "split": item["split"],
              "source": "phantom" if info["synthetic"] or settings["source"] == "phantom" else "real",
              "width": size, "height": size, "source_file": rel, "orig_width": width, "orig_height": height, **info}
    images_dir = Path(images_dir)
    if mode != "patch":
        pixels = to_uint8(letterbox(unit, size))
        name = f"{item['image_id']}.png"
        sha = _save_png(pixels, images_dir / name)
        out["records"].append({"image_id": item["image_id"], "path": f"{IMAGES_DIR}/{name}", "label": task["label"],
                               "labels": list(task["labels"]), "sha256": sha, **common,
                               "boxes": [_round_box(box_to_cache(b, width, height, size)) for b in boxes]})
        return out
    for k, box in enumerate(boxes):
        x0, y0, x1, y1 = patch_window(box, width, height, settings["patch_margin"], settings["min_patch"])
        crop = unit[y0:y1, x0:x1]
        local = {**box, "xmin": box["xmin"] - x0, "xmax": box["xmax"] - x0, "ymin": box["ymin"] - y0,
                 "ymax": box["ymax"] - y0}
        name = f"{item['image_id']}-p{k}.png"
        sha = _save_png(to_uint8(letterbox(crop, size)), images_dir / name)
        out["records"].append({"image_id": f"{item['image_id']}-p{k}", "path": f"{IMAGES_DIR}/{name}",
                               "label": box["label"], "labels": [box["label"]], "sha256": sha, **common,
                               "boxes": [_round_box(box_to_cache(local, x1 - x0, y1 - y0, size))],
                               "patch": [x0, y0, x1, y1]})
    return out


def _die_with_parent(parent_pid: int) -> None:
    """Worker initializer: end this worker when the prepare process ends, kill -9 included
    (an orphaned pool worker would otherwise wait for work forever)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(1, int(signal.SIGKILL)) == 0:  # PR_SET_PDEATHSIG: the kernel kills us with the parent
                if os.getppid() != parent_pid:  # it died before prctl took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass
    import threading

    def watch() -> None:  # elsewhere: poll the parent
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)
    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def _prepare_chunk(tasks: list[dict], images_dir: str, settings: dict) -> list[dict]:
    results = []
    for task in tasks:
        try:
            results.append(prepare_item(task, images_dir, settings))
        except Exception as e:  # noqa: BLE001 - a file that breaks a decoder in an unforeseen way is
            # reported like any other bad file (with the error's type), and the load goes on
            if is_storage_error(e):
                raise  # the output cannot be written: not a bad image, the run stops
            problem = LoadProblem(task["rel"], "decode", f"unexpected {type(e).__name__}: {e}",
                                  "check the file opens in a DICOM/image viewer; if it does, report it as a bug")
            results.append({"key": task["item"]["image_id"], "sig": task["sig"], "records": [],
                            "problems": [asdict(problem)]})
    return results


# --- sources and label modes (parent process) ----------------------------------------------

def scan_source(config: PrepareConfig) -> tuple[list[SourceItem], list[LoadProblem], dict]:
    """The items of the configured source, the problems found while scanning, and facts
    about the source for the dataset description."""
    root = Path(config.root).expanduser()
    if not root.is_dir():
        raise ValueError(f"{root}: the source folder does not exist; check --root.")
    if config.source == "vindr":
        from core.data.vindr import read_vindr

        items, problems = read_vindr(root)
        return items, problems, {"kind": "vindr", "description": "VinDr-SpineXR-style DICOM folder"}
    if config.source == "folder":
        from core.data.folders import scan_image_folder

        items, problems = scan_image_folder(root)
        return items, problems, {"kind": "folder", "description": "image folder (<class>/<file>)"}
    from core.data.datasets import UNSAFE_PATH_ACTION, load_dataset

    # rows whose path leads outside the folder (absolute, '..', links) are reported, never read
    ds = load_dataset(root, unsafe_paths="skip")
    problems = [LoadProblem(r["path"], "scan", f"manifest row {r['image_id']}: {r['reason']}", UNSAFE_PATH_ACTION)
                for r in ds.unsafe_rows]
    items = []
    for r in ds.manifest.itertuples():
        if not (ds.root / r.path).is_file():
            problems.append(LoadProblem(r.path, "scan", f"manifest row {r.image_id}: the file is missing",
                                        "restore the file, or rebuild the dataset folder"))
            continue
        items.append(SourceItem(image_id=r.image_id, file=str(ds.root / r.path), labels=tuple(r.labels or [r.label]),
                                boxes=tuple({**b, "where": "manifest"} for b in r.boxes), study_id=r.study_id,
                                split=r.split, where="manifest"))
    return items, problems, {"kind": "phantom" if ds.synthetic else ds.meta.get("kind", "dataset"),
                             "description": ds.meta.get("description", ""), "synthetic": ds.synthetic}


def plan_labels(items: list[SourceItem], mode: str) -> tuple[list[tuple[SourceItem, str, list[str]]], list[LoadProblem]]:
    """Pick the items a label mode uses and their (label, labels).

    single: images with exactly one finding (normals included); multi: every image, its
    label being its rarest finding; patch: images with at least one box (one patch per box)."""
    freq = Counter(lab for it in items for lab in it.labels)
    planned, problems = [], []
    for it in items:
        labels = list(dict.fromkeys(it.labels))
        if not labels:
            problems.append(LoadProblem(it.where or it.file, "labels", "the image has no label",
                                        "label it or remove it"))
            continue
        if mode == "single" and len(labels) > 1:
            problems.append(LoadProblem(it.where or it.file, "labels",
                                        f"{len(labels)} finding types ({', '.join(labels)}); single-label mode "
                                        "uses images with one", "use --label-mode multi to keep it"))
            continue
        if mode == "patch" and not it.boxes:
            continue  # normals and unboxed images have nothing to crop; not a problem
        label = min(labels, key=lambda lab: (freq[lab], lab)) if len(labels) > 1 else labels[0]
        planned.append((it, label, labels))
    return planned, problems


# --- the run -------------------------------------------------------------------------------

def _signature(path: str) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def _read_journal(path: Path) -> dict[str, dict]:
    """Finished items by key; a line cut short by a kill is ignored."""
    done = {}
    if path.is_file():
        with open(path) as f:
            for line in f:
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(entry, dict) and "key" in entry:
                    done[entry["key"]] = entry
    return done


def _settings_of(config: PrepareConfig) -> dict:
    d = asdict(config)
    d["root"] = str(Path(config.root).expanduser().resolve())
    return {k: d[k] for k in _PIXEL_SETTINGS}


def staging_dir(out: str | Path) -> Path:
    """Where ``prepare`` builds a dataset before renaming it to ``out``: ``.<name>.partial`` beside it."""
    out = Path(out)
    return out.with_name(f".{out.name}{PARTIAL_SUFFIX}")


def _check_settings(folder: Path, settings: dict, unfinished: bool) -> None:
    """Refuse a folder that ``prepare`` did not make, or made with other settings."""
    old = folder / STATE_DIR / CONFIG_FILE
    if not old.is_file():
        raise ValueError(f"{folder}: already exists and was not made by `prepare`; choose another --out "
                         "or pass --force to replace it.")
    previous = json.loads(old.read_text())
    changed = [f"{k} {previous.get(k)!r} -> {v!r}" for k, v in settings.items() if previous.get(k) != v]
    if changed and unfinished:
        raise ValueError(f"{folder}: holds an unfinished run with other settings ({'; '.join(changed)}); run it "
                         "again with its settings to finish it, or pass --force to start over.")
    if changed:
        raise ValueError(f"{folder}: holds a dataset prepared with other settings ({'; '.join(changed)}); "
                         "choose another --out or pass --force to replace it.")


def _open_output(config: PrepareConfig, out: Path, work: Path, force: bool) -> dict:
    """Make the staging folder ``work`` ready; return the journal of an earlier run with the same
    settings. An unfinished run resumes from ``work``; a finished ``out`` with the same settings is
    copied to ``work`` (its images hard-linked) and resumes the same way; it stays where it is, and
    usable, until the finished run replaces it."""
    settings = _settings_of(config)
    if force:
        shutil.rmtree(work, ignore_errors=True)
        if out.exists() and any(out.iterdir()):
            shutil.rmtree(out)
    if work.exists() and not (work / STATE_DIR / CONFIG_FILE).is_file():
        shutil.rmtree(work)  # killed before it wrote its settings: nothing to resume
    if work.exists():
        _check_settings(work, settings, unfinished=True)
    if out.exists() and any(out.iterdir()):
        _check_settings(out, settings, unfinished=False)
        if not work.exists():
            _stage_copy(out, work)
    (work / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    (work / STATE_DIR).mkdir(exist_ok=True)
    _remove_temp_files(work)  # left by a killed run
    write_json_atomic(work / STATE_DIR / CONFIG_FILE, settings, indent=1)
    journal = work / STATE_DIR / JOURNAL_FILE
    _end_at_a_full_line(journal)
    return _read_journal(journal)


def _stage_copy(out: Path, work: Path) -> None:
    """Copy a finished dataset into the staging folder: images as hard links (every write replaces
    a file by rename, so ``out``'s files are never changed), everything else as copies (the journal
    is appended to in place). Where links are not possible the images are copied."""
    def link_or_copy(src: str, dst: str) -> None:
        if Path(src).parent.name == IMAGES_DIR:
            try:
                os.link(src, dst)
                return
            except OSError:
                pass
        shutil.copy2(src, dst)

    partial = work.with_name(work.name + ".copying")
    shutil.rmtree(partial, ignore_errors=True)
    from core.data.datasets import META_FILE

    # without dataset.json: a staging folder must not be listed as a dataset (it is written at the end)
    shutil.copytree(out, partial, copy_function=link_or_copy,
                    ignore=lambda folder, names: [META_FILE] if Path(folder) == out else [])
    partial.rename(work)


def _end_at_a_full_line(path: Path) -> None:
    """Cut a journal line left unfinished by a kill or a full disk, so the next entry starts a line."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        f.truncate(f.read().rfind(b"\n") + 1)


def _remove_temp_files(work: Path) -> None:
    """Delete the temp files of a failed or killed run (every file is written to a temp name first:
    ``.<name>.tmp-<pid>`` beside it, see :func:`core.files.temp_path`; the patterns also match the
    ``<name>.tmp`` / ``<name>.tmp-<pid>`` names of older versions)."""
    for pattern in (f"{IMAGES_DIR}/*.tmp-*", "*.tmp*", f"{STATE_DIR}/*.tmp*"):
        for tmp in work.glob(pattern):
            tmp.unlink(missing_ok=True)


def _publish(work: Path, out: Path) -> None:
    """Rename the finished staging folder to ``out``, replacing what is there."""
    from core.data.datasets import META_FILE

    (work / STATE_DIR / META_FILE).replace(work / META_FILE)
    old = None
    if out.exists():
        if any(out.iterdir()):
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
        else:
            out.rmdir()
    work.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _human_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _out_of_space_message(error: OSError, out: Path, work: Path, writing: Path, state: dict, size: int) -> str:
    """Name the folder that is full, its free space, the space still needed and what to do."""
    cause, action = STORAGE_ERRORS[error.errno]
    cache_folder, finished, images, left = state["cache"], state["finished"], state["images"], state["left"]
    pngs = [p.stat().st_size for p in (work / IMAGES_DIR).glob("*.png")] if work.is_dir() else []
    per_image = sum(pngs) / len(pngs) if pngs else size * size  # PNG bytes per image, or the raw size
    per_file = images / finished if finished else 1.0  # images per source file (patch mode: more)
    cache_bytes = (images + left * per_file) * size * size
    images_bytes = left * per_file * (per_image + 1000)  # + ~1 KB of journal and manifest per image
    in_cache = cache_folder is not None
    where = cache_folder if in_cache else out
    try:
        free = _human_bytes(shutil.disk_usage(next(p for p in (writing, where, work, out.parent) if p.exists())).free)
    except (OSError, StopIteration):
        free = "unknown space"
    if in_cache:
        need = f"about {_human_bytes(cache_bytes)} is needed for the pixel cache"
        rerun = (f"{action}, or set MEDAUG_HOME to a workspace on a disk with room; then run prepare again with "
                 f"the same settings: the {finished} prepared file(s) in {work} are reused")
    else:
        need = (f"about {_human_bytes(images_bytes + cache_bytes)} more is needed ({left} file(s) left to "
                f"prepare, then a {_human_bytes(cache_bytes)} pixel cache in the workspace)")
        rerun = (f"{action}, then run prepare again with the same settings: it resumes from the {finished} "
                 f"finished file(s) kept in {work}; or choose another --out")
    what = "pixel cache" if in_cache else "dataset"
    return (f"{where}: cannot write the {what}: {cause}; writing {writing} failed with '{error.strerror or error}'. "
            f"{free} free there; {need}. {rerun}.")


def usable_cores() -> int:
    """CPU cores this process may run on (respects taskset / container CPU sets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _rate_message(done: int, total: int, t0: float, reused: int) -> str:
    elapsed = time.perf_counter() - t0
    worked = done - reused
    rate = worked / elapsed if elapsed > 0 and worked > 0 else 0.0
    eta = (total - done) / rate if rate > 0 else float("nan")
    eta_text = f"ETA {eta:.0f} s" if np.isfinite(eta) else "ETA --"
    return f"{rate:.1f} files/s · {eta_text}" + (f" · {reused} reused" if reused else "")


def prepare(config: PrepareConfig, on_progress: Progress | None = None, force: bool = False) -> PrepareResult:
    """Run the whole pipeline (see the module docstring) and return the written dataset.

    Raises ValueError for settings or sources it cannot use, and :class:`OutOfSpaceError` (an
    OSError) as soon as the output cannot be written; the same call then resumes."""
    t0 = time.perf_counter()
    out = Path(config.out).expanduser().resolve()
    root = Path(config.root).expanduser().resolve()
    if out == root or root in out.parents:
        raise ValueError(f"{out}: --out must not be --root or inside it (the source is never modified, and a "
                         "folder source would pick the output up as a class); choose a folder elsewhere.")
    if os.path.ismount(out):
        raise ValueError(f"{out}: --out is a mount point, and the dataset is built beside --out and renamed into "
                         f"place; choose a folder inside it, e.g. {out / 'dataset'}.")
    items, problems, source_facts = scan_source(config)
    planned, label_problems = plan_labels(items, config.label_mode)
    problems += label_problems
    work = staging_dir(out)
    # what is being written, and counts (set once the journal is read) for the message if the disk fills up
    state = {"writing": work, "cache": None, "finished": None, "images": 0, "left": None}
    try:
        return _run(config, on_progress, force, t0, out, root, work, planned, problems, source_facts, state)
    except BaseException as e:
        if work.is_dir() and (state["finished"] is not None or is_storage_error(e)):  # our run's temp files
            _remove_temp_files(work)
        if is_storage_error(e):
            writing = Path(e.filename) if isinstance(e.filename, str) else state["writing"]
            if state["finished"] is None:  # failed while opening the folder
                journal = _read_journal(work / STATE_DIR / JOURNAL_FILE)
                state.update(finished=len(journal), left=max(0, len(planned) - len(journal)),
                             images=sum(len(entry.get("records", [])) for entry in journal.values()))
            raise OutOfSpaceError(_out_of_space_message(e, out, work, writing, state, config.size)) from e
        raise


def _run(config: PrepareConfig, on_progress: Progress | None, force: bool, t0: float, out: Path, root: Path,
         work: Path, planned: list, problems: list[LoadProblem], source_facts: dict, state: dict) -> PrepareResult:
    """:func:`prepare` after the scan, in the staging folder ``work``; ``state`` tells the caller
    what was being written and how far the run got, for the message if the disk fills up."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    from core.data.cache import cache_dir, pixel_cache
    from core.data.datasets import META_FILE

    report = on_progress or (lambda done, total, msg: None)
    done = _open_output(config, out, work, force)

    settings = {**_settings_of(config), "source": config.source}
    tasks, results = [], {}
    for it, label, labels in planned:
        sig = _signature(it.file)
        entry = done.get(it.image_id)
        if entry and entry.get("sig") == sig and all((work / r["path"]).is_file() for r in entry["records"]):
            results[it.image_id] = entry
            continue
        rel = _relative(it.file, root)
        tasks.append({"item": asdict(it), "label": label, "labels": labels, "sig": sig, "rel": rel})
    reused = len(results)
    total = len(planned)
    state.update(finished=reused, images=sum(len(r["records"]) for r in results.values()), left=len(tasks))
    report(reused, total, f"Preparing {total} file(s) at {config.size} px ({reused} already done)")

    t_work = time.perf_counter()

    def finish(result: dict) -> None:
        results[result["key"]] = result
        if result["records"]:  # only finished files are journaled; failures are retried next time
            state["writing"] = journal_path
            journal.write(json.dumps(result) + "\n")
            journal.flush()
            state["writing"] = work / IMAGES_DIR  # workers write the PNGs (their errors name the file)
            state["finished"] += 1
            state["images"] += len(result["records"])
        state["left"] -= 1
        report(len(results), total, _rate_message(len(results), total, t_work, reused))

    images_dir = str(work / IMAGES_DIR)
    workers = config.workers or usable_cores()
    workers = max(1, min(workers, len(tasks)))
    journal_path = state["writing"] = work / STATE_DIR / JOURNAL_FILE
    with open(journal_path, "a") as journal:
        state["writing"] = work / IMAGES_DIR
        if workers == 1:
            for task in tasks:
                finish(_prepare_chunk([task], images_dir, settings)[0])
        else:
            # spawn: safe under the threaded Streamlit server; small chunks keep the progress smooth.
            # Workers die with this process (kill -9 included): see _die_with_parent.
            chunk = max(1, min(4, len(tasks) // (workers * 16)))
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_die_with_parent,
                                     initargs=(os.getpid(),)) as pool:
                futures = [pool.submit(_prepare_chunk, tasks[i:i + chunk], images_dir, settings)
                           for i in range(0, len(tasks), chunk)]
                try:
                    for f in as_completed(futures):
                        for result in f.result():
                            finish(result)
                except BaseException:
                    # stop at once: chunks not started are dropped, running ones end (a few files each)
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise

    ordered = [results[it.image_id] for it, _, _ in planned if it.image_id in results]
    for r in ordered:
        problems += [LoadProblem(**p) for p in r["problems"]]
    records = [rec for r in ordered for rec in r["records"]]
    state["writing"] = work
    if not records:
        write_report(problems, work / REPORT_FILE)
        raise ValueError(f"{root}: no usable images ({len(problems)} problem(s)); see {work / REPORT_FILE}.")
    ds = _write(work, records, config, source_facts, problems, name=out.name)
    _remove_orphans(work, ds)
    # dataset.json marks a folder as a dataset (pages list */dataset.json): keep it out of sight until _publish
    (work / META_FILE).replace(work / STATE_DIR / META_FILE)
    report(total, total, f"Caching {len(records)} images at {config.size} px")
    state["writing"] = state["cache"] = cache_dir(ds)
    cache = pixel_cache(ds, config.size)
    state["writing"], state["cache"] = out, None
    _publish(work, out)
    return PrepareResult(dataset=replace(ds, root=out), problems=problems, report_path=out / REPORT_FILE,
                         prepared=len(tasks), reused=reused, seconds=round(time.perf_counter() - t0, 2),
                         cache_path=cache.path)


def _relative(file: str, root: Path) -> str:
    try:
        return Path(file).resolve().relative_to(root).as_posix()
    except ValueError:
        return str(file)


def _assign_splits(df, config: PrepareConfig):
    """Keep the source's splits; split studies without one (and carve val out of train when
    the source has only train/test) by study, stratified by class."""
    import pandas as pd

    from core.data.splits import DEFAULT_FRACTIONS, study_split

    split = df["split"].astype(object).where(df["split"].notna(), None)
    missing = split.isna()
    if missing.any():
        split[missing] = study_split(df[missing], DEFAULT_FRACTIONS, seed=config.seed)
    has_val = (split == "val").any()
    train = split == "train"
    if not has_val and config.val_fraction > 0 and train.sum() > 1:
        fractions = {"train": 1.0 - config.val_fraction, "val": config.val_fraction}
        split[train] = study_split(df[train], fractions, seed=config.seed)
    return pd.Series(split, index=df.index, dtype=str)


def dataset_card(records: list[dict], manifest, problems: list[LoadProblem], classes: list[str]) -> dict:
    """What a reader should know first: counts per class and split, source image sizes, bit
    depths and photometric mix, boxes per class, and how many files were left out."""
    import pandas as pd

    info = pd.DataFrame(records)
    per_source = info.drop_duplicates("source_file")
    table = pd.crosstab(manifest["label"], manifest["split"]).reindex(index=classes, columns=["train", "val", "test"],
                                                                       fill_value=0)

    def stats(col: str) -> dict:
        v = per_source[col].astype(float)
        return {"min": int(v.min()), "median": float(v.median()), "max": int(v.max())}

    boxes = Counter(b["label"] for bs in manifest["boxes"] for b in bs)
    return {
        "images": len(manifest),
        "source_files": len(per_source),
        "per_class_split": {c: {s: int(table.loc[c, s]) for s in table.columns} for c in classes},
        "source_width": stats("orig_width"),
        "source_height": stats("orig_height"),
        "bit_depth": {str(k): int(v) for k, v in per_source["bits"].value_counts().sort_index().items()},
        "photometric": {str(k): int(v) for k, v in per_source["photometric"].value_counts().items()},
        "transfer_syntax": {str(k): int(v) for k, v in per_source["transfer_syntax"].value_counts().items()},
        "boxes_per_class": {c: int(boxes.get(c, 0)) for c in classes if boxes.get(c, 0)},
        "problems_by_stage": dict(Counter(p.stage for p in problems)),
        "files_skipped": sum(p.outcome == "file skipped" for p in problems),
    }


def _write(out: Path, records: list[dict], config: PrepareConfig, facts: dict, problems: list[LoadProblem],
           name: str):
    import pandas as pd

    from core.data.datasets import write_dataset
    from core.data.manifest import COLUMNS

    df = pd.DataFrame(records)
    df["split"] = _assign_splits(df, config)
    counts = df["label"].value_counts()
    normal = [c for c in counts.index if c.lower() in ("no finding", "normal")]
    classes = normal + [c for c in counts.index if c not in normal]  # normals first, then by count
    synthetic = bool(facts.get("synthetic")) or bool(df["synthetic"].any())
    meta = {
        "name": name, "kind": facts["kind"], "synthetic": synthetic, "label_mode": config.label_mode,
        "classes": classes,
        "description": (f"Prepared from a {facts['description']} at {config.root} "
                        f"({config.label_mode}-label{' patches' if config.label_mode == 'patch' else ''}, "
                        f"{config.size} px letterboxed)" + (". Synthetic phantom data, not patient data."
                                                              if synthetic else ".")),
        "source": {"kind": config.source, "root": str(Path(config.root).expanduser().resolve())},
        "prepare": {k: v for k, v in asdict(config).items() if k not in ("root", "out", "workers")},
        "card": dataset_card(records, df, problems, classes),
    }
    write_report(problems, out / REPORT_FILE)
    cols = ["image_id", "source_file", "orig_width", "orig_height", "bits", "photometric", "transfer_syntax"]
    with atomic_path(out / SOURCES_FILE) as tmp:
        df[cols].to_csv(tmp, index=False)
    return write_dataset(out, df[list(COLUMNS)], meta)


def _remove_orphans(out: Path, ds) -> None:
    """Delete PNGs of earlier runs that the manifest no longer lists (e.g. a source file removed)."""
    keep = set(ds.manifest["path"])
    for png in (out / IMAGES_DIR).glob("*.png"):
        if f"{IMAGES_DIR}/{png.name}" not in keep:
            png.unlink(missing_ok=True)
