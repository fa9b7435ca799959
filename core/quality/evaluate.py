"""The quality report of one real set against one or more synthetic sets.

Synthetic sources (:func:`load_source`):
- a synthetic dataset folder (``python -m core generate`` / the balance job), read from its pixel cache;
- a GAN checkpoint (``checkpoint.pt``) or a train-gan output folder holding one: ``n_per_class``
  images of each of its classes are sampled with a fixed noise seed.
Fidelity over training (:func:`epoch_sources`): train-gan keeps only the latest checkpoint, but it
saves every epoch's fixed-noise sample grid (``grids/epoch_XXXX.png``); the grid is cut back into its
images (a conditional model's grid holds one class per row) and each epoch is scored like a set.

Every synthetic image is compared with its nearest real TRAINING image of the same class, nearest in
the extractor's feature space. Set metrics compare the synthetic set with the real training images of
the classes it covers. All images are compared at one size (``size``; default the first set's).
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from core.quality import memorization, metrics, setmetrics

Progress = Callable[[int, int, str], None]
from core.quality.report import PAIRS_DIR, REPORT_FILES  # noqa: F401 -- re-exported

PER_IMAGE_METRICS = ("ssim", "ms_ssim", "psnr", "mse", "rmse", "nrmse", "feature_distance")


@dataclass(frozen=True)
class QualityConfig:
    real: str                                  # real dataset folder (its TRAIN split is the reference)
    synthetic: tuple[str, ...] = ()            # synthetic dataset folders, checkpoint.pt files or train-gan folders
    epochs_of: str | None = None               # a train-gan folder: score its per-epoch sample grids
    extractor: str = "domain"                  # "domain" (offline default) or "inception" (local weights)
    inception_weights: str | None = None       # Inception-v3 weights file; else env / torch hub cache
    size: int | None = None                    # comparison size in px; None: the first synthetic set's
    n_per_class: int = 64                      # images sampled per class from a checkpoint
    max_images: int = 2000                     # at most this many images per set (random subset beyond)
    n_boot: int = 50                           # bootstrap resamples for the confidence intervals
    kid_subsets: int = 50                      # KID subsets
    pr_k: int = setmetrics.PR_K                # k of the k-NN precision/recall
    memorization_quantile: float = memorization.DEFAULT_QUANTILE   # flag below this share of real-real NN distances
    diversity_pairs: int = 200                 # random pairs for the within-set MS-SSIM
    encoder_epochs: int = 8                    # domain encoder training epochs (cached per dataset)
    encoder_size: int = 64                     # domain encoder input size
    pairs_shown: int = 8                       # closest synthetic/real pairs saved as images per set
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.synthetic, tuple):
            object.__setattr__(self, "synthetic", tuple(self.synthetic))
        if not self.synthetic and not self.epochs_of:
            raise ValueError("give at least one --synthetic set (folder or checkpoint) or --epochs-of RUN_DIR.")
        if self.extractor not in ("domain", "inception"):
            raise ValueError(f"extractor={self.extractor!r}: choose domain or inception.")
        if self.size is not None and not 16 <= self.size <= 1024:
            raise ValueError(f"size={self.size}: choose a comparison size between 16 and 1024 px.")
        checks = {"n_per_class": (1, 100_000), "max_images": (4, 1_000_000), "n_boot": (0, 10_000),
                  "kid_subsets": (1, 10_000), "pr_k": (1, 100), "diversity_pairs": (1, 100_000),
                  "encoder_epochs": (1, 500), "encoder_size": (32, 256), "pairs_shown": (0, 100)}
        for name, (lo, hi) in checks.items():
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise ValueError(f"{name}={value}: choose between {lo} and {hi}.")


@dataclass
class SyntheticSet:
    name: str                 # unique, readable (shown in tables and charts)
    source: str               # the folder or checkpoint it came from
    images: np.ndarray        # uint8 (N, S, S)
    labels: np.ndarray        # class name of each image
    ids: list[str]            # image ids (folder) or "<name>-<i>" (sampled)
    info: dict = field(default_factory=dict)   # run id, variant, step, epoch ...


def resize_uint8(images: np.ndarray, size: int) -> np.ndarray:
    if images.shape[1:] == (size, size):
        return images
    import torch
    from torch.nn import functional as F

    t = torch.as_tensor(np.ascontiguousarray(images)).float()[:, None]
    t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return t[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()


def _describe(info: dict) -> str:
    who = info.get("class") or ("conditional" if info.get("conditional") else "all")
    run = str(info.get("run_id") or "")[:8]
    return f"{info.get('variant', 'gan')} {who}" + (f" · {run}" if run else "")


def checkpoint_file(path: Path) -> Path | None:
    """A .pt file, or a train-gan / train-diffusion folder's; a run's best.pt (lowest fidelity KID) wins
    over its checkpoint.pt (:func:`core.generators.generator_checkpoint`)."""
    if (path.is_file() and path.suffix == ".pt") or (path.is_dir() and (path / "checkpoint.pt").is_file()):
        from core.generators import generator_checkpoint

        return generator_checkpoint(path)
    return None


def load_source(spec: str, size: int | None, n_per_class: int, seed: int,
                on_progress: Progress | None = None) -> SyntheticSet:
    """A synthetic set from a dataset folder, a checkpoint, or a train-gan folder (see the module doc)."""
    from core.data.datasets import META_FILE, load_dataset

    path = Path(spec).expanduser()
    if not path.exists():
        raise ValueError(f"--synthetic {spec}: no such file or folder; give a synthetic dataset folder, a "
                         f"checkpoint.pt or a train-gan output folder.")
    if path.is_dir() and (path / META_FILE).is_file():
        from core.data.arrays import split_arrays

        ds = load_dataset(path)
        res = size or int(ds.manifest["width"].max())
        every = split_arrays(ds, res, None, real_only=False, on_progress=on_progress)
        if len(every) == 0:
            raise ValueError(f"{path}: no readable images in this synthetic set.")
        gens = ds.meta.get("generator") or []
        info = {"kind": "folder", "synthetic": ds.synthetic, "dataset_id": ds.id,
                **({k: gens[-1].get(k) for k in ("run_id", "family", "variant", "class", "step", "resolution")}
                   if gens else {})}
        name = _describe(info) if gens else ds.name
        if not ds.synthetic:
            info["warning"] = f"{path} is not marked synthetic"
        return SyntheticSet(name, str(path.resolve()), every.images, every.labels, every.ids, info)
    ckpt = checkpoint_file(path)
    if ckpt is None:
        raise ValueError(f"--synthetic {spec}: neither a dataset folder (no {META_FILE}) nor a generator checkpoint "
                         f"(checkpoint.pt of train-gan or train-diffusion).")
    from core.generators import open_generator

    gen = open_generator(ckpt)   # a GAN or a diffusion checkpoint
    classes = list(gen.classes)
    if not classes:
        raise ValueError(f"{ckpt}: this model was trained on all classes without labels, so its images have no class; "
                         f"quality is measured per class (train with --class NAME or --conditional).")
    images, labels = [], []
    for i, c in enumerate(classes):
        images.append(gen.sample(n_per_class, c if gen.conditional else None, seed=seed + i).images)
        labels += [c] * n_per_class
        if on_progress:
            on_progress(i + 1, len(classes), f"sampling {ckpt}")
    info = {"kind": "checkpoint", "family": gen.family, "run_id": gen.meta.get("run_id"), "variant": gen.variant,
            "class": gen.class_name, "conditional": gen.conditional, "step": gen.step, "epoch": gen.epoch,
            "resolution": gen.resolution, **gen.options()}
    imgs = np.concatenate(images)
    name = _describe(info)
    return SyntheticSet(name, str(ckpt.resolve()), resize_uint8(imgs, size or gen.resolution), np.array(labels),
                        [f"{name}-{i}" for i in range(len(imgs))], info)


def run_config(run_dir: Path) -> dict:
    """The GAN config of a train-gan folder: status.json's, else the checkpoint's."""
    status = run_dir / "status.json"
    if status.is_file():
        try:
            cfg = json.loads(status.read_text()).get("config")
            if cfg:
                return cfg
        except json.JSONDecodeError:
            pass
    ckpt = run_dir / "checkpoint.pt"
    if ckpt.is_file():
        from core.generators import read_checkpoint

        return dict(read_checkpoint(ckpt)[0]["config"])
    raise ValueError(f"{run_dir}: no status.json or checkpoint.pt, so the grid layout is unknown; give a train-gan "
                     f"output folder.")


def grid_tiles(grid: np.ndarray, resolution: int, count: int, nrow: int) -> np.ndarray:
    """Cut a torchvision ``make_grid`` image (padding 2) back into its ``count`` tiles (N, R, R)."""
    step = resolution + 2
    tiles = []
    for i in range(count):
        r, c = divmod(i, nrow)
        y, x = 2 + r * step, 2 + c * step
        tile = grid[y:y + resolution, x:x + resolution]
        if tile.shape != (resolution, resolution):
            raise ValueError(f"the sample grid ({grid.shape[1]}x{grid.shape[0]} px) does not hold {count} tiles of "
                             f"{resolution} px in rows of {nrow}; it was not written by this train-gan.")
        tiles.append(tile)
    return np.stack(tiles)


def epoch_sources(run_dir: str | Path, size: int | None = None) -> list[SyntheticSet]:
    """One set per epoch grid of a train-gan folder (fixed noise, so epochs are comparable)."""
    from PIL import Image

    from core.runs import folder_grids

    run_dir = Path(run_dir).expanduser()
    grids = folder_grids(run_dir)
    if not grids:
        raise ValueError(f"--epochs-of {run_dir}: no grids/epoch_*.png here; give a train-gan output folder.")
    cfg = run_config(run_dir)
    res, count = int(cfg["resolution"]), int(cfg.get("grid_size", 64))
    classes = list(cfg.get("classes") or [])
    if cfg.get("conditional"):
        per_class = max(1, count // len(classes))
        count, nrow = per_class * len(classes), per_class
        labels = np.repeat(classes, per_class)
    else:
        if not cfg.get("class_name"):
            raise ValueError(f"{run_dir}: trained on all classes without labels; its samples have no class.")
        nrow = max(1, round(math.sqrt(count)))
        labels = np.array([cfg["class_name"]] * count)
    out = []
    for epoch, path in grids:
        grid = np.asarray(Image.open(path).convert("L"))
        tiles = resize_uint8(grid_tiles(grid, res, count, nrow), size or res)
        info = {"kind": "epoch", "epoch": epoch, "variant": cfg.get("variant"), "class": cfg.get("class_name"),
                "conditional": cfg.get("conditional")}
        out.append(SyntheticSet(f"epoch {epoch}", str(path), tiles, labels, [f"epoch{epoch}-{i}" for i in range(count)],
                                info))
    return out


@dataclass
class RealSet:
    images: np.ndarray        # uint8 (N, S, S), the TRAIN split
    labels: np.ndarray
    ids: list[str]
    features: np.ndarray


def real_train(ds, size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from core.data.arrays import split_arrays

    train = split_arrays(ds, size, "train")
    if len(train) < 2:
        raise ValueError(f"{ds.root}: fewer than 2 readable real training images; the real reference set is empty.")
    return train.images, train.labels, train.ids


def _subsample(s: SyntheticSet, most: int, seed: int) -> SyntheticSet:
    if len(s.images) <= most:
        return s
    keep = np.sort(np.random.default_rng(seed).choice(len(s.images), most, replace=False))
    return SyntheticSet(s.name, s.source, s.images[keep], s.labels[keep], [s.ids[i] for i in keep],
                        {**s.info, "subsampled_from": len(s.images)})


def score_set(s: SyntheticSet, real: RealSet, extractor, cfg: QualityConfig, *, per_image: bool = True,
              n_boot: int | None = None) -> dict:
    """Everything about one synthetic set: set metrics, per-image rows, memorization rows and the
    closest pairs. Returns {"set": dict, "per_image": DataFrame, "memorization": DataFrame, "pairs": list}."""
    unknown = sorted(set(s.labels) - set(real.labels))
    if unknown:
        raise ValueError(f"{s.name}: classes {unknown} have no real training images to compare with.")
    mask = np.isin(real.labels, np.unique(s.labels))
    r_feat, r_lab, r_img = real.features[mask], real.labels[mask], real.images[mask]
    r_ids = [i for i, m in zip(real.ids, mask) if m]
    f = extractor(s.images)
    row = {"set": s.name, "source": s.source, "extractor": extractor.name, "classes": ", ".join(np.unique(s.labels)),
           **{k: v for k, v in s.info.items() if k in ("run_id", "variant", "step", "epoch")}}
    row.update({k: v for k, v in setmetrics.set_metrics(r_feat, f, n_boot=cfg.n_boot if n_boot is None else n_boot,
                                                         kid_subsets=cfg.kid_subsets, k=cfg.pr_k, seed=cfg.seed).items()})
    # the facts the Quality page shows: FID is unstable at this sample size (one warning for all such
    # sets), and the other warnings (collapse, intervals, a set not marked synthetic) as they are
    fid_notes = setmetrics.fid_warnings(row["n_real"], row["n_synthetic"], row["feature_dim"])
    own = [s.info["warning"]] if s.info.get("warning") else []
    row["fid_unstable"] = bool(fid_notes)
    row["other_warnings"] = " ".join([w for w in row["warnings"] if w not in fid_notes] + own)
    row["warnings"] = " ".join(row["warnings"] + own)
    d, idx = memorization.nearest_by_class(f, s.labels, r_feat, r_lab)
    pairs = metrics.pair_metrics(r_img[idx], s.images, with_ms_ssim=per_image)
    for k in ("ssim", "psnr", "ms_ssim"):
        vals = pairs[k][np.isfinite(pairs[k])]
        row[f"mean_{k}"] = float(vals.mean()) if len(vals) else math.nan
    out = {"set": row}
    if not per_image:
        return out
    div_syn = metrics.mean_pairwise_ms_ssim(s.images, cfg.diversity_pairs, cfg.seed)
    div_real = metrics.mean_pairwise_ms_ssim(r_img, cfg.diversity_pairs, cfg.seed)
    row.update({"diversity_synthetic": div_syn["value"], "diversity_real": div_real["value"],
                "diversity_metric": div_syn["metric"]})
    mem, summary = memorization.audit(real.features[mask], r_lab, f, s.labels, cfg.memorization_quantile)
    row.update({"memorization_threshold": summary["threshold"], "flagged": summary["flagged"],
                "real_real_median": summary["real_real_median"]})
    copies = copying_warning(s, mem, r_lab)
    if copies:
        row["other_warnings"] = (row["other_warnings"] + " " + copies).strip()
        row["warnings"] = (row["warnings"] + " " + copies).strip()
    out["per_image"] = pd.DataFrame({"set": s.name, "image_id": s.ids, "class": s.labels,
                                     "nearest_real_id": [r_ids[i] for i in idx], "feature_distance": d,
                                     **{k: pairs[k] for k in ("mse", "rmse", "nrmse", "psnr", "ssim", "ms_ssim")},
                                     "flagged": mem["flagged"].to_numpy()})
    out["memorization"] = pd.DataFrame({"set": s.name, "synthetic_id": s.ids, "train_id": [r_ids[i] for i in mem["train"]],
                                        "class": mem["class"], "distance": mem["distance"], "ratio": mem["ratio"],
                                        "flagged": mem["flagged"]})
    order = np.argsort(mem["distance"].to_numpy())[:cfg.pairs_shown]
    out["pairs"] = [(s.images[i], r_img[mem["train"].iloc[i]], {"set": s.name, "synthetic_id": s.ids[i],
                    "train_id": r_ids[mem["train"].iloc[i]], "class": s.labels[i],
                    "distance": float(mem["distance"].iloc[i]), "flagged": bool(mem["flagged"].iloc[i])})
                    for i in order]
    return out


def copying_warning(s: SyntheticSet, mem: pd.DataFrame, real_labels: np.ndarray) -> str:
    """A sentence when the memorization audit flags images of a diffusion model: such models are known to
    reproduce training images of tiny classes (Carlini et al. 2023; Somepalli et al. 2023)."""
    flagged = mem[mem["flagged"]]
    if flagged.empty or s.info.get("family") != "diffusion":
        return ""
    counts = flagged["class"].value_counts()
    real_n = pd.Series(real_labels).value_counts()
    per_class = ", ".join(f"{c} {n} of {int((mem['class'] == c).sum())} (from {int(real_n.get(c, 0))} real training "
                          f"images)" for c, n in counts.items())
    return (f"{s.name}: the diffusion model nearly copies training images ({per_class}). Diffusion models are known "
            f"to memorise the training images of tiny classes; look at the pairs below and in the generator explorer, "
            f"and train with fewer steps, more data or stronger condition dropout before using these images.")


def _slug(text: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:60] or "set"


def save_pair_png(syn: np.ndarray, real: np.ndarray, path: Path) -> None:
    """Synthetic (left) and its nearest training image (right), 4 px apart, on white."""
    from PIL import Image

    h, w = syn.shape
    canvas = np.full((h, 2 * w + 4), 255, np.uint8)
    canvas[:, :w], canvas[:, w + 4:] = syn, real
    Image.fromarray(canvas).save(path)


def evaluate(cfg: QualityConfig, out: str | Path, on_progress: Progress | None = None) -> dict:
    """Build the report into ``out`` (see :data:`REPORT_FILES`, plus ``pairs/*.png``) and return report.json."""
    from core.data.datasets import load_dataset
    from core.quality.features import get_extractor

    t0 = time.perf_counter()
    report = on_progress or (lambda d, t, m: None)
    out = Path(out).expanduser()
    (out / PAIRS_DIR).mkdir(parents=True, exist_ok=True)
    ds = load_dataset(cfg.real)
    report(0, 1, "loading synthetic sets")
    sources = [load_source(s, cfg.size, cfg.n_per_class, cfg.seed) for s in cfg.synthetic]
    size = cfg.size or (sources[0].images.shape[1] if sources else None)
    epochs = epoch_sources(cfg.epochs_of, size) if cfg.epochs_of else []
    size = size or epochs[0].images.shape[1]
    sources = [SyntheticSet(s.name, s.source, resize_uint8(s.images, size), s.labels, s.ids, s.info) for s in sources]
    names: dict[str, int] = {}
    for s in sources:   # unique names
        names[s.name] = names.get(s.name, 0) + 1
        if names[s.name] > 1:
            s.name = f"{s.name} #{names[s.name]}"
    sources = [_subsample(s, cfg.max_images, cfg.seed) for s in sources]
    extractor = get_extractor(cfg.extractor, ds, weights=cfg.inception_weights, size=cfg.encoder_size,
                              epochs=cfg.encoder_epochs, seed=cfg.seed, on_progress=report)
    images, labels, ids = real_train(ds, size)
    report(0, 1, "extracting real features")
    real = RealSet(images, labels, ids, extractor(images))
    set_rows, per_image, mem_rows, pair_rows, epoch_rows = [], [], [], [], []
    total = len(sources) + len(epochs)
    for i, s in enumerate(sources):
        report(i, total, f"scoring {s.name}")
        res = score_set(s, real, extractor, cfg)
        set_rows.append(res["set"])
        per_image.append(res["per_image"])
        mem_rows.append(res["memorization"])
        for j, (syn, rim, meta) in enumerate(res["pairs"]):
            path = out / PAIRS_DIR / f"{_slug(s.name)}-{j:02d}.png"
            save_pair_png(syn, rim, path)
            pair_rows.append({**meta, "file": f"{PAIRS_DIR}/{path.name}"})
    for i, s in enumerate(epochs):
        report(len(sources) + i, total, f"scoring {s.name} of {cfg.epochs_of}")
        row = score_set(s, real, extractor, cfg, per_image=False, n_boot=0)["set"]
        epoch_rows.append({k: row[k] for k in ("epoch", "fid", "kid", "precision", "recall", "mean_ssim", "mean_psnr",
                                               "n_synthetic", "n_real")})
    sets = pd.DataFrame(set_rows)
    sets.to_csv(out / "sets.csv", index=False)
    (pd.concat(per_image, ignore_index=True) if per_image else pd.DataFrame(columns=["set"])).to_csv(
        out / "per_image.csv", index=False)
    (pd.concat(mem_rows, ignore_index=True) if mem_rows else pd.DataFrame(columns=["set"])).to_csv(
        out / "memorization.csv", index=False)
    pd.DataFrame(epoch_rows).to_csv(out / "epochs.csv", index=False)
    pd.DataFrame(pair_rows).to_csv(out / "pairs.csv", index=False)
    summary = {"config": asdict(cfg), "real": {"dataset_id": ds.id, "root": str(ds.root), "train_images": len(images)},
               "size": int(size), "extractor": extractor.name, "extractor_description": extractor.description,
               "sets": json.loads(sets.to_json(orient="records")) if len(sets) else [],
               "epochs_of": cfg.epochs_of, "epochs": len(epoch_rows),
               "seconds": round(time.perf_counter() - t0, 2)}
    (out / "report.json").write_text(json.dumps(summary, indent=1, default=str))
    report(total, total, "done")
    return summary
