"""Generators behind one interface: a checkpoint of either family (GAN or diffusion) -> images.

GANs (:mod:`core.gan`) and diffusion models (:mod:`core.diffusion`) train with callbacks and save
atomic checkpoints that name their format. Everything downstream (``generate``, the balancing
planner, the study's synthetic sets, quality, the explorer, the reader study) goes through this
module and does not know which family made an image:

- :func:`open_generator` reads a checkpoint once and returns a :class:`Generator` with its family,
  classes, resolution and run, and ``sample(n, class_name, seed, ...)``;
- :func:`generate_images` is the one call that makes ``n`` uint8 images;
- :func:`generator_checkpoint` picks a training folder's ``best.pt`` (lowest fidelity KID) over its
  ``checkpoint.pt``, for both families.

A GAN's ``options`` are ignored; a diffusion model takes ``steps`` (DDIM steps) and ``guidance``
(classifier-free guidance scale), defaulting to the values it was trained to sample with.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FAMILIES = {"medaug-gan-checkpoint/1": "gan", "medaug-diffusion-checkpoint/1": "diffusion"}
CHECKPOINT_FILE = "checkpoint.pt"
BEST_FILE = "best.pt"


@dataclass
class GeneratedImages:
    images: np.ndarray          # uint8 (n, R, R)
    labels: list[str]           # class of each image
    config: object              # the checkpoint's training config (GanConfig or DiffusionConfig)
    run_id: str                 # MLflow run that trained it (or local-<data fingerprint> outside MLflow)
    step: int                   # training steps the checkpoint had done
    seed: int                   # noise seed
    family: str = "gan"         # "gan" or "diffusion"
    options: dict = field(default_factory=dict)   # sampling options used (diffusion: steps, guidance)

    @property
    def variant(self) -> str:
        return self.config.variant


def checkpoint_run_id(state: dict) -> str:
    run_id = (state.get("meta") or {}).get("run_id")
    return str(run_id) if run_id else f"local-{str(state.get('data_fingerprint', 'unknown'))[:12]}"


def generator_checkpoint(path: str | Path) -> Path:
    """The checkpoint to sample from: a training folder or its ``checkpoint.pt`` means the run's
    ``best.pt`` (lowest fidelity KID) when there is one, else ``checkpoint.pt`` (the last); any
    other file is taken as given."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent if path.name == CHECKPOINT_FILE else None
    if folder is not None and (folder / BEST_FILE).is_file():
        return folder / BEST_FILE
    return folder / CHECKPOINT_FILE if path.is_dir() else path


def checkpoint_family(path: str | Path) -> str:
    """"gan" or "diffusion", from the checkpoint's format (a clear CheckpointError otherwise)."""
    return read_checkpoint(path)[1]


def read_checkpoint(path: str | Path, map_location: str = "cpu") -> tuple[dict, str]:
    """(state, family) of a generator checkpoint, read once with ``weights_only=True``."""
    from core import checkpoints

    path = Path(path)
    if not path.is_file():
        raise checkpoints.CheckpointError(f"{path}: no checkpoint here; train one with `python -m core train-gan` or "
                                          f"`python -m core train-diffusion`.")
    import torch

    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise checkpoints.CheckpointError(f"{path}: cannot be read as a generator checkpoint (corrupt or truncated: "
                                          f"{type(e).__name__}: {str(e)[:200]}). Delete it and train again, or point "
                                          f"to an intact copy.") from e
    family = FAMILIES.get(state.get("format")) if isinstance(state, dict) else None
    if family is None:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise checkpoints.CheckpointError(f"{path}: not a MedAug generator checkpoint (format {found!r}); use one "
                                          f"written by train-gan or train-diffusion.")
    kind = _kind(family)
    missing = [k for k in kind.required if k not in state]
    if missing:
        raise checkpoints.CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}; it is incomplete. Train again.")
    return state, family


def _kind(family: str):
    if family == "gan":
        from core.gan.train import CHECKPOINT_KIND
    else:
        from core.diffusion.train import CHECKPOINT_KIND
    return CHECKPOINT_KIND


class Generator:
    """One loaded generator checkpoint of either family."""

    def __init__(self, path: str | Path, device: str = "cpu"):
        from core.device import resolve_device

        self.path = Path(path)
        self.device = resolve_device(device)
        self.state, self.family = read_checkpoint(self.path)
        if self.family == "gan":
            from core.gan.sample import load_generator
            from core.gan.train import checkpoint_config

            self.config = checkpoint_config(self.state)
            self.net, _ = load_generator(self.path, str(self.device), state=self.state)
        else:
            from core.diffusion.sample import load_model

            self.net, _, self.config = load_model(self.path, str(self.device), state=self.state)
        c = self.config
        self.resolution: int = c.resolution
        self.conditional: bool = bool(c.conditional)
        self.classes: tuple[str, ...] = tuple(c.classes) if c.conditional else ((c.class_name,) if c.class_name else ())
        self.class_name: str | None = c.class_name
        self.variant: str = c.variant
        self.run_id = checkpoint_run_id(self.state)
        self.step = int(self.state.get("step", 0))
        self.epoch = int(self.state.get("epoch", 0))
        self.meta = dict(self.state.get("meta") or {})

    # -- what a sample needs -----------------------------------------------------------------

    def labels_for(self, n: int, class_name: str | None):
        """Each image's class name, and the label indices a conditional model needs."""
        import torch

        where = str(self.path)
        c = self.config
        if c.conditional:
            if class_name is None:   # spread evenly over the classes
                idx = torch.arange(n) % len(c.classes)
            elif class_name in c.classes:
                idx = torch.full((n,), c.classes.index(class_name))
            else:
                raise ValueError(f"{where}: class {class_name!r} is not one of this conditional model's classes "
                                 f"{list(c.classes)}.")
            return [c.classes[i] for i in idx.tolist()], idx
        if c.class_name is None:
            raise ValueError(f"{where}: this model was trained on all classes without labels, so its images have no "
                             f"class; train one per class (--class NAME) or a conditional model (--conditional).")
        if class_name is not None and class_name != c.class_name:
            raise ValueError(f"{where}: this model was trained on class {c.class_name!r} only; "
                             f"drop --class or use a checkpoint of {class_name!r}.")
        return [c.class_name] * n, None

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """The shape of one image's noise: (nz,) for a GAN, (1, R, R) for diffusion."""
        if self.family == "gan":
            return (self.config.nz,)
        return (1, self.resolution, self.resolution)

    def noise(self, n: int, seed: int):
        """``n`` noise vectors from one seeded CPU generator (the same on any device)."""
        import torch

        return torch.randn(n, *self.latent_shape, generator=torch.Generator().manual_seed(seed))

    def options(self, steps: int | None = None, guidance: float | None = None) -> dict:
        if self.family == "gan":
            return {}
        from core.diffusion.train import check_sampling

        o = {"steps": int(steps or self.config.sample_steps),
             "guidance": float(self.config.guidance if guidance is None else guidance)}
        check_sampling(o["steps"], o["guidance"], self.config.timesteps)
        return o

    def decode(self, noise, idx, *, steps: int | None = None, guidance: float | None = None, batch: int = 64,
               on_progress: Callable[[int, int, str], None] | None = None) -> np.ndarray:
        """uint8 images (n, R, R) from given noise (``noise(n, seed)`` or an interpolation of it) and
        class indices ``idx`` (None for a per-class model)."""
        if self.family == "gan":
            from core.gan.sample import decode

            return decode(self.net, noise, idx, batch=256)
        from core.diffusion.sample import generate_array

        o = self.options(steps, guidance)
        return generate_array(self.net, self.config, noise, idx, steps=o["steps"], guidance=o["guidance"],
                              device=self.device, batch=batch, on_progress=on_progress)

    def sample(self, n: int, class_name: str | None = None, seed: int = 0, *, steps: int | None = None,
               guidance: float | None = None, on_progress=None) -> GeneratedImages:
        """``n`` images (uint8); ``class_name`` picks a conditional class (None: spread over all)."""
        if not 1 <= n <= 1_000_000:
            raise ValueError(f"n={n}: choose between 1 and 1000000 images.")
        names, idx = self.labels_for(n, class_name)
        images = self.decode(self.noise(n, seed), idx, steps=steps, guidance=guidance, on_progress=on_progress)
        return GeneratedImages(images, names, self.config, self.run_id, self.step, seed, self.family,
                               self.options(steps, guidance))

    def describe(self) -> str:
        who = self.class_name or ("conditional" if self.conditional else "all classes")
        return f"{self.variant} ({self.family}, {who}) at {self.resolution} px, step {self.step}"


def open_generator(checkpoint: str | Path, device: str = "cpu") -> Generator:
    return Generator(checkpoint, device)


def generate_images(checkpoint: str | Path, n: int, class_name: str | None = None, seed: int = 0, *,
                    device: str = "cpu", steps: int | None = None, guidance: float | None = None,
                    on_progress=None) -> GeneratedImages:
    """``n`` images from a checkpoint of either family (see :meth:`Generator.sample`)."""
    return open_generator(checkpoint, device).sample(n, class_name, seed, steps=steps, guidance=guidance,
                                                     on_progress=on_progress)
