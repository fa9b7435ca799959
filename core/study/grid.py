"""The study grid: augmentation sets x networks x seeds, its config and the two presets.

An augmentation set names how a cell's TRAINING images are made from the training split
(validation and test are never touched):

    real          the training split as it is (the baseline every Δ is measured against)
    rotate45 ...  the training split plus one copy of each image through ONE of the original
                  study's 7 operations (core.augment.ops.STUDY_OPERATIONS)
    classic       plus one copy per image through the study's pipeline (one of the 7 per image)
    dcgan, wgan,  plus GAN images for the classes the balancing planner tops up, from a GAN of
    wgan-gp       that variant trained on the training split (once per study, shared by cells)
    diffusion     the same with a class-conditional diffusion model (DDPM, DDIM + guidance; core.diffusion)
    classic+gan   the classic copies and the GAN images of ``combo_variant`` together
    tstr-dcgan,   TSTR (train on synthetic, test on real): ONLY that generator's images, as many per
    tstr-wgan ... class as the real training split holds (not the planner's top-up), tested on the
                  same real test split: the generator's utility, expected below real only

No torch here: the CLI, the page and job specs read this module cheaply.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from core.augment.ops import STUDY_OPERATIONS
from core.config import DictConfig

GAN_VARIANTS = ("dcgan", "wgan", "wgan-gp")
DIFFUSION = "diffusion"                              # the diffusion generator's "variant" key (core.diffusion)
GENERATOR_VARIANTS = (*GAN_VARIANTS, DIFFUSION)      # every generator a set can take images from
DEFAULT_GAN_STEPS = {"dcgan": 150, "wgan": 60, "wgan-gp": 60}


@dataclass(frozen=True)
class AugSet:
    key: str                      # identifier in configs, MLflow tags and the CLI
    label: str                    # row label of the results table
    kind: str                     # "real" | "classic" | "gan" (any generator's top-up) | "classic+gan" | "tstr"
    op: str | None = None         # registry operation (single classic operation sets)
    params: tuple = ()            # its parameters, as (name, value) pairs (hashable)

    @property
    def variant(self) -> str | None:
        if self.kind == "tstr":
            return self.key[len(TSTR_PREFIX):]
        return self.key if self.kind == "gan" else None


TSTR_PREFIX = "tstr-"
_OP_KEYS = {"rotate 45": "rotate45", "rotate 270": "rotate270", "horizontal flip": "hflip",
            "vertical flip": "vflip", "crop (2, 5, 500, 1000)": "crop", "zoom (crop + resize)": "zoom",
            "shear 30 degrees": "shear30"}

AUG_SETS: dict[str, AugSet] = {s.key: s for s in (
    AugSet("real", "real only", "real"),
    *(AugSet(_OP_KEYS[label], label, "classic", op, tuple(sorted(params.items())))
      for label, op, params in STUDY_OPERATIONS),
    AugSet("classic", "classic pipeline (one of the 7 per image)", "classic"),
    AugSet("dcgan", "DCGAN synthetic", "gan"),
    AugSet("wgan", "WGAN synthetic", "gan"),
    AugSet("wgan-gp", "WGAN-GP synthetic", "gan"),
    AugSet(DIFFUSION, "Diffusion (DDPM) synthetic", "gan"),
    AugSet("classic+gan", "classic + GAN synthetic", "classic+gan"),
    AugSet("tstr-dcgan", "TSTR: DCGAN images only", "tstr"),
    AugSet("tstr-wgan", "TSTR: WGAN images only", "tstr"),
    AugSet("tstr-wgan-gp", "TSTR: WGAN-GP images only", "tstr"),
    AugSet("tstr-diffusion", "TSTR: diffusion images only", "tstr"),
)}
CLASSIC_OPS = tuple(_OP_KEYS[label] for label, _, _ in STUDY_OPERATIONS)
BASELINE = "real"


def get_set(key: str) -> AugSet:
    try:
        return AUG_SETS[key]
    except KeyError:
        raise ValueError(f"unknown augmentation set {key!r}; choose from {', '.join(AUG_SETS)}.") from None


def known_networks() -> tuple[str, ...]:
    """Networks of core.classify (imported lazily: it loads torch)."""
    from core.classify.models import MODELS

    return tuple(MODELS)


@dataclass(frozen=True)
class StudyConfig(DictConfig):
    sets: tuple[str, ...] = ("real", *CLASSIC_OPS, "dcgan", "wgan")   # keys of AUG_SETS, in table order
    networks: tuple[str, ...] = ("small_cnn",)   # keys of core.classify.models.MODELS
    seeds: tuple[int, ...] = (0,)                # one cell per seed; 3+ seeds give a t-interval
    image_size: int = 64                         # classifier input side in px (models may resize, e.g. 299)
    epochs: int = 4                              # classifier epochs per cell (early stopping may end sooner).
                                                 # The CPU recipe (4 epochs, batch 32, lr 1e-3, cosine), measured on
                                                 # the 1,000-image phantom at 64 px, fp32, 2 cores: test macro-F1
                                                 # 0.32 / 0.27 / 0.28 (seeds 0-2) in ~30 s a cell; the old 8 epochs,
                                                 # batch 64, lr 2e-3 gave 0.32 in 78 s, and 4 epochs of it 0.03
    equal_budget: bool = True                    # every cell trains on the same number of images: a set k times
                                                 # the real training split gets round(epochs / k) epochs, so
                                                 # augmentation is not confounded with more gradient steps
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 4                            # early stopping on validation macro-F1 (with 4 epochs: off; val
                                                 # scores swing while the lr is high, so an early stop picks noise)
    balance: str = "sampler"                     # the trainer's class balancing: none, weighted_loss, sampler
    precision: str = "auto"
    device: str = "auto"
    metric: str = "macro_f1"                     # the results table's metric
    n_boot: int = 500                            # bootstrap resamples for the per-cell CIs
    copies: int = 1                              # classic sets: augmented copies per training image
    # GAN sets (the balancing planner decides how many images each class gets)
    gan_target: str = "max"                      # "max", "median" or images per class
    gan_cap: float = 2.0                         # at most this many synthetic images per real one
    gan_resolution: int = 64                     # GAN image side (32, 64, 128, 256)
    gan_width: int = 16                          # base channels of G and D
    gan_batch: int = 64
    gan_steps: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_GAN_STEPS))  # generator steps per
                                                 # variant; variants left out keep these defaults
    gan_max_seconds: float | None = None         # training-time budget per GAN variant (s); gan_steps caps the steps
    gan_fidelity_every: int | None = 25          # KID check (domain features, per class) every N generator steps; the
                                                 # lowest-KID checkpoint is the one the study samples (None: the last)
    gan_fidelity_patience: int | None = 8        # stop a GAN after this many checks without a lower KID (None: never);
                                                 # KID of a short CPU run is noisy: 6 stopped a DCGAN at KID 0.10
                                                 # that reached 0.02 with 2x the steps
    gan_checkpoints: Mapping[str, str] = field(default_factory=dict)  # variant -> checkpoint.pt of a given
                                                 # conditional GAN (or "diffusion" -> diffusion) run (skips training it)
    combo_variant: str = "dcgan"                 # the generator of the classic+gan set
    # the diffusion set (core.diffusion: a class-conditional DDPM at gan_resolution, DDIM + guidance)
    diffusion_steps: int = 2000                  # training steps (diffusion_max_seconds may stop it first)
    diffusion_max_seconds: float | None = None   # training-time budget (s)
    diffusion_width: int = 16                    # UNet base channels (16: ~31 img/s training at 64 px on 2 cores)
    diffusion_batch: int = 32
    diffusion_sample_steps: int = 25             # DDIM steps per synthetic image
    diffusion_guidance: float = 2.0              # classifier-free guidance scale
    diffusion_quality_real: int = 300            # real images (and as many samples) in its final quality measure:
                                                 # sampling costs ~0.5 s an image at 64 px on 2 CPU cores
    gan_threads: int | None = None               # CPU threads for GAN training (None: torch's default)
    shuffle_labels: bool = False                 # the null control: every cell trains (and selects) on shuffled
                                                 # labels, so no set can truly help; every verdict must then be
                                                 # "no detectable difference" (anything else means a leak or a bug)

    WHAT = "study config"

    def __post_init__(self):
        for name in ("sets", "networks", "seeds"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, (list, tuple)):
                raise ValueError(f"{name}={value!r}: give a list.")  # noqa: TRY004 (config errors are ValueErrors)
            object.__setattr__(self, name, tuple(value))
            if not value:
                raise ValueError(f"{name} is empty: a study needs at least one.")
            if len(set(value)) != len(value):
                raise ValueError(f"{name}={list(value)}: remove the duplicates.")
        for key in self.sets:
            get_set(key)
        if BASELINE not in self.sets:
            raise ValueError(f"sets={list(self.sets)}: include {BASELINE!r}, the baseline every Δ is measured against.")
        for s in self.seeds:
            if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**31:
                raise ValueError(f"seeds: {s!r} is not a whole number in [0, 2**31).")
        if not 16 <= self.image_size <= 1024:
            raise ValueError(f"image_size={self.image_size}: choose between 16 and 1024 px.")
        if not 1 <= self.epochs <= 1000:
            raise ValueError(f"epochs={self.epochs}: choose between 1 and 1000.")
        if not 2 <= self.batch_size <= 4096:
            raise ValueError(f"batch_size={self.batch_size}: choose between 2 and 4096.")
        if not 0 < self.lr <= 1:
            raise ValueError(f"lr={self.lr}: choose a learning rate in (0, 1].")
        if self.metric not in METRICS:
            raise ValueError(f"metric={self.metric!r}: choose one of {', '.join(METRICS)}.")
        if not 0 <= self.n_boot <= 100_000:
            raise ValueError(f"n_boot={self.n_boot}: choose between 0 and 100000.")
        if not 1 <= self.copies <= 20:
            raise ValueError(f"copies={self.copies}: choose between 1 and 20 copies per image.")
        if self.gan_resolution not in (32, 64, 128, 256):
            raise ValueError(f"gan_resolution={self.gan_resolution}: choose 32, 64, 128 or 256 px.")
        if self.combo_variant not in GENERATOR_VARIANTS:
            raise ValueError(f"combo_variant={self.combo_variant!r}: choose one of {', '.join(GENERATOR_VARIANTS)}.")
        object.__setattr__(self, "gan_steps", {**DEFAULT_GAN_STEPS, **dict(self.gan_steps)})
        object.__setattr__(self, "gan_checkpoints", dict(self.gan_checkpoints))
        for v, steps in self.gan_steps.items():
            if v not in GAN_VARIANTS or not isinstance(steps, int) or not 1 <= steps <= 1_000_000:
                raise ValueError(f"gan_steps[{v!r}]={steps!r}: give generator steps (1..1000000) per variant "
                                 f"of {', '.join(GAN_VARIANTS)}.")
        for v in self.gan_checkpoints:
            if v not in GENERATOR_VARIANTS:
                raise ValueError(f"gan_checkpoints: {v!r} is not a generator ({', '.join(GENERATOR_VARIANTS)}).")
        if not 1 <= self.diffusion_steps <= 10_000_000:
            raise ValueError(f"diffusion_steps={self.diffusion_steps}: choose between 1 and 10000000.")
        if self.diffusion_max_seconds is not None and not 1 <= self.diffusion_max_seconds <= 30 * 86400:
            raise ValueError(f"diffusion_max_seconds={self.diffusion_max_seconds}: choose between 1 s and 30 days, "
                             f"or None.")
        if not 1 <= self.diffusion_batch <= 4096:
            raise ValueError(f"diffusion_batch={self.diffusion_batch}: choose between 1 and 4096.")
        if not (8 <= self.diffusion_width <= 256 and self.diffusion_width % 8 == 0):
            raise ValueError(f"diffusion_width={self.diffusion_width}: choose a multiple of 8 between 8 and 256.")
        if not 1 <= self.diffusion_sample_steps <= 1000:
            raise ValueError(f"diffusion_sample_steps={self.diffusion_sample_steps}: choose between 1 and 1000 DDIM steps.")
        if not 0 <= self.diffusion_guidance <= 20:
            raise ValueError(f"diffusion_guidance={self.diffusion_guidance}: choose a scale between 0 and 20.")
        if not 16 <= self.diffusion_quality_real <= 100_000:
            raise ValueError(f"diffusion_quality_real={self.diffusion_quality_real}: choose between 16 and 100000.")
        if self.gan_max_seconds is not None and not 1 <= self.gan_max_seconds <= 30 * 86400:
            raise ValueError(f"gan_max_seconds={self.gan_max_seconds}: choose between 1 s and 30 days, or None.")
        if self.gan_fidelity_every is not None and not 1 <= self.gan_fidelity_every <= 1_000_000:
            raise ValueError(f"gan_fidelity_every={self.gan_fidelity_every}: choose between 1 and 1000000 steps, or None.")
        if self.gan_fidelity_patience is not None and not 1 <= self.gan_fidelity_patience <= 10_000:
            raise ValueError(f"gan_fidelity_patience={self.gan_fidelity_patience}: choose between 1 and 10000 checks, "
                             f"or None.")
        if self.gan_fidelity_patience is not None and self.gan_fidelity_every is None:
            raise ValueError("gan_fidelity_patience needs gan_fidelity_every: a plateau is counted in fidelity checks.")
        if not 0 <= self.gan_cap <= 1000:
            raise ValueError(f"gan_cap={self.gan_cap}: choose between 0 and 1000 synthetic images per real one.")
        from core.balance import resolve_target
        resolve_target({"x": 1}, self.gan_target)   # raises a clear error for a bad target

    def gan_variants(self) -> tuple[str, ...]:
        """The GAN variants the chosen sets need, in table order."""
        out = []
        for key in self.sets:
            s = AUG_SETS[key]
            v = s.variant or (self.combo_variant if s.kind == "classic+gan" else None)
            if v and v not in out:
                out.append(v)
        return tuple(out)

    def key(self) -> str:
        """12 hex digits naming what the study computes (where it runs, device and threads, left out)."""
        d = {k: v for k, v in self.to_dict().items() if k not in ("device", "gan_threads")}
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


# metrics a results table can show (keys of core.classify.evaluate.evaluate's output)
METRICS = ("macro_f1", "balanced_accuracy", "accuracy", "macro_auroc")


def preset(name: str, **overrides) -> StudyConfig:
    """``quick``: phantom at 64 px, the small CNN, real + the 7 classic operations + DCGAN + WGAN,
    one seed, sized to finish in under 15 minutes on 2 CPU cores. ``standard``: the same network and
    size with 3 seeds (so Δ is paired over seeds), every classic operation and the classic pipeline,
    conditional DCGAN + WGAN and their TSTR rows: 13 cells per seed, 39 in all, sized to finish in
    under 45 minutes on 2 CPU cores. ``paper``: VGG16 and Inception-v3, every set, 3 seeds, for a GPU."""
    if name == "quick":
        # fp32: bf16 autocast measured ~25% slower than fp32 for the small CNN at 64 px on this 2-core CPU
        # GANs: 2 minutes each, the best-KID checkpoint. At 64 px (width 16) 6 CPU minutes left both DCGAN and
        # WGAN at grey noise (precision 0.0); at 32 px DCGAN reaches KID 0.075, precision 0.35 in 2 minutes
        # (0.020 / 0.82 in 6), WGAN KID 1.1, precision 0.0 (0.17 / 0.09 in 6): quality.json says which is usable.
        # A check costs ~1 s (512 images): every 100 steps is ~25% of DCGAN's time at 32 px on 2 cores.
        base = StudyConfig(precision="fp32", gan_resolution=32, gan_max_seconds=120.0, gan_fidelity_every=100,
                           gan_steps={"dcgan": 20_000, "wgan": 20_000})
    elif name == "standard":
        # measured on the 1,000-image phantom at 64 px (2 CPU cores, fp32): a cell of 4 epochs x 701 images
        # (equal budget: every cell sees ~2,800) is ~25-30 s, 39 cells ~18 min. The GANs (32 px, as quick:
        # 64 px stays noise on a CPU) stop at 6 minutes (DCGAN measured KID 0.020, precision 0.82 there) or
        # after 2,000 steps without a lower KID: a check every 40 steps with patience 8 stopped DCGAN after
        # 34 s at precision 0.297 on KID noise. ~13 min for both with sampling: ~31 min in all. Measured
        # 2026-12-01: 22 min 50 s; DCGAN plateaued from step 1,000 (stopped at 3,000, precision 0.32),
        # WGAN ran its 6 minutes (precision 0.36); both are usable, both with recall near 0
        base = StudyConfig(sets=("real", *CLASSIC_OPS, "classic", "dcgan", "wgan", "tstr-dcgan", "tstr-wgan"),
                           seeds=(0, 1, 2), precision="fp32", n_boot=1000,
                           gan_resolution=32, gan_max_seconds=360.0, gan_fidelity_every=200,
                           gan_fidelity_patience=10,
                           gan_steps={"dcgan": 20_000, "wgan": 20_000})
    elif name == "paper":
        base = StudyConfig(sets=tuple(AUG_SETS), networks=("vgg16", "inception_v3"), seeds=(0, 1, 2),
                           image_size=224, epochs=30, equal_budget=False, batch_size=32, lr=1e-4, patience=8,
                           n_boot=1000,
                           gan_resolution=128, gan_width=64, gan_cap=5.0,
                           gan_steps={"dcgan": 5000, "wgan": 5000, "wgan-gp": 5000}, combo_variant="wgan-gp",
                           diffusion_steps=30_000, diffusion_width=64, diffusion_batch=64, diffusion_sample_steps=50,
                           diffusion_quality_real=1000)
    else:
        raise ValueError(f"unknown preset {name!r}; choose quick, standard or paper.")
    return dataclasses.replace(base, **overrides) if overrides else base


PRESETS = ("quick", "standard", "paper")


@dataclass(frozen=True)
class Cell:
    set: str
    network: str
    seed: int

    @property
    def key(self) -> str:
        """The cell's identity inside its study (the MLflow tag ``medaug.study.cell``)."""
        return f"{self.set}|{self.network}|s{self.seed}"

    @property
    def slug(self) -> str:
        return self.key.replace("|", "__").replace("+", "plus")


def cells(config: StudyConfig) -> list[Cell]:
    """Every cell, real-only first within each network and seed (so its Δ is known early)."""
    return [Cell(s, n, seed) for seed in config.seeds for n in config.networks for s in config.sets]
