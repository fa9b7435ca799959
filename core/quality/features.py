"""Feature extractors for set metrics (FID, KID, precision/recall), nearest-neighbour search and
the memorization audit. Each maps uint8 grey images (N, H, W) to float64 features (N, D).

- ``domain`` (the default; works offline): the penultimate layer (global average pool, 128-d) of a
  small CNN classifier (``domain_cnn`` of :mod:`core.classify.models`, trained by the classifier
  trainer) on the real dataset's TRAIN split. It is trained once and cached in
  the workspace under ``quality/encoders/``, keyed by the dataset's content hash, the input size,
  epochs and seed; :func:`domain_encoder` reloads it from there.
- ``inception``: torchvision's Inception-v3 pool features (2048-d, 299x299 input scaled to
  [-1, 1]) with weights from a LOCAL file, never downloaded: ``weights=`` / ``--inception-weights``,
  else ``MEDAUG_INCEPTION_WEIGHTS``, else the torch hub cache (``$TORCH_HOME/hub/checkpoints/``)
  holding torchvision's ``inception_v3_google-*.pth`` or pytorch-fid's ``pt_inception-2015-12-05-*.pth``.
  pytorch-fid's file loads into torchvision's blocks (same parameter names, 1008 classes); pytorch-fid
  itself patches a few pooling layers, so FIDs from that file are close to, not identical with, its own.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

EXTRACTORS = ("domain", "inception")
ENV_INCEPTION = "MEDAUG_INCEPTION_WEIGHTS"
HUB_PATTERNS = ("inception_v3_google-*.pth", "pt_inception-2015-12-05-*.pth")
ENCODER_FORMAT = "medaug-domain-encoder/2"   # /2: domain_cnn trained by core.classify's trainer
FEATURE_DIM = 128


def to_input(images, size: int) -> torch.Tensor:
    """uint8 (N, H, W) -> float (N, 1, size, size) in [-1, 1] (antialiased resize when needed)."""
    t = torch.as_tensor(np.ascontiguousarray(images)).float()[:, None] / 127.5 - 1.0
    if t.shape[-2:] != (size, size):
        t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return t


@dataclass
class Extractor:
    name: str                          # "domain" or "inception"
    description: str                   # shown next to every number it produced
    fn: Callable[[np.ndarray], np.ndarray]
    dim: int

    def __call__(self, images: np.ndarray, batch: int = 64) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, self.dim))
        with torch.inference_mode():
            return np.concatenate([self.fn(images[i:i + batch]) for i in range(0, len(images), batch)])


# --- the domain encoder ----------------------------------------------------------------------

def encoder_path(content_hash: str, size: int, epochs: int, seed: int) -> Path:
    from core.workspace import workspace_dir

    folder = workspace_dir("quality") / "encoders"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{content_hash[:16]}-s{size}-e{epochs}-seed{seed}.pt"


def encoder_config(size: int, epochs: int, seed: int):
    """The domain encoder's training settings: ``domain_cnn`` through the classifier trainer, fp32 on
    the CPU (its features must not depend on the machine's bf16), class-weighted loss (rare classes
    count), Adam-like constant lr 2e-3 for ``epochs`` epochs of batch 32."""
    from core.classify.train import ClassifierConfig

    return ClassifierConfig(model="domain_cnn", image_size=size, epochs=epochs, batch_size=32, lr=2e-3,
                            weight_decay=0.0, schedule="constant", seed=seed, balance="weighted_loss", patience=None,
                            device="cpu", precision="fp32", n_boot=0)


def train_domain_encoder(images: np.ndarray, labels: np.ndarray, classes: list[str], size: int = 64,
                         epochs: int = 8, seed: int = 0,
                         on_progress: Callable[[int, int, str], None] | None = None) -> dict:
    """Train ``domain_cnn`` on uint8 images (N, H, W) with class indices through
    :class:`core.classify.train.ClassifierTrainer` (the project's one training step); returns the
    cache state: weights, classes, input normalisation and what it was trained on."""
    from core.classify.train import ClassifierTrainer, batches, epoch_indices

    if len(images) < 2:
        raise ValueError("the domain encoder needs at least 2 training images; the real set's train split is "
                         "too small.")
    config = encoder_config(size, epochs, seed)
    y = np.asarray(labels, dtype=np.int64)
    trainer = ClassifierTrainer(config, (images, y), (images[:2], y[:2]), classes)   # no selection: val unused
    report = on_progress or (lambda d, t, m: None)
    t0 = time.perf_counter()
    trainer.net.train()
    accuracy = 0.0
    for epoch in range(1, epochs + 1):
        for idx in batches(epoch_indices(trainer.n_train, trainer.train_y, epoch, config), config.batch_size):
            if len(idx) >= 2:   # batch norm needs 2 images
                trainer.train_step(idx)
        _, accuracy, _ = trainer.read_sums()
        report(epoch, epochs, f"training the domain encoder: epoch {epoch}/{epochs}, train accuracy {accuracy:.2f}")
    trainer.net.eval()
    return {"state_dict": trainer.net.state_dict(), "classes": list(classes), "mean": trainer.mean, "std": trainer.std,
            "epochs": epochs, "size": size, "seed": seed, "train_images": trainer.n_train,
            "train_accuracy": round(accuracy, 4), "seconds": round(time.perf_counter() - t0, 2)}


def cached_encoder(path: Path, train: Callable[[], dict], what: str, size: int) -> Extractor:
    """A domain encoder from its workspace cache file ``path``, or ``train()``'s state (saved there
    atomically); ``what`` names its training data in the description."""
    from core.checkpoints import save as save_checkpoint
    from core.classify.models import build_model
    from core.classify.models import features as embed
    from core.device import images_to_tensor

    state = None
    if path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 -- a damaged cache file is rebuilt, never trusted
            state = None
        if not isinstance(state, dict) or state.get("format") != ENCODER_FORMAT:
            state = None
    if state is None:
        state = {"format": ENCODER_FORMAT, **train()}
        save_checkpoint(path, state)
    model = build_model("domain_cnn", len(state["classes"]), 1)
    model.load_state_dict(state["state_dict"])
    model.eval()
    mean, std = state["mean"], state["std"]

    def fn(imgs: np.ndarray) -> np.ndarray:   # as the trainer feeds it: uint8 at size, (x / 255 - mean) / std
        x = images_to_tensor(imgs, size).float().div_(255.0).sub_(mean).div_(std)
        return embed(model, x).double().numpy()
    desc = (f"domain encoder: 128-d penultimate layer of a CNN trained on {what} "
            f"({state['train_images']} images, {state['epochs']} epochs at {state['size']} px, train accuracy "
            f"{state['train_accuracy']:.2f})")
    return Extractor("domain", desc, fn, FEATURE_DIM)


def domain_encoder(ds, size: int = 64, epochs: int = 8, seed: int = 0,
                   on_progress: Callable[[int, int, str], None] | None = None) -> Extractor:
    """The dataset's domain encoder, from the workspace cache or trained now on its TRAIN split (real rows)."""
    def train() -> dict:
        from core.data.arrays import split_arrays

        real = split_arrays(ds, size, "train")
        classes = [c for c in ds.classes if c in set(real.labels)]
        if len(classes) < 2:
            raise ValueError(f"{ds.root}: the domain encoder is a classifier and needs at least 2 classes with "
                             f"training images; use --extractor inception with a local weights file instead.")
        state = train_domain_encoder(real.images, real.class_indices(classes), classes, size, epochs, seed,
                                     on_progress=on_progress)
        return {**state, "dataset_hash": ds.content_hash}

    return cached_encoder(encoder_path(ds.content_hash, size, epochs, seed), train, f"{ds.id} train split", size)


# --- Inception-v3 from a local weights file ---------------------------------------------------------

def find_inception_weights(path: str | Path | None = None) -> Path | None:
    """The weights file to use: ``path``, else MEDAUG_INCEPTION_WEIGHTS, else the torch hub cache."""
    given = path or os.environ.get(ENV_INCEPTION)
    if given:
        p = Path(given).expanduser()
        if not p.is_file():
            raise ValueError(f"Inception weights {p}: no such file (from {'--inception-weights' if path else ENV_INCEPTION}); "
                             f"give the path of inception_v3_google-*.pth or pt_inception-2015-12-05-*.pth.")
        return p
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    for pattern in HUB_PATTERNS:
        found = sorted(hub.glob(pattern))
        if found:
            return found[-1]
    return None


def inception_extractor(weights: str | Path | None = None, device: str = "cpu") -> Extractor:
    """Inception-v3 pool features from a local weights file (see the module docstring)."""
    from torchvision.models import inception_v3

    path = find_inception_weights(weights)
    if path is None:
        raise ValueError(f"No Inception-v3 weights found: set {ENV_INCEPTION} or --inception-weights to a local "
                         f"inception_v3_google-*.pth (torchvision) or pt_inception-2015-12-05-*.pth (pytorch-fid), or "
                         f"put one in {Path(torch.hub.get_dir()) / 'checkpoints'}. Nothing is downloaded; the default "
                         f"'domain' extractor works offline.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: cannot be read as a weights file ({type(e).__name__}: {str(e)[:200]}).") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or "fc.weight" not in state:
        raise ValueError(f"{path}: not an Inception-v3 state dict (no fc.weight); use torchvision's or pytorch-fid's file.")
    n_classes = int(state["fc.weight"].shape[0])
    model = inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=n_classes,
                         transform_input=False)
    state = {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit torchvision's Inception-v3 ({str(e)[:300]}).") from e
    model.fc = nn.Identity()
    model.eval().to(device)

    def features(imgs: np.ndarray) -> np.ndarray:
        x = to_input(imgs, 299).expand(-1, 3, -1, -1).to(device)   # grey -> 3 channels, [-1, 1]
        return model(x).double().cpu().numpy()

    return Extractor("inception", f"Inception-v3 pool3 (2048-d) from {path.name}", features, 2048)


def get_extractor(name: str, ds=None, *, weights: str | Path | None = None, size: int = 64, epochs: int = 8,
                  seed: int = 0, on_progress=None) -> Extractor:
    if name == "domain":
        if ds is None:
            raise ValueError("the domain extractor needs the real dataset it is trained on.")
        return domain_encoder(ds, size, epochs, seed, on_progress)
    if name == "inception":
        return inception_extractor(weights)
    raise ValueError(f"extractor={name!r}: choose one of {', '.join(EXTRACTORS)}.")
