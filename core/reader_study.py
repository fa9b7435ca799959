"""Reader studies (a visual Turing test): can a person tell real X-rays from generated ones?

A study mixes real images of chosen classes with images from one or more generators (GAN,
diffusion or classic augmentation sets: manifest sources ``gan:``, ``diffusion:``, ``classic:``),
blinded, and each reader answers "real" or "synthetic" per image, optionally with the class they
see and a confidence from 1 to 5.

Folder ``<workspace>/reader-studies/<study id>/`` (built beside it and renamed into place):
    study.json           what the reading page needs: config, classes, the blinded tokens. No ids.
    images/<token>.png   every image re-encoded (no metadata) at one common size under a random token
    key.json             token -> truth, class, generator, original image id and path. Read only to score.
    readers/<name>.jsonl one JSON line per answer, appended and fsynced (last answer per image wins)

Design: by default every generator's images are paired with as many real images of the same classes
(its "arm"), so the study is half real, half synthetic overall and within each generator's arm; then
chance is 50% for any answering habit (always "real" scores 50% too), and the class mix is no tell.

Blinding: file names, ids and sources never reach the reader; images are re-encoded at one size
(the smallest among the chosen images, so a generator's lower resolution is no tell), real images
come from the real dataset's TEST split by default (they were never shown to a generator, and a
reader's memory of training images cannot help), and each reader sees the images in an order of
their own, fixed by the study seed and the name (order effects such as fatigue do not fall on the
same images for every reader; a reload continues in the same order).

Scoring (:func:`score_answers`, pure): per reader and per reader x generator, accuracy with a
95% Wilson interval and an exact two-sided binomial test against 50%, sensitivity (synthetic
called synthetic) and specificity (real called real) with Wilson intervals, balanced accuracy,
class agreement on synthetic images (the class the reader saw == the class the generator was
asked for), mean confidence and median seconds per image. A generator's row scores its images with
its real partners (its arm). Chance is 50% only when the images answered are half real, half
synthetic, which the default design gives; an unbalanced row says so in its verdict.

The pooled row ("All readers") counts every reader's answers as independent, which ignores that
readers differ: its interval is too narrow when they disagree. Read it as a summary and the
per-reader rows as the evidence.

Wilson rather than Wald (which under-covers at n ~ 40, worst near 0 or 1) or Clopper-Pearson
(which over-covers: 96-99% at n = 40, wider than it needs to be); tests/test_reader_study.py
checks the interval and the p-value against scipy and the interval's coverage by simulation.

mlflow only through :mod:`core.tracking` (:func:`log_study`).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
import shutil
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from core.files import atomic_path, file_lock, write_json_atomic

FORMAT = "medaug-reader-study/1"
STUDY_FILE, KEY_FILE, READERS_DIR, IMAGES_DIR = "study.json", "key.json", "readers", "images"
ANSWERS = ("real", "synthetic")
SPLITS = ("test", "val", "train", "all")
MAX_ITEMS = 5000            # images in one study
MAX_NAME = 60               # characters in a reader's name
Z95 = 1.959963984540054     # the 97.5% normal quantile
POOLED = "All readers (pooled)"


class ReaderStudyError(ValueError):
    """A study cannot be made, read or answered; the message names the field or file and says what to do."""


@dataclass(frozen=True)
class ReaderStudy:
    """An opened study folder. ``meta`` is study.json (no answer key in it)."""

    root: Path
    meta: dict

    @property
    def id(self) -> str:
        return self.meta["id"]

    @property
    def tokens(self) -> list[str]:
        return list(self.meta["tokens"])

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def label(self) -> str:
        c = self.meta["config"]
        return (f"{self.id} · {len(self.tokens)} images · {len(c['synthetic_sources'])} synthetic set(s) · "
                f"{self.meta['created'][:16].replace('T', ' ')}")

    def image_path(self, token: str) -> Path:
        if token not in set(self.meta["tokens"]):
            raise ReaderStudyError(f"token: not an image of study {self.id}; take tokens from progress().")
        return self.root / IMAGES_DIR / f"{token}.png"


# --- statistics ---------------------------------------------------------------------------------

def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion k/n (95% by default); (nan, nan) for n = 0."""
    if n <= 0:
        return float("nan"), float("nan")
    p = k / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, centre - half), min(1.0, centre + half)


def _log_pmf(k: int, n: int, p: float) -> float:
    if p in (0.0, 1.0):
        return 0.0 if k == (n if p == 1.0 else 0) else -math.inf
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * math.log(p) + (n - k) * math.log1p(-p)


def binomial_p_value(k: int, n: int, p: float = 0.5) -> float:
    """Exact two-sided binomial test of k successes in n against ``p``: the probability, under p, of
    an outcome no more likely than k (the "minlike" rule scipy.stats.binomtest uses); nan for n = 0."""
    if n <= 0:
        return float("nan")
    logs = [_log_pmf(i, n, p) for i in range(n + 1)]
    cut = logs[k] + 1e-7          # pmf(i) <= pmf(k) * (1 + 1e-7): ties count, as in scipy
    top = max(logs)
    total = sum(math.exp(v - top) for v in logs if v <= cut)
    return min(1.0, total * math.exp(top))


def proportion(k: int, n: int) -> dict:
    """k of n with its Wilson 95% interval: {"k", "n", "value", "lo", "hi"}."""
    lo, hi = wilson_interval(k, n)
    return {"k": int(k), "n": int(n), "value": k / n if n else float("nan"), "lo": lo, "hi": hi}


# --- making a study -----------------------------------------------------------------------------

def studies_dir() -> Path:
    from core.workspace import workspace_dir

    return workspace_dir("reader-studies")


def _spread(capacity: dict[str, int], n: int) -> dict[str, int]:
    """``n`` items over classes as evenly as their ``capacity`` allows (water-filling, classes in order)."""
    take = {c: 0 for c in capacity}
    left = n
    while left > 0:
        open_ = [c for c in capacity if take[c] < capacity[c]]
        if not open_:
            break
        for c in open_:
            if left == 0:
                break
            take[c] += 1
            left -= 1
    return take


def _check_count(name: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= int(value) <= high:
        raise ReaderStudyError(f"{name}={value!r}: give a whole number from {low} to {high}.")
    return int(value)


def _load(path, field: str):
    from core.data.datasets import DatasetError, load_dataset

    if not path or not (Path(path).expanduser() / "dataset.json").is_file():
        raise ReaderStudyError(f"{field}: {path!s} is not a dataset folder (no dataset.json); pick a folder made by "
                               f"`python -m core phantom`/`prepare` (real) or `generate`/`balance` (synthetic).")
    try:
        return load_dataset(path)
    except (DatasetError, ValueError) as e:
        raise ReaderStudyError(f"{field}: {e}") from None


def generator_names(ds) -> dict[str, str]:
    """Readable names of a synthetic folder's generators: source -> "dcgan Osteophytes · gan:1a2b3c4d"."""
    from core.data.manifest import is_real_source

    records = ds.meta.get("generator") if isinstance(ds.meta.get("generator"), list) else []
    out = {}
    for source in dict.fromkeys(s for s in ds.manifest["source"] if not is_real_source(s)):
        run = source.split(":", 1)[1]
        rec = next((r for r in records if isinstance(r, dict) and str(r.get("run_id", "")) == run), {})
        what = " ".join(str(x) for x in (rec.get("variant"), rec.get("class") or ("conditional" if rec else None)) if x)
        short = f"{source.split(':', 1)[0]}:{run[:8]}"
        out[source] = f"{what} · {short}" if what else short
    return out


def create_study(real_data, synthetic_sources: Sequence, classes: Sequence[str] | None = None,
                 n_real: int | None = None, n_synthetic_per_source: int = 20, seed: int = 0, out=None, *,
                 real_split: str = "test", size: int | None = None) -> ReaderStudy:
    """Draw, blind and write a study (see the module docstring); returns it opened.

    ``real_data``: a dataset folder whose real rows (:func:`core.data.manifest.is_real_source`) of
    ``real_split`` ("test" by default; "all" for every split) are the real images.
    ``synthetic_sources``: synthetic dataset folders; every generator (manifest source) in them gives
    ``n_synthetic_per_source`` images. ``classes``: the classes to show (default: every class the
    synthetic sets hold); each generator's images are spread evenly over them. ``n_real=None`` (default)
    pairs each generator's images with as many real images of the same classes (matched arms, see the
    module docstring); a number draws that many real images spread evenly over the classes instead
    (then a generator's rows are scored against every real image, and their chance is not 50%).
    ``size``: the side every image is
    shown at (default: the smallest side among the chosen images)."""
    from PIL import Image

    from core.data.io import read_image, to_uint8
    from core.data.manifest import real_rows

    if real_split not in SPLITS:
        raise ReaderStudyError(f"real_split={real_split!r}: choose one of {', '.join(SPLITS)}.")
    seed = _check_count("seed", seed, 0, 2**32 - 1)
    n_syn = _check_count("n_synthetic_per_source", n_synthetic_per_source, 1, MAX_ITEMS)
    if isinstance(synthetic_sources, (str, Path)) or not synthetic_sources:
        raise ReaderStudyError("synthetic_sources: give a list of one or more synthetic dataset folders "
                               "(written by `python -m core generate` or the balance job).")
    real = _load(real_data, "real_data")
    rmask = real_rows(real.manifest)
    if not rmask.any():
        raise ReaderStudyError(f"real_data: {real.root} holds no real images (every row is generated); pick the "
                               f"dataset the generators were trained on.")
    synthetic = [_load(p, "synthetic_sources") for p in synthetic_sources]
    pools: dict[str, pd.DataFrame] = {}      # generator source -> its rows (with the folder)
    names: dict[str, str] = {}
    for ds in synthetic:
        rows = ds.manifest[~real_rows(ds.manifest)].assign(_root=str(ds.root), _dataset=ds.id)
        if rows.empty:
            raise ReaderStudyError(f"synthetic_sources: {ds.root} holds no generated images (no row whose source "
                                   f"starts with gan:, diffusion: or classic:); pick a folder written by "
                                   f"`python -m core generate` or the balance job.")
        names |= generator_names(ds)
        for source, part in rows.groupby("source", sort=False):
            pools[source] = pd.concat([pools[source], part]) if source in pools else part
    offered = list(dict.fromkeys(c for part in pools.values() for c in part["label"]))
    classes = list(dict.fromkeys(classes)) if classes else offered
    real_pool = real.manifest[rmask].assign(_root=str(real.root), _dataset=real.id)
    if real_split != "all":
        real_pool = real_pool[real_pool["split"] == real_split]
    for c in classes:
        if c not in offered:
            raise ReaderStudyError(f"classes: no synthetic set holds {c!r} (they hold {', '.join(offered)}); drop it "
                                   f"or add a set generated for it.")
        if not (real_pool["label"] == c).any():
            raise ReaderStudyError(f"classes: {c!r} has no real images in the {real_split} split of {real.root}; drop "
                                   f"it or set real_split to 'all'.")
    rng = np.random.default_rng(seed)
    chosen = []
    for source, part in pools.items():
        part = part[part["label"].isin(classes)]
        if part.empty:
            raise ReaderStudyError(f"synthetic_sources: generator {names.get(source, source)} holds none of the "
                                   f"classes {', '.join(classes)}; drop the set or add one of its classes.")
        chosen.append(_draw(part, n_syn, classes, rng, "n_synthetic_per_source",
                            f"generator {names.get(source, source)}").assign(_truth="synthetic", _generator=source,
                                                                             _arm=source))
    n_synthetic = sum(len(c) for c in chosen)
    if n_real is None:      # matched arms: each generator's images get as many real ones, of the same classes
        chosen += _matched_real(real_pool, chosen, rng, f"the {real_split} split of {real.root}", names)
        n_real = n_synthetic
    else:
        n_real = _check_count("n_real", n_real, 1, MAX_ITEMS)
        chosen.append(_draw(real_pool, n_real, classes, rng, "n_real", f"the {real_split} split of {real.root}")
                      .assign(_truth="real", _generator="real", _arm=""))
    items = pd.concat(chosen, ignore_index=True)
    if len(items) > MAX_ITEMS:
        raise ReaderStudyError(f"n_real + n_synthetic_per_source x generators = {len(items)} images; a study holds at "
                               f"most {MAX_ITEMS}: lower the counts.")
    items = items.iloc[rng.permutation(len(items))].reset_index(drop=True)
    side = size or int(min(max(w, h) for w, h in zip(items["width"], items["height"])))
    side = _check_count("size", side, 16, 2048)

    root = Path(out).expanduser() if out else studies_dir() / _new_id()
    if root.exists() and any(root.iterdir()):
        raise ReaderStudyError(f"out: {root} already exists and is not empty; choose another folder.")
    study_id = root.name
    staging = root.with_name(f".{root.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / IMAGES_DIR).mkdir(parents=True)
    (staging / READERS_DIR).mkdir()
    key, tokens = [], []
    try:
        for row in items.to_dict("records"):
            token = secrets.token_hex(8)
            path = Path(row["_root"]) / row["path"]
            _write_blinded(to_uint8(read_image(path)), side, staging / IMAGES_DIR / f"{token}.png", Image)
            tokens.append(token)
            key.append({"token": token, "truth": row["_truth"], "class": row["label"], "generator": row["_generator"],
                        "generator_name": "real" if row["_truth"] == "real" else names.get(row["_generator"],
                                                                                            row["_generator"]),
                        "arm": row["_arm"], "image_id": row["image_id"], "dataset": row["_dataset"],
                        "path": str(path)})
        config = {"real_data": str(real.root), "real_dataset": real.id, "real_split": real_split,
                  "synthetic_sources": [str(d.root) for d in synthetic], "classes": classes, "n_real": n_real,
                  "n_synthetic_per_source": n_syn, "seed": seed, "size": side}
        meta = {"format": FORMAT, "id": study_id, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "config": config, "classes": classes, "tokens": tokens, "n_real": n_real, "n_synthetic": n_synthetic,
                "generators": len(pools)}
        write_json_atomic(staging / KEY_FILE, {"study": study_id, "generators": {s: names.get(s, s) for s in pools},
                                               "items": key})
        write_json_atomic(staging / STUDY_FILE, meta)
        root.parent.mkdir(parents=True, exist_ok=True)
        if root.exists():
            root.rmdir()
        staging.rename(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ReaderStudy(root.resolve(), meta)


def _new_id() -> str:
    return f"rs-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def _draw(pool: pd.DataFrame, n: int, classes: list[str], rng, field: str, where: str) -> pd.DataFrame:
    """``n`` rows of ``pool`` spread evenly over ``classes``, without replacement."""
    capacity = {c: int((pool["label"] == c).sum()) for c in classes}
    if sum(capacity.values()) < n:
        have = ", ".join(f"{c}: {k}" for c, k in capacity.items())
        raise ReaderStudyError(f"{field}={n}: {where} has only {sum(capacity.values())} images of the chosen classes "
                               f"({have}); ask for at most that many.")
    parts = []
    for c, k in _spread(capacity, n).items():
        if k:
            rows = pool[pool["label"] == c]
            parts.append(rows.iloc[np.sort(rng.choice(len(rows), size=k, replace=False))])
    return pd.concat(parts)


def _matched_real(pool: pd.DataFrame, synthetic: list[pd.DataFrame], rng, where: str,
                  names: dict[str, str]) -> list[pd.DataFrame]:
    """For each generator's drawn images, as many real images of the same classes (no image twice), marked
    with that generator as their arm: per generator, its images against its real partners are half and half
    with the same class mix, so chance is 50% there too and the class is no tell."""
    left = pool.copy()
    out = []
    for syn in synthetic:
        source = syn["_generator"].iloc[0]
        parts = []
        for c, k in syn["label"].value_counts(sort=False).items():
            rows = left[left["label"] == c]
            if len(rows) < k:
                raise ReaderStudyError(
                    f"n_synthetic_per_source: pairing generator {names.get(source, source)}'s {k} {c!r} image(s) "
                    f"with real ones of the same class needs {k} more real {c!r} image(s), but {where} has "
                    f"{len(rows)} left; lower n_synthetic_per_source, set real_split to 'all', or give n_real.")
            pick = rows.iloc[np.sort(rng.choice(len(rows), size=int(k), replace=False))]
            left = left.drop(index=pick.index)
            parts.append(pick)
        out.append(pd.concat(parts).assign(_truth="real", _generator="real", _arm=source))
    return out


def _write_blinded(pixels: np.ndarray, side: int, path: Path, Image) -> None:
    """Letterbox to a square, resize to ``side`` and save as a plain 8-bit PNG (no text chunks)."""
    h, w = pixels.shape
    if h != w:
        square = np.zeros((max(h, w),) * 2, np.uint8)
        square[(max(h, w) - h) // 2:(max(h, w) - h) // 2 + h, (max(h, w) - w) // 2:(max(h, w) - w) // 2 + w] = pixels
        pixels = square
    im = Image.fromarray(pixels, mode="L")
    if im.size[0] != side:
        im = im.resize((side, side), Image.Resampling.LANCZOS)
    im.save(path, format="PNG")


# --- opening ------------------------------------------------------------------------------------

def open_study(study) -> ReaderStudy:
    """A study from its folder, its id (under the workspace's reader-studies/) or itself."""
    if isinstance(study, ReaderStudy):
        return study
    root = Path(study).expanduser()
    if not (root / STUDY_FILE).is_file() and not root.is_absolute() and len(root.parts) == 1:
        root = studies_dir() / root
    try:
        meta = json.loads((root / STUDY_FILE).read_text())
    except FileNotFoundError:
        raise ReaderStudyError(f"study: {root} holds no {STUDY_FILE}; create the study first (Reader study page or "
                               f"`python -m core reader-study create`).") from None
    except json.JSONDecodeError as e:
        raise ReaderStudyError(f"{root / STUDY_FILE}: invalid JSON ({e}); create the study again.") from None
    if meta.get("format") != FORMAT:
        raise ReaderStudyError(f"{root / STUDY_FILE}: format {meta.get('format')!r} is not {FORMAT!r}; create the "
                               f"study again.")
    return ReaderStudy(root.resolve(), meta)


def list_studies() -> list[ReaderStudy]:
    """The studies in the workspace, newest first (unreadable folders are left out)."""
    found = []
    for path in studies_dir().glob(f"*/{STUDY_FILE}"):
        try:
            found.append(open_study(path.parent))
        except ReaderStudyError:
            continue
    return sorted(found, key=lambda s: s.meta.get("created", ""), reverse=True)


# --- readers ------------------------------------------------------------------------------------

def check_reader(name) -> str:
    """The reader's name, stripped; refused when empty, too long or holding control characters."""
    text = unicodedata.normalize("NFC", str(name or "")).strip()
    if not text:
        raise ReaderStudyError("reader: enter your name (or initials) so your answers are kept apart from others'.")
    if len(text) > MAX_NAME:
        raise ReaderStudyError(f"reader: {len(text)} characters; use at most {MAX_NAME} (initials will do).")
    if any(unicodedata.category(ch).startswith("C") for ch in text):
        raise ReaderStudyError("reader: the name holds control characters; type it with letters, digits and spaces.")
    return text


def reader_file_name(name: str) -> str:
    """A safe, distinct file name for a reader: a readable slug plus 8 hex digits of the exact name's hash
    ("Ann" and "ann", or names that slug alike, get different files)."""
    name = check_reader(name)
    slug = re.sub(r"[^a-z0-9]+", "-", unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower())
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
    return f"{slug.strip('-')[:40] or 'reader'}-{digest}.jsonl"


def reader_order(study, reader: str) -> list[str]:
    """The order this reader sees the images in: fixed by the study seed and the name."""
    study = open_study(study)
    name_key = int(hashlib.sha256(check_reader(reader).encode("utf-8")).hexdigest()[:8], 16)
    tokens = study.tokens
    perm = np.random.default_rng([int(study.meta["config"]["seed"]), name_key]).permutation(len(tokens))
    return [tokens[i] for i in perm]


def record_answer(study, reader: str, token: str, answer: str, class_name: str | None = None,
                  confidence: int | None = None, seconds: float | None = None) -> dict:
    """Append one answer to the reader's file (locked, flushed and fsynced, so a reload or a kill keeps
    it); answering an image again replaces the earlier answer when scored. Returns the record."""
    study = open_study(study)
    name = check_reader(reader)
    if token not in set(study.tokens):
        raise ReaderStudyError(f"token: not an image of study {study.id}; take tokens from progress().")
    if answer not in ANSWERS:
        raise ReaderStudyError(f"answer={answer!r}: answer 'real' or 'synthetic'.")
    if class_name is not None and class_name not in study.classes:
        raise ReaderStudyError(f"class_name={class_name!r}: choose one of {', '.join(study.classes)}, or None.")
    if confidence is not None:
        confidence = _check_count("confidence", confidence, 1, 5)
    record = {"reader": name, "token": token, "answer": answer, "class": class_name, "confidence": confidence,
              "seconds": None if seconds is None else round(float(seconds), 3),
              "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}
    path = study.root / READERS_DIR / reader_file_name(name)
    path.parent.mkdir(exist_ok=True)
    with file_lock(path.with_name(path.name + ".lock")):
        with open(path, "ab") as f:
            if f.tell() and _last_byte(path) != b"\n":   # a torn line from a killed writer: start a new one
                f.write(b"\n")
            f.write((json.dumps(record) + "\n").encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
    return record


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


def _read_lines(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue   # a line torn by a kill mid-write: that answer was never acknowledged
        if isinstance(record, dict) and record.get("answer") in ANSWERS and "token" in record:
            out.append(record)
    return out


ANSWER_COLUMNS = ("reader", "token", "answer", "class", "confidence", "seconds", "time")


def answers_table(study, reader: str | None = None) -> pd.DataFrame:
    """Every reader's (or one reader's) last answer per image: :data:`ANSWER_COLUMNS`."""
    study = open_study(study)
    folder = study.root / READERS_DIR
    files = [folder / reader_file_name(reader)] if reader is not None else sorted(folder.glob("*.jsonl"))
    tokens = set(study.tokens)
    records = [r for p in files if p.is_file() for r in _read_lines(p) if r["token"] in tokens]
    df = pd.DataFrame(records, columns=list(ANSWER_COLUMNS)).sort_values("time", kind="stable")   # readers in order of
    return df.drop_duplicates(["reader", "token"], keep="last").reset_index(drop=True)     # their first answer


@dataclass
class Progress:
    order: list[str]            # the reader's order of tokens
    answered: dict[str, dict]   # token -> the last answer
    next_token: str | None      # the first unanswered token in order (None: done)

    @property
    def done(self) -> int:
        return len(self.answered)

    @property
    def total(self) -> int:
        return len(self.order)

    @property
    def position(self) -> int:
        """The next token's index in ``order`` (``total`` when done)."""
        return self.order.index(self.next_token) if self.next_token else self.total


def progress(study, reader: str) -> Progress:
    """Where a reader stands, from their answers on disk (so it survives reloads and new sessions)."""
    study = open_study(study)
    order = reader_order(study, reader)
    answered = {r["token"]: r for r in answers_table(study, reader).to_dict("records")}
    return Progress(order, answered, next((t for t in order if t not in answered), None))


def readers(study) -> list[str]:
    """The study's readers, in the order of their first answer."""
    return list(dict.fromkeys(answers_table(study)["reader"]))


# --- scoring ------------------------------------------------------------------------------------

def key_table(study) -> pd.DataFrame:
    """The answer key: token, truth, class, generator, generator_name, image_id, dataset, path."""
    study = open_study(study)
    try:
        key = json.loads((study.root / KEY_FILE).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ReaderStudyError(f"{study.root / KEY_FILE}: cannot be read ({e}); without the key the study cannot "
                               f"be scored: create it again.") from None
    return pd.DataFrame(key["items"])


def _stats(rows: pd.DataFrame) -> dict:
    """The metrics of one reader (or pooled) over ``rows`` (answers joined with the key)."""
    n = len(rows)
    correct = int((rows["answer"] == rows["truth"]).sum())
    syn, real = rows[rows["truth"] == "synthetic"], rows[rows["truth"] == "real"]
    acc, sens = proportion(correct, n), proportion(int((syn["answer"] == "synthetic").sum()), len(syn))
    spec = proportion(int((real["answer"] == "real").sum()), len(real))
    with_class = syn[syn["class"].notna() & (syn["class"].astype(str) != "")]
    agree = proportion(int((with_class["class"] == with_class["truth_class"]).sum()), len(with_class))
    conf = pd.to_numeric(rows["confidence"], errors="coerce")
    secs = pd.to_numeric(rows["seconds"], errors="coerce")
    p = binomial_p_value(correct, n)
    out = {"n": n, "correct": correct, "accuracy": acc["value"], "accuracy_lo": acc["lo"], "accuracy_hi": acc["hi"],
           "p_value": p, "beat_chance": bool(n and p < 0.05 and acc["value"] > 0.5),
           "n_synthetic": sens["n"], "sensitivity": sens["value"], "sensitivity_lo": sens["lo"],
           "sensitivity_hi": sens["hi"], "n_real": spec["n"], "specificity": spec["value"],
           "specificity_lo": spec["lo"], "specificity_hi": spec["hi"],
           "balanced_accuracy": (sens["value"] + spec["value"]) / 2 if sens["n"] and spec["n"] else float("nan"),
           "n_class": agree["n"], "class_agreement": agree["value"], "class_agreement_lo": agree["lo"],
           "class_agreement_hi": agree["hi"],
           "mean_confidence": float(conf.mean()) if conf.notna().any() else float("nan"),
           "median_seconds": float(secs.median()) if secs.notna().any() else float("nan")}
    out["verdict"] = verdict(out)
    return out


def verdict(row: dict, who: str = "") -> str:
    """One plain sentence: did the reader tell real from synthetic better than chance (50%)?"""
    if not row["n"]:
        return "No answers yet."
    acc = (f"{row['correct']} of {row['n']} right ({row['accuracy']:.0%}, 95% CI {row['accuracy_lo']:.0%}–"
           f"{row['accuracy_hi']:.0%}; exact binomial p = {row['p_value']:.2g} against 50%)")
    if row["beat_chance"]:
        text = f"{who}beat chance: {acc}; the synthetic images can be told apart."
    elif row["p_value"] < 0.05:
        text = f"{who}did worse than chance: {acc}; they took synthetic images for real and real ones for synthetic."
    else:
        text = f"{who}did not beat chance: {acc}; these synthetic images passed as real for this reader."
    if abs(row["n_real"] - row["n_synthetic"]) > max(1, 0.1 * row["n"]):
        text += (f" The answered images are not half real ({row['n_real']} real, {row['n_synthetic']} synthetic), "
                 f"so chance is not 50%: read the balanced accuracy ({row['balanced_accuracy']:.0%}).")
    return text


READER_COLUMNS = ("reader", "n", "correct", "accuracy", "accuracy_lo", "accuracy_hi", "p_value", "beat_chance",
                  "n_synthetic", "sensitivity", "sensitivity_lo", "sensitivity_hi", "n_real", "specificity",
                  "specificity_lo", "specificity_hi", "balanced_accuracy", "n_class", "class_agreement",
                  "class_agreement_lo", "class_agreement_hi", "mean_confidence", "median_seconds", "verdict")


@dataclass
class Scores:
    readers: pd.DataFrame       # one row per reader (+ the pooled row with two readers or more)
    generators: pd.DataFrame    # one row per reader (and pooled) x generator: its images + its real partners
                                # (the real images drawn for it; every real image in a study with n_real given)
    answers: pd.DataFrame       # the answers joined with the key (unblinded: for MLflow, never the reading page)


def score_answers(answers: pd.DataFrame, key: pd.DataFrame) -> Scores:
    """Score answers (:data:`ANSWER_COLUMNS`; one per reader and token) against a key (:func:`key_table`)."""
    missing = ({"reader", "token", "answer"} - set(answers.columns)) | ({"token", "truth", "class", "generator"}
                                                                       - set(key.columns))
    if missing:
        raise ReaderStudyError(f"answers/key: missing column(s) {', '.join(sorted(missing))}.")
    answers = answers.drop_duplicates(["reader", "token"], keep="last")
    for col in ("class", "confidence", "seconds"):
        if col not in answers:
            answers = answers.assign(**{col: None})
    k = key.rename(columns={"class": "truth_class"})
    joined = answers.merge(k, on="token", how="inner", validate="many_to_one")
    names = dict(zip(key["generator"], key.get("generator_name", key["generator"])))
    groups = [(r, joined[joined["reader"] == r]) for r in dict.fromkeys(joined["reader"])]
    if len(groups) > 1:
        groups.append((POOLED, joined))
    reader_rows = [{"reader": r, **_stats(rows)} for r, rows in groups]
    gen_rows = []
    matched = "arm" in joined and (joined.loc[joined["truth"] == "real", "arm"].fillna("") != "").all()
    for r, rows in groups:
        real = rows[rows["truth"] == "real"]
        for g in dict.fromkeys(key.loc[key["truth"] == "synthetic", "generator"]):
            partners = real[real["arm"] == g] if matched else real     # matched arms, else every real image
            part = pd.concat([rows[rows["generator"] == g], partners])
            gen_rows.append({"reader": r, "generator": g, "generator_name": names.get(g, g), **_stats(part)})
    readers_df = pd.DataFrame(reader_rows, columns=list(READER_COLUMNS))
    gens_df = pd.DataFrame(gen_rows, columns=["reader", "generator", "generator_name", *READER_COLUMNS[1:]])
    return Scores(readers_df, gens_df, joined)


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """A readers or generators table as shown on the pages and in the HTML report: one column per
    metric with its 95% CI in brackets, percentages."""
    def ci(m: str) -> list[str]:
        return ["—" if v != v else f"{v:.0%} [{lo:.0%}, {hi:.0%}]"
                for v, lo, hi in zip(table[m], table[f"{m}_lo"], table[f"{m}_hi"])]

    out = {"reader": table["reader"]}
    if "generator_name" in table:
        out["generator"] = table["generator_name"]
    out |= {"images": table["n"], "accuracy [95% CI]": ci("accuracy"),
            "p vs 50%": [f"{p:.2g}" if p == p else "—" for p in table["p_value"]],
            "beat chance": ["yes" if b in (True, "True") else "no" for b in table["beat_chance"]],
            "sensitivity [95% CI]": ci("sensitivity"), "specificity [95% CI]": ci("specificity"),
            "class agreement [95% CI]": ci("class_agreement"),
            "mean confidence": [f"{c:.1f}" if c == c else "—" for c in table["mean_confidence"]],
            "median s/image": [f"{c:.1f}" if c == c else "—" for c in table["median_seconds"]]}
    return pd.DataFrame(out)


def score(study) -> Scores:
    """Score every reader of a study against its key."""
    return score_answers(answers_table(study), key_table(study))


# --- MLflow -------------------------------------------------------------------------------------

def _metric_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.:\- /]", "_", str(text))[:120]


def log_study(study) -> str:
    """Log the study's scores as a ``reader-study`` MLflow run: the config as params, per reader and per
    generator metrics, the tables (CSV) and key.json as artifacts. Returns the run id."""
    from core import tracking

    study = open_study(study)
    scores = score(study)
    if scores.readers.empty:
        raise ReaderStudyError(f"study {study.id}: no answers yet; read some images first.")
    config = {**study.meta["config"], "study_id": study.id, "readers": len(readers(study))}
    tags = {"medaug.out": str(study.root), "medaug.reader_study.id": study.id}
    with tracking.start_run("reader-study", config, run_name=f"reader-study {study.id}", tags=tags) as run:
        metrics = {}
        for row in scores.readers.to_dict("records"):
            who = "pooled" if row["reader"] == POOLED else _metric_name(row["reader"])
            metrics |= {f"reader/{who}/{m}": row[m] for m in ("accuracy", "sensitivity", "specificity",
                                                                "class_agreement", "p_value", "n")}
        overall = POOLED if len(scores.readers) > 1 else scores.readers["reader"].iloc[0]
        for row in scores.generators[scores.generators["reader"] == overall].to_dict("records"):
            g = _metric_name(row["generator"])
            metrics |= {f"generator/{g}/{m}": row[m] for m in ("accuracy", "sensitivity", "class_agreement")}
        run.log_metrics({k: v for k, v in metrics.items() if v == v}, step=0)
        folder = study.root / "results"      # kept beside the study: a run whose store fails uploads them later
        folder.mkdir(exist_ok=True)
        tables = {"readers": scores.readers, "generators": scores.generators, "answers": scores.answers}
        for name, table in tables.items():
            with atomic_path(folder / f"{name}.csv") as tmp:
                table.to_csv(tmp, index=False)
            run.log_artifact(folder / f"{name}.csv", "reader-study")
        run.log_artifact(study.root / KEY_FILE, "reader-study")
        run.log_artifact(study.root / STUDY_FILE, "reader-study")
        return run.run_id


def fetch_tables(run_id: str) -> dict[str, pd.DataFrame]:
    """A reader-study run's tables read back from its artifacts: {"readers", "generators"}."""
    from core import tracking

    out = {}
    for name in ("readers", "generators"):
        out[name] = pd.read_csv(tracking.download_artifact(run_id, f"reader-study/{name}.csv"))
    return out


# --- command line -------------------------------------------------------------------------------

def _cmd_create(args) -> dict:
    from core.cli import log

    study = create_study(args.real, args.synthetic, args.classes or None, args.n_real, args.n_per_source, args.seed,
                         args.out, real_split=args.split, size=args.size)
    m = study.meta
    log(f"reader study {study.id}: {m['n_real']} real + {m['n_synthetic']} synthetic images from {m['generators']} "
        f"generator(s), at {m['config']['size']} px, in {study.root}")
    return {"study": study.id, "folder": str(study.root), "images": len(study.tokens), "n_real": m["n_real"],
            "n_synthetic": m["n_synthetic"], "generators": m["generators"]}


def _cmd_score(args) -> dict:
    from core.cli import log

    study = open_study(args.study)
    scores = score(study)
    for row in scores.readers.to_dict("records"):
        log(f"{row['reader']}: {row['verdict']}")
    run_id = log_study(study) if args.log and not scores.readers.empty else None
    if run_id:
        log(f"logged as MLflow run {run_id} (kind reader-study)")
    cols = ["reader", "n", "accuracy", "accuracy_lo", "accuracy_hi", "p_value", "beat_chance", "sensitivity",
            "specificity", "class_agreement"]
    return {"study": study.id, "run_id": run_id, "readers": scores.readers[cols].to_dict("records")}


def register(sub) -> None:
    s = sub.add_parser("reader-study", help="a blinded real-vs-synthetic reader study: create it, score it",
                       description="Create a blinded reader study (a visual Turing test) from a real dataset and "
                                   "synthetic sets, or score the readers' answers (and log them to MLflow). Readers "
                                   "answer on the Reader study page.")
    cmds = s.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = cmds.add_parser("create", help="draw and blind the images")
    c.add_argument("--real", required=True, help="the real dataset folder")
    c.add_argument("--synthetic", action="append", required=True, help="a synthetic dataset folder (repeat)")
    c.add_argument("--classes", nargs="*", help="classes to show (default: all the synthetic sets hold)")
    c.add_argument("--n-real", type=int, default=None, help="real images (default: as many as synthetic)")
    c.add_argument("--n-per-source", type=int, default=20, help="images per generator (default 20)")
    c.add_argument("--split", choices=SPLITS, default="test", help="the real images' split (default test)")
    c.add_argument("--size", type=int, default=None, help="side in px every image is shown at (default: smallest)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--out", default=None, help="the study folder (default: <workspace>/reader-studies/<id>)")
    c.set_defaults(func=_cmd_create)
    sc = cmds.add_parser("score", help="score the answers; --log logs a reader-study MLflow run")
    sc.add_argument("study", help="the study folder or id")
    sc.add_argument("--log", action="store_true", help="log a reader-study run to MLflow")
    sc.set_defaults(func=_cmd_score)
