"""One classifier trainer for every network in :data:`core.classify.models.MODELS`.

``train_classifier(config, train, val, test, class_names)`` trains on in-memory uint8 images,
keeps the weights with the best VALIDATION macro-F1 (early stopping with ``patience``), and
evaluates them once on the untouched TEST split (:func:`core.classify.evaluate.evaluate`).

The data: ``train``/``val``/``test`` are ``(images, labels)`` with uint8 images (N, H, W) (numpy
or torch; resized once to the model's input size if they differ) and class indices (N,). The
trainer applies NO augmentation (no random flips or crops): the study compares augmentation
sets, so the caller passes an already-augmented training array.

One epoch: a seeded permutation of the training indices (or a class-balanced draw with
replacement, ``balance="sampler"``) is cut into batches; each step gathers its batch from the
uint8 tensor on the device, normalises it with the training set's mean and std, and does one
AdamW update (cross-entropy, optionally class-weighted; plus the auxiliary heads' losses for
Inception-v3 and GoogLeNet). Then validation, an atomic checkpoint and ``on_epoch``.

Speed without changing the maths: data on the device as uint8 and batches by index (no
DataLoader, no per-item Python), channels_last, fused AdamW, losses and accuracies summed on
the device and read once per epoch (or every ``log_every`` steps when ``on_step`` is given),
``torch.inference_mode`` for evaluation, and bf16 autocast where it is faster (see
:func:`core.device.use_bf16`). On a CPU in fp32, convolutions whose output has at most 4 positions
per image (ResNet-18's last stage at 64 px) train as im2col + one matrix product, where oneDNN is
slow (:class:`GemmConv2d`; chosen by shape, named in the result's notes).

Determinism: batch order comes from a generator seeded by (seed, epoch) and dropout from the
global torch RNG, saved in each checkpoint, so on a CPU the same seed gives the same metrics
and a resumed run equals an uninterrupted one.

Under torchrun (:mod:`core.distributed`): DistributedDataParallel with synchronised batch
norm; ``batch_size`` stays the GLOBAL batch. Every rank draws the same epoch permutation, cuts
the same global batches, and trains on its own contiguous slice of each (:func:`rank_batches`);
the loss is normalised by the global batch, so a run is the same training as one process with
the same batch and seed (up to float summation order). Only rank 0 checkpoints and reports.
"""
from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core import checkpoints, distributed
from core.classify.evaluate import evaluate, macro_f1
from core.classify.models import build_model, input_size, model_spec
from core.config import DictConfig
from core.device import PRECISIONS, check_device_name, images_to_tensor, resolve_device, set_threads, use_bf16

CHECKPOINT_FILE = "checkpoint.pt"
MODEL_FILE = "model.pt"
CHECKPOINT_FORMAT = "medaug-classifier-checkpoint/1"
MODEL_FORMAT = "medaug-classifier-model/1"
BALANCES = ("none", "weighted_loss", "sampler")
SCHEDULES = ("cosine", "constant")
# fields that may change when resuming; every other field must match the checkpoint
RESUMABLE_FIELDS = ("epochs", "patience", "device", "precision", "threads", "max_seconds", "log_every",
                    "eval_batch_size", "n_boot")


@dataclass(frozen=True)
class ClassifierConfig(DictConfig):
    model: str = "small_cnn"          # key of core.classify.models.MODELS
    image_size: int = 64              # input side in px (Inception-v3 always uses 299)
    epochs: int = 30                  # most epochs; early stopping may end sooner
    batch_size: int = 32              # images per training step
    lr: float = 1e-3                  # AdamW learning rate
    weight_decay: float = 1e-4        # AdamW decoupled weight decay
    schedule: str = "cosine"          # "cosine": lr decays to 0 over `epochs` (set per epoch); "constant"
    seed: int = 0                     # seeds weights, batch order, dropout and the label shuffle
    balance: str = "none"             # "none", "weighted_loss" (loss weights n / (K n_c)) or
                                      # "sampler" (each class drawn equally often, with replacement)
    patience: int | None = 8          # stop after this many epochs without a better val macro-F1; None: never
    device: str = "auto"              # "auto" (cuda if present), "cpu", "cuda" or "cuda:N"
    precision: str = "auto"           # "auto": bf16 autocast on GPUs (and on CPUs where measured faster:
                                      # core.device.CPU_BF16_AUTO); "fp32"; or "bf16" (fp32 weights, bf16 maths)
    weights_path: str | None = None   # local pretrained state dict (weights_only load); None: random init
    aux_logits: bool | None = None    # GoogLeNet's auxiliary heads (default off); Inception-v3 always on
    threads: int | None = None        # CPU threads for this process; None: torch's default
    shuffle_labels: bool = False      # the honesty control: train AND select on label-shuffled train / val
                                      # splits (test labels stay true); expect chance-level test scores
    max_seconds: float | None = None  # time budget of the training loop (checked after each epoch)
    log_every: int = 20               # with on_step: read the running loss every N steps (one host sync)
    eval_batch_size: int = 256        # images per forward pass in validation and test
    n_boot: int = 1000                # bootstrap replicates for the test confidence intervals

    WHAT = "classifier config"

    def __post_init__(self):
        spec = model_spec(self.model)   # ValueError naming the choices
        if not isinstance(self.image_size, int) or not spec.min_size <= self.image_size <= 1024 \
                and spec.fixed_size is None:
            raise ValueError(f"image_size={self.image_size!r}: {self.model} trains at {spec.min_size} to 1024 px "
                             f"(it is meant for {spec.default_size} px).")
        if not isinstance(self.epochs, int) or not 1 <= self.epochs <= 10_000:
            raise ValueError(f"epochs={self.epochs!r}: choose between 1 and 10000.")
        if not isinstance(self.batch_size, int) or not 2 <= self.batch_size <= 4096:
            raise ValueError(f"batch_size={self.batch_size!r}: choose between 2 and 4096 (batch norm needs 2).")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and 0 < self.lr <= 1.0):
            raise ValueError(f"lr={self.lr!r}: choose a learning rate in (0, 1] (1e-3 is a good start for AdamW).")
        if not (isinstance(self.weight_decay, (int, float)) and 0 <= self.weight_decay <= 1.0):
            raise ValueError(f"weight_decay={self.weight_decay!r}: choose between 0 and 1.")
        if self.balance not in BALANCES:
            raise ValueError(f"balance={self.balance!r}: choose one of {', '.join(BALANCES)}.")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r}: choose one of {', '.join(SCHEDULES)}.")
        if self.patience is not None and not (isinstance(self.patience, int) and 1 <= self.patience <= 10_000):
            raise ValueError(f"patience={self.patience!r}: choose at least 1 epoch, or None for no early stopping.")
        check_device_name(self.device)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r}: choose one of {', '.join(PRECISIONS)}.")
        if self.threads is not None and not 1 <= self.threads <= 1024:
            raise ValueError(f"threads={self.threads}: choose between 1 and 1024, or None for torch's default.")
        if self.max_seconds is not None and not 1 <= self.max_seconds <= 30 * 86400:
            raise ValueError(f"max_seconds={self.max_seconds}: choose between 1 s and 30 days.")
        if not 1 <= self.log_every <= 100_000:
            raise ValueError(f"log_every={self.log_every}: choose between 1 and 100000 steps.")
        if not 1 <= self.eval_batch_size <= 65_536:
            raise ValueError(f"eval_batch_size={self.eval_batch_size}: choose between 1 and 65536.")
        if not 0 <= self.n_boot <= 100_000:
            raise ValueError(f"n_boot={self.n_boot}: choose between 0 (no intervals) and 100000.")
        if self.weights_path is not None and not Path(self.weights_path).expanduser().is_file():
            raise ValueError(f"weights_path={self.weights_path!r}: no such file; give a saved state dict "
                             f"or leave it empty for random weights.")

    @property
    def input_size(self) -> int:
        return input_size(self.model, self.image_size)


@dataclass
class ClassifierResult:
    state: str                       # "finished", "early_stopped", "time_budget", "stopped" or "diverged"
    message: str                     # one readable sentence
    history: list[dict]              # per epoch: epoch, train_loss, train_acc, val_loss, val_acc, val_macro_f1, ...
    metrics: dict                    # evaluate() of the best-on-validation weights on the test split ({} if none)
    best_epoch: int                  # 1-based epoch whose weights were tested (0: none)
    seconds: float                   # wall time of this call
    images_per_s: float              # training images per second in this call's training steps
    class_names: list[str] = field(default_factory=list)
    test_probs: np.ndarray | None = None   # (N_test, K) float32 probabilities of the tested weights
    test_labels: np.ndarray | None = None  # (N_test,) int64
    checkpoint: Path | None = None   # the last checkpoint (checkpoint_dir given)
    model_path: Path | None = None   # the tested weights as a self-describing file (checkpoint_dir given)
    precision: str = "fp32"          # what actually ran: "fp32" or "bf16"
    device: str = "cpu"
    notes: list[str] = field(default_factory=list)


StepCallback = Callable[[int, dict], None]
EpochCallback = Callable[[int, dict], None]


# --- small named rules ---------------------------------------------------------------------

def epoch_lr(config: ClassifierConfig, epoch: int) -> float:
    """Learning rate of 1-based ``epoch``: constant, or a cosine from lr down to lr/100 at the last epoch."""
    if config.schedule == "constant" or config.epochs == 1:
        return config.lr
    t = (epoch - 1) / (config.epochs - 1)
    return config.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))


def rank_batches(indices: torch.Tensor, batch_size: int,
                 ctx: distributed.Context) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(this rank's contiguous slice, the whole global batch) for each global batch. Under DDP a
    last batch that does not split evenly over the ranks is trimmed to a multiple of the world size."""
    out = []
    for b in batches(indices, batch_size):
        if ctx.active:
            b = b[:len(b) - len(b) % ctx.world_size]
            if len(b) < ctx.world_size:
                continue
        out.append((b[distributed.local_part(len(b), ctx)], b))
    return out


def epoch_indices(n: int, labels: torch.Tensor, epoch: int, config: ClassifierConfig) -> torch.Tensor:
    """Training indices of one epoch (CPU, int64), deterministic in (seed, epoch).

    ``balance="sampler"`` draws n indices with replacement, each class equally likely;
    otherwise a permutation. Every DDP rank draws the same one (see :func:`rank_batches`)."""
    g = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
    if config.balance == "sampler":
        counts = torch.bincount(labels.cpu(), minlength=int(labels.max()) + 1).double()
        weights = (1.0 / counts.clamp(min=1))[labels.cpu()]
        idx = torch.multinomial(weights, n, replacement=True, generator=g)
    else:
        idx = torch.randperm(n, generator=g)
    return idx


def batches(indices: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Consecutive batches; a last batch of one image is dropped (batch norm needs two)."""
    out = list(indices.split(batch_size))
    if out and len(out[-1]) < 2:
        out.pop()
    return out


def class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Loss weights n / (K' n_c) over the K' classes present (0 for absent ones): a balanced mean."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    present = counts > 0
    w = np.zeros(num_classes)
    w[present] = len(labels) / (present.sum() * counts[present])
    return w


def _as_split(split, name: str, num_classes: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(split, (tuple, list)) or len(split) != 2:
        raise ValueError(f"{name}: expected (images uint8 (N, H, W), labels (N,)), got {type(split).__name__}.")
    if len(split[0]) == 0:
        why = {"train": "there is nothing to train on", "val": "early stopping and model selection need it",
               "test": "evaluation needs the untouched test images"}[name]
        raise ValueError(f"{name}: the {name} split is empty; {why}. Check the dataset's splits (core.data.splits).")
    try:
        images = images_to_tensor(split[0], size)
    except ValueError as e:
        raise ValueError(f"{name} {e}") from None
    labels = torch.as_tensor(np.asarray(split[1])).view(-1)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"{name} labels: expected integer class indices, got {labels.dtype}.")
    labels = labels.long()
    if len(labels) != len(images):
        raise ValueError(f"{name}: {len(labels)} labels for {len(images)} images.")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"{name} labels: class indices must lie in [0, {num_classes - 1}] "
                         f"({num_classes} class names given).")
    return images, labels


def shuffled_labels(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """The control's labels: the same class counts, dealt so that they carry NO information about
    the true class, even in this finite sample.

    A plain permutation leaves chance agreement (a class may keep 16 of its 40 labels where 13
    are expected), which an easy class turns into above-chance test scores. Here every true
    class receives each label in proportion to that label's count (within two images): images
    are grouped by true class in random order and take a label sequence built greedily so that
    every stretch of it has the overall label shares (started at a random phase)."""
    y = labels.cpu().numpy()
    n, k = len(y), int(y.max()) + 1
    share = np.bincount(y, minlength=k) / n
    seq, got = np.empty(n, np.int64), np.zeros(k)
    for i in range(n):   # low-discrepancy sequence: the label furthest below its share so far
        c = int(np.argmax(share * (i + 1) - got))
        seq[i], got[c] = c, got[c] + 1
    rng = np.random.default_rng(seed)
    seq = np.roll(seq, int(rng.integers(n)))      # a random phase: the odd image per class lands anywhere
    order = np.lexsort((rng.permutation(n), y))   # grouped by true class, random within a class
    out = np.empty(n, np.int64)
    out[order] = seq
    return torch.as_tensor(out)


def data_fingerprint(*tensors: torch.Tensor) -> str:
    """SHA-1 of the training and validation pixels and labels: a resumed run must see the same data."""
    h = hashlib.sha1()
    for t in tensors:
        h.update(t.cpu().numpy().tobytes())
    return h.hexdigest()


def _train_val(config: ClassifierConfig, train, val, num_classes: int):
    """(train_x, train_y, val_x, val_y) tensors as the trainer sees them (the control's labels shuffled)."""
    train_x, train_y = _as_split(train, "train", num_classes, config.input_size)
    val_x, val_y = _as_split(val, "val", num_classes, config.input_size)
    if len(train_y) < 2:
        raise ValueError(f"train: {len(train_y)} image(s); a classifier needs at least 2 training images.")
    if config.shuffle_labels:   # the control: same images and class counts, labels carry no signal, and
        # model selection sees none either (choosing the epoch on true val labels is itself a weak learner)
        train_y = shuffled_labels(train_y, config.seed + 104_729)
        val_y = shuffled_labels(val_y, config.seed + 130_363)
    return train_x, train_y, val_x, val_y


def training_fingerprint(config: ClassifierConfig, train, val, class_names) -> str:
    """The fingerprint a :class:`ClassifierTrainer` would give these splits (see :func:`check_resume`)."""
    return data_fingerprint(*_train_val(config, train, val, len(class_names)))


def check_resume(state: dict, config: ClassifierConfig, fingerprint: str, class_names, where: str) -> None:
    """Raise :class:`core.checkpoints.CheckpointError` unless ``state`` can continue with ``config`` on this data
    (only :data:`RESUMABLE_FIELDS` may change). The CLI calls it before any side effect."""
    same = state.get("fingerprint") == fingerprint and state.get("class_names") == [str(c) for c in class_names]
    checkpoints.check_resume(state, config.to_dict(), RESUMABLE_FIELDS, same,
                             "the training/validation data or classes differ from the ones this checkpoint "
                             "was trained on", where)


# --- the CPU convolution path ---------------------------------------------------------------

# A training convolution whose output has at most this many positions per image (ResNet-18's last
# stage at 64 px: 2 x 2) runs as im2col + one matrix product on a CPU in fp32: oneDNN's kernels
# are slow at such shapes (its backward most of all). Measured on a 2-core AMD EPYC (AVX2), forward
# + backward of one conv at batch 32: 512->512 3x3 on 2x2 78-92 ms oneDNN vs 37 ms; 256->512 3x3
# stride 2 from 4x4 21 vs 16.5 ms; but 256->256 3x3 on 4x4 19-22 vs 27 ms, so the rule stops at 4.
# A rule on shapes, not a timing taken at start: the same seed keeps giving the same numbers.
GEMM_CONV_MAX_POSITIONS = 4


def gemm_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride, padding,
                dilation) -> torch.Tensor:
    """``F.conv2d`` (groups 1, zero padding) as im2col (``F.unfold``) and one matrix product; autograd
    differentiates both (the input's gradient is ``F.fold``). The output is channels_last in memory."""
    b, _, h, w = x.shape
    o, c, kh, kw = weight.shape
    oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    cols = F.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)   # (B, C*kh*kw, oh*ow)
    out = cols.transpose(1, 2).reshape(b * oh * ow, c * kh * kw) @ weight.reshape(o, -1).t()
    if bias is not None:
        out = out + bias
    return out.view(b, oh, ow, o).permute(0, 3, 1, 2)


class GemmConv2d(nn.Conv2d):
    """A Conv2d that trains through :func:`gemm_conv2d`; in eval mode or without gradients it is the
    ordinary Conv2d. Same parameters and state-dict keys (the trainer swaps the class in place)."""

    def _conv_forward(self, x, weight, bias):
        if self.training and torch.is_grad_enabled():
            return gemm_conv2d(x, weight, bias, self.stride, self.padding, self.dilation)
        return super()._conv_forward(x, weight, bias)


def use_gemm_convs(net: nn.Module, x: torch.Tensor) -> list[str]:
    """Swap to :class:`GemmConv2d` the convolutions of ``net`` whose output on input ``x`` (a batch of
    the prepared training images) has at most :data:`GEMM_CONV_MAX_POSITIONS` positions per image;
    returns their names. One forward pass in eval mode without gradients: no batch-norm statistics
    change and no random numbers are drawn."""
    sizes: dict[str, int] = {}

    def record(name):
        return lambda m, i, out: sizes.__setitem__(name, out.shape[-2] * out.shape[-1])

    hooks = [m.register_forward_hook(record(name)) for name, m in net.named_modules()
             if type(m) is nn.Conv2d and m.groups == 1 and m.padding_mode == "zeros" and not isinstance(m.padding, str)]
    was_training = net.training
    try:
        net.eval()
        with torch.no_grad():
            net(x)
    finally:
        net.train(was_training)
        for hk in hooks:
            hk.remove()
    chosen = [name for name, n in sizes.items() if n <= GEMM_CONV_MAX_POSITIONS]
    modules = dict(net.named_modules())
    for name in chosen:
        modules[name].__class__ = GemmConv2d
    return chosen


# --- the trainer ---------------------------------------------------------------------------

class ClassifierTrainer:
    """Model, optimiser and the data on one device; ``train_epoch`` / ``train_step`` / ``predict``.

    ``train_classifier`` drives it; ``bench/classify.py`` times ``train_step`` directly."""

    def __init__(self, config: ClassifierConfig, train, val, class_names):
        self.config = config
        self.class_names = [str(c) for c in class_names]
        k = len(self.class_names)
        if k < 2 or len(set(self.class_names)) != k:
            raise ValueError(f"class_names: need at least 2 distinct names, got {self.class_names}.")
        self.num_classes = k
        self.size = config.input_size
        self.ctx = distributed.current()
        self.device = resolve_device(distributed.device_for(self.ctx, config.device))
        self.bf16 = use_bf16(self.device, config.precision)
        self.main_process = self.ctx.is_main
        set_threads(config.threads, self.ctx)

        train_x, train_y, val_x, val_y = _train_val(config, train, val, k)
        self.fingerprint = data_fingerprint(train_x, train_y, val_x, val_y)
        # per-dataset normalisation from the training pixels (float64: exact and order-free)
        px = train_x.double()
        self.mean, self.std = float(px.mean() / 255.0), float(max(px.std() / 255.0, 1e-3))
        del px

        torch.manual_seed(config.seed)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True   # fixed shapes: cuDNN picks its fastest kernels once
        cl = torch.channels_last
        self.train_x = train_x.to(self.device).contiguous(memory_format=cl)   # uint8 (N, 1, S, S)
        self.train_y = train_y.to(self.device)
        self.val_x, self.val_y = val_x.to(self.device), val_y.to(self.device)
        self.n_train = len(train_y)
        net = build_model(config.model, k, 1, config.weights_path, config.aux_logits)
        self.load_report = net.load_report
        self.net = distributed.sync_batchnorm(net.to(self.device, memory_format=cl), self.ctx)
        self.model = distributed.wrap(self.net, self.ctx)    # DDP under torchrun, else the network itself
        self.aux_weight = float(self.net.aux_weight)
        weights = None
        if config.balance == "weighted_loss":
            weights = torch.tensor(class_weights(train_y.numpy(), k), dtype=torch.float32, device=self.device)
        self.loss_weights = weights
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                     fused=True)
        self.notes: list[str] = []
        self.gemm_convs: list[str] = []
        if self.device.type == "cpu" and not self.bf16:
            self.gemm_convs = use_gemm_convs(self.net, self.prepare(self.train_x[:2]))
            if self.gemm_convs:
                self.notes.append(f"CPU fp32: {len(self.gemm_convs)} convolution(s) with at most "
                                  f"{GEMM_CONV_MAX_POSITIONS} output positions train as im2col + matrix product "
                                  f"({', '.join(self.gemm_convs)})")
        self._sums = torch.zeros(2, device=self.device)   # loss * n, correct: summed on the device
        self._seen = 0                                     # images since the last read_sums
        self.step = 0

    def set_lr(self, lr: float) -> None:
        for group in self.opt.param_groups:
            group["lr"] = lr

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def prepare(self, x_u8: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 1, S, S) -> normalised float32, channels_last."""
        x = x_u8.float().mul_(1.0 / 255.0).sub_(self.mean).div_(self.std)
        return x.contiguous(memory_format=torch.channels_last)

    def loss(self, out, y: torch.Tensor, norm: torch.Tensor | float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, main logits). Training-mode Inception-v3 / GoogLeNet return (logits, *aux).

        The (class-weighted) cross-entropy sum divided by ``norm``: by default this batch's weight
        sum, i.e. PyTorch's weighted mean; under DDP the global batch's weight sum / world size,
        so that DDP's gradient average is the global batch's weighted mean."""
        if isinstance(out, tuple):
            logits, aux = out[0], [a for a in out[1:] if a is not None]
        else:
            logits, aux = out, []
        logits = logits.float()
        if norm is None:
            norm = self.loss_weights[y].sum() if self.loss_weights is not None else len(y)
        loss = F.cross_entropy(logits, y, weight=self.loss_weights, reduction="sum") / norm
        for a in aux:
            loss = loss + self.aux_weight * F.cross_entropy(a.float(), y, weight=self.loss_weights,
                                                            reduction="sum") / norm
        return loss, logits

    def train_step(self, idx: torch.Tensor, global_idx: torch.Tensor | None = None) -> None:
        """One AdamW update on the training images ``idx`` (a device tensor). Never syncs with the host.
        Under DDP ``global_idx`` is the whole global batch (``idx`` is this rank's slice of it)."""
        x, y = self.prepare(self.train_x[idx]), self.train_y[idx]
        norm = None
        if self.ctx.active and global_idx is not None:
            g = self.train_y[global_idx]
            norm = (self.loss_weights[g].sum() if self.loss_weights is not None else len(g)) / self.ctx.world_size
        with self.autocast():
            out = self.model(x)
        loss, logits = self.loss(out, y, norm)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        with torch.no_grad():   # summed on the device: no host sync here
            self._sums += torch.stack([loss.detach() * len(idx), (logits.argmax(1) == y).sum().float()])
        self._seen += len(idx)
        self.step += 1

    def read_sums(self) -> tuple[float, float, int]:
        """(mean loss, accuracy, images) since the last read (one host sync); resets the sums."""
        sums = self._sums
        n, self._seen = self._seen, 0
        if self.ctx.active:   # the whole global batch's figures, on every rank
            sums = distributed.mean_over_ranks(sums, self.ctx) * self.ctx.world_size
            n *= self.ctx.world_size
        loss_n, correct = sums.tolist()
        self._sums.zero_()
        return (loss_n / n, correct / n, n) if n else (math.nan, math.nan, 0)

    @torch.inference_mode()
    def predict(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> tuple[np.ndarray, float]:
        """(probabilities (N, K) float32, mean cross-entropy or NaN) of uint8 ``images`` in eval mode."""
        was_training = self.net.training
        self.net.eval()
        probs, loss_sum = [], torch.zeros((), device=self.device)
        try:
            for start in range(0, len(images), self.config.eval_batch_size):
                x = self.prepare(images[start:start + self.config.eval_batch_size].to(self.device))
                with self.autocast():
                    logits = self.net(x).float()
                if labels is not None:
                    y = labels[start:start + len(x)].to(self.device)
                    loss_sum += F.cross_entropy(logits, y, reduction="sum")
                probs.append(torch.softmax(logits, dim=1))
        finally:
            self.net.train(was_training)
        p = torch.cat(probs).cpu().numpy() if probs else np.zeros((0, self.num_classes), np.float32)
        return p, (float(loss_sum) / len(images) if labels is not None and len(images) else math.nan)

    def validate(self) -> dict[str, float]:
        probs, loss = self.predict(self.val_x, self.val_y)
        y = self.val_y.cpu().numpy()
        pred = probs.argmax(1)
        return {"val_loss": loss, "val_acc": float((pred == y).mean()),
                "val_macro_f1": macro_f1(y, pred, self.num_classes)}

    # -- state ----------------------------------------------------------------------------

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.net.state_dict().items()}

    def state_dict(self, loop: dict) -> dict:
        return {
            "format": CHECKPOINT_FORMAT, "config": self.config.to_dict(), "class_names": self.class_names,
            "fingerprint": self.fingerprint, "n_train": self.n_train, "step": self.step,
            "model": self.net.state_dict(), "optimizer": self.opt.state_dict(),
            "rng": checkpoints.rng_state(self.device), "loop": loop, "saved": checkpoints.saved_at(),
        }

    def load_state_dict(self, state: dict, where: str) -> dict:
        """Restore model, optimiser, RNG and step; returns the loop state (epoch, history, best, ...)."""
        check_resume(state, self.config, self.fingerprint, self.class_names, where)
        checkpoints.load_weights({"model": self.net, "optimizer": self.opt}, state, where)
        checkpoints.restore_rng(state["rng"], self.device)
        self.step = int(state["step"])
        return state["loop"]


CHECKPOINT_KIND = checkpoints.Kind(CHECKPOINT_FORMAT, "classifier", "train-classifier",
                                   ("config", "model", "optimizer", "rng", "loop", "step"))
save_checkpoint = checkpoints.save


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """A train-classifier checkpoint (:func:`core.checkpoints.load`)."""
    return checkpoints.load(path, CHECKPOINT_KIND, map_location)


def load_trained(path: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """A trained classifier from ``model.pt`` (written by train_classifier), in eval mode, and its
    description: ``{"arch", "class_names", "input_size", "mean", "std", "config", "best_epoch"}``.
    Feed it ``(uint8 / 255 - mean) / std`` at ``input_size`` px."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{path}: no trained classifier here; train one with train-classifier --out.") from None
    except Exception as e:
        raise ValueError(f"{path}: cannot be read as a trained classifier ({type(e).__name__}: {str(e)[:200]}).") from e
    if not isinstance(state, dict) or state.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path}: not a MedAug classifier model file (format {MODEL_FORMAT!r} expected).")
    info = {k: state[k] for k in ("arch", "class_names", "input_size", "mean", "std", "config", "best_epoch")}
    net = build_model(info["arch"], len(info["class_names"]), 1, None, info["config"].get("aux_logits"))
    net.load_state_dict(state["state_dict"])
    return net.to(device).eval(), info


# --- the loop ------------------------------------------------------------------------------

def train_classifier(config: ClassifierConfig, train, val, test, class_names, *,
                     on_epoch: EpochCallback | None = None, on_step: StepCallback | None = None,
                     checkpoint_dir: str | Path | None = None, resume: bool = False,
                     should_stop: Callable[[], bool] | None = None, meta: Mapping | None = None) -> ClassifierResult:
    """Train ``config.model`` on ``train``, select on ``val``, evaluate on ``test``.

    - ``train``/``val``/``test``: ``(uint8 images (N, H, W), class indices (N,))``.
    - ``on_epoch(epoch, metrics)`` after each epoch (and its checkpoint): train_loss, train_acc,
      val_loss, val_acc, val_macro_f1, best_val_macro_f1, epoch_seconds, img_per_s.
    - ``on_step(step, {"train_loss_step": ...})`` every ``log_every`` steps (one host sync each).
    - ``checkpoint_dir``: an atomic ``checkpoint.pt`` every epoch, and ``model.pt`` (the tested
      weights, :func:`load_trained`) at the end. ``resume=True`` continues from the checkpoint;
      on a CPU the result equals an uninterrupted run. ``meta`` (e.g. the MLflow run id) is stored
      in each checkpoint, so a resumed job continues the same run.
    - ``should_stop()`` is polled every step; True ends the run at once (state "stopped"; the last
      checkpoint stays, so ``resume`` continues from the last finished epoch). The best weights so
      far are still tested, so a stopped run reports metrics, marked by its state.
    """
    t0 = time.perf_counter()
    trainer = ClassifierTrainer(config, train, val, class_names)
    test_x, test_y = _as_split(test, "test", trainer.num_classes, trainer.size)
    ckpt = Path(checkpoint_dir) / CHECKPOINT_FILE if checkpoint_dir is not None else None
    if ckpt is not None:
        ckpt.parent.mkdir(parents=True, exist_ok=True)
    notes = list(trainer.notes)
    if trainer.load_report:
        r = trainer.load_report
        notes.append(f"loaded {r['loaded']} tensors from {r['path']}"
                     + (f"; adapted {', '.join(r['adapted'])} to grey" if r["adapted"] else "")
                     + (f"; kept a fresh head (class count differs): {', '.join(r['skipped_head'])}"
                        if r["skipped_head"] else ""))

    loop = {"epoch": 0, "history": [], "best_epoch": 0, "best_score": -math.inf, "best_weights": None,
            "bad_epochs": 0, "done": None}
    if resume and ckpt is not None and ckpt.is_file():
        loop = trainer.load_state_dict(load_checkpoint(ckpt, trainer.device), str(ckpt))
        notes.append(f"resumed from {ckpt} after epoch {loop['epoch']}")

    train_seconds, train_images = 0.0, 0
    state, message = loop.get("done") or ("finished", "")
    stopped = False
    while loop["done"] is None and loop["epoch"] < config.epochs:
        epoch = loop["epoch"] + 1
        idx_all = epoch_indices(trainer.n_train, trainer.train_y, epoch, config).to(trainer.device)
        if trainer.ctx.active:   # dropout: independent masks per rank, reproducible per (seed, epoch, rank)
            torch.manual_seed(config.seed * 1_000_003 + epoch * 1_009 + trainer.ctx.rank + 1)
        trainer.set_lr(epoch_lr(config, epoch))
        trainer.net.train()
        t_epoch = time.perf_counter()
        for idx, whole in rank_batches(idx_all, config.batch_size, trainer.ctx):
            if should_stop is not None and distributed.agree(should_stop(), trainer.ctx):
                stopped = True
                break
            trainer.train_step(idx, whole)
            if on_step is not None and trainer.main_process and trainer.step % config.log_every == 0:
                on_step(trainer.step, {"train_loss_step": float(trainer._sums[0]) / max(trainer._seen, 1)})
        if stopped:
            state, message = "stopped", f"stopped during epoch {epoch}; the last checkpoint holds epoch {epoch - 1}."
            break
        train_loss, train_acc, n_seen = trainer.read_sums()   # the epoch's one sync
        seconds = time.perf_counter() - t_epoch
        train_seconds += seconds
        train_images += n_seen
        metrics = {"train_loss": train_loss, "train_acc": train_acc, **trainer.validate()}
        if not math.isfinite(train_loss) or not math.isfinite(metrics["val_loss"]):
            loop["done"] = ("diverged", (f"diverged in epoch {epoch} (train loss {train_loss}); "
                                        f"lower the learning rate (lr={config.lr:g})."))
        else:
            if metrics["val_macro_f1"] > loop["best_score"]:
                loop.update(best_score=metrics["val_macro_f1"], best_epoch=epoch, best_weights=trainer.weights(),
                            bad_epochs=0)
            else:
                loop["bad_epochs"] += 1
        metrics.update(best_val_macro_f1=loop["best_score"], lr=epoch_lr(config, epoch), epoch_seconds=seconds,
                       img_per_s=n_seen / max(seconds, 1e-9))
        loop["epoch"] = epoch
        loop["history"].append({"epoch": epoch, **metrics})
        if loop["done"] is None and config.patience and loop["bad_epochs"] >= config.patience:
            loop["done"] = ("early_stopped", (f"early stop after epoch {epoch}: no better val macro-F1 for "
                                             f"{config.patience} epochs (best {loop['best_score']:.3f} at epoch "
                                             f"{loop['best_epoch']})."))
        if ckpt is not None and trainer.main_process:
            save_checkpoint(ckpt, {**trainer.state_dict(loop), "meta": dict(meta or {})})
        if on_epoch is not None and trainer.main_process:
            on_epoch(epoch, dict(metrics))
        if loop["done"] is None and config.max_seconds and distributed.agree(
                time.perf_counter() - t0 >= config.max_seconds, trainer.ctx):
            state, message = "time_budget", f"time budget of {config.max_seconds:g} s ran out after epoch {epoch}."
            break
        if should_stop is not None and distributed.agree(should_stop(), trainer.ctx):
            state, message = "stopped", f"stopped after epoch {epoch}."
            break
    if loop["done"] is not None:
        state, message = loop["done"]
    elif state == "finished":
        message = f"trained {loop['epoch']} epochs."

    metrics: dict = {}
    probs = None
    model_path = None
    if loop["best_weights"] is not None:
        trainer.net.load_state_dict(loop["best_weights"])
        probs, _ = trainer.predict(test_x)
        metrics = evaluate(test_y.numpy(), probs, trainer.class_names, n_boot=config.n_boot, seed=config.seed)
        if ckpt is not None and trainer.main_process:
            model_path = ckpt.parent / MODEL_FILE
            save_checkpoint(model_path, {
                "format": MODEL_FORMAT, "arch": config.model, "class_names": trainer.class_names,
                "input_size": trainer.size, "mean": trainer.mean, "std": trainer.std, "config": config.to_dict(),
                "best_epoch": loop["best_epoch"], "state_dict": loop["best_weights"]})
        message += f" Tested the epoch-{loop['best_epoch']} weights (best val macro-F1 {loop['best_score']:.3f})."
    return ClassifierResult(
        state=state, message=message.strip(), history=loop["history"], metrics=metrics,
        best_epoch=loop["best_epoch"], seconds=round(time.perf_counter() - t0, 3),
        images_per_s=round(train_images / train_seconds, 2) if train_seconds else 0.0,
        class_names=trainer.class_names, test_probs=probs, test_labels=test_y.numpy(),
        checkpoint=ckpt if ckpt is not None and ckpt.is_file() else None, model_path=model_path,
        precision="bf16" if trainer.bf16 else "fp32", device=str(trainer.device), notes=notes)
