"""torchrun / DistributedDataParallel support shared by the GAN and classifier trainers.

``torchrun --nproc_per_node=N -m core train-gan ...`` starts N copies of the command with
``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` set. :func:`init` joins them into one process
group (NCCL on GPUs, gloo on CPUs); without those variables everything here is a no-op and
a trainer runs as one process.

Semantics: a run keeps the *global* batch of its config. Every rank draws the same random
numbers (the same seed, the same generator state) for the whole global batch: indices,
noise, augmentation parameters. Each rank then takes its own contiguous slice
(:func:`local_part`), so the data seen per step, and the random stream, are the same for
any world size. DDP averages gradients over ranks; with per-rank losses that are means over
the local slice, that is the gradient of the mean over the global batch. Batch norm is
synchronised (:func:`sync_batchnorm`), so its statistics are those of the global batch too.
A run is then the same training as one process with the same global batch, up to float
summation order, and a checkpoint written with one world size resumes with another.

Only rank 0 logs to MLflow, writes checkpoints and sample grids (:func:`is_main`).
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Context()


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher setting WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


_JOINED = False   # whether this process joined a process group (see exit_now)


def init(device: str = "auto") -> Context:
    """Join the process group torchrun describes (once per process); SINGLE when not launched.

    ``device`` is the trainer's setting: "cpu" forces gloo; otherwise NCCL when CUDA is there."""
    if not launched():
        return SINGLE
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        global _JOINED
        _JOINED = True
    return current()


def current() -> Context:
    """The context of an initialised process group, else SINGLE."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    return Context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")),
                   dist.get_backend())


def device_for(ctx: Context, requested: str) -> str:
    """The device of this rank: ``cuda:LOCAL_RANK`` on GPUs under torchrun, else the request."""
    if ctx.active and ctx.backend == "nccl":
        return f"cuda:{ctx.local_rank}"
    if ctx.active and ctx.backend == "gloo" and requested == "auto":
        return "cpu"
    return requested


def local_part(global_batch: int, ctx: Context) -> slice:
    """This rank's contiguous slice of a global batch."""
    if global_batch % ctx.world_size:
        raise ValueError(f"batch={global_batch} cannot be split evenly over {ctx.world_size} processes; "
                         f"choose a batch that is a multiple of --nproc_per_node.")
    n = global_batch // ctx.world_size
    return slice(ctx.rank * n, (ctx.rank + 1) * n)


def default_threads(ctx: Context) -> int | None:
    """CPU threads per process when several share a machine (None: torch's default)."""
    if not ctx.active or ctx.backend != "gloo":
        return None
    local = int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world_size))
    return max(1, (os.cpu_count() or 1) // local)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward is the sum of the ranks' gradients (each rank's loss
    depends on every rank's input through the shared statistics)."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class _CpuSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm over the whole global batch on CPUs (torch's SyncBatchNorm runs on GPUs only).

    Per-channel sums and sums of squares are added over ranks by a differentiable all-reduce,
    so the backward pass is synchronised too."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected a (N, C, ...) input, got shape {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = [0] + list(range(2, x.ndim))
        xf = x.float()
        count = torch.tensor([xf.numel() / xf.shape[1]], dtype=torch.float32)
        stats = _AllReduceSum.apply(torch.cat([xf.sum(dims), (xf * xf).sum(dims), count]))
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)), alpha=m)
        shape = [1, c] + [1] * (x.ndim - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def sync_batchnorm(module: nn.Module, ctx: Context) -> nn.Module:
    """Batch norm layers synchronised over ranks: torch's SyncBatchNorm on GPUs, ours on CPUs.
    Parameters and buffers are kept, so state dicts stay those of the plain model."""
    if not ctx.active:
        return module
    if ctx.backend == "nccl":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, _CpuSyncBatchNorm):
            new = _CpuSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats)
            new.load_state_dict(child.state_dict())
            new.to(next(child.buffers(), torch.empty(0)).device)
            setattr(module, name, new)
        else:
            sync_batchnorm(child, ctx)
    return module


def wrap(module: nn.Module, ctx: Context) -> nn.Module:
    """DistributedDataParallel around ``module`` (the module itself when not distributed).
    Buffers are not broadcast: synchronised batch norm keeps them equal on every rank."""
    if not ctx.active:
        return module
    from torch.nn.parallel import DistributedDataParallel

    import inspect

    ids = [ctx.local_rank] if ctx.backend == "nccl" else None
    # buffers are equal at the start (same seed) and stay equal (synchronised batch norm)
    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
               else {"broadcast_buffers": False})
    return DistributedDataParallel(module, device_ids=ids, **no_sync)


def mean_over_ranks(t: torch.Tensor, ctx: Context) -> torch.Tensor:
    """The average of ``t`` over ranks (``t`` itself when not distributed)."""
    if not ctx.active:
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / ctx.world_size


def agree(flag: bool, ctx: Context) -> bool:
    """Rank 0's decision, on every rank (e.g. "the time budget ran out")."""
    if not ctx.active:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32,
                     device=f"cuda:{ctx.local_rank}" if ctx.backend == "nccl" else "cpu")
    dist.broadcast(t, 0)
    return bool(t.item())


def barrier(ctx: Context) -> None:
    if ctx.active:
        dist.barrier()


@contextmanager
def rank0_first(ctx: Context) -> Iterator[None]:
    """Run the block on rank 0 before the other ranks (which wait at a barrier), so rank 0 builds a
    shared cache (the pixel cache) and the others read it. A plain process just runs the block."""
    if ctx.active and not ctx.is_main:
        barrier(ctx)
    yield
    if ctx.active and ctx.is_main:
        barrier(ctx)


def shutdown() -> None:
    """Leave the process group together: a rank that tears down gloo while another still
    talks to it aborts ("terminate called without an active exception"). Call it on success
    only: after an error, just exit (torchrun then stops the other ranks); a barrier there
    would wait for ranks that are stuck in a collective."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def exit_now(code: int) -> None:
    """End a process that joined a process group with ``os._exit`` once its output is flushed.

    After the Python code is done, gloo's threads sometimes abort the interpreter's own
    teardown ("terminate called without an active exception", SIGABRT, about one run in
    ten on a busy CPU), which torchrun reports as a failed rank. Everything is written by
    then, so skipping that teardown loses nothing. A plain process returns normally."""
    if not _JOINED:
        return
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
