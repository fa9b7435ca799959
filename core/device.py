"""Where tensors live and in what precision: one answer for every trainer and sampler.

- :func:`resolve_device`: the torch device of a ``device`` setting ("auto", "cpu", "cuda",
  "cuda:N"), with a message naming the choices when it is not here.
- :func:`native_bf16` / :func:`use_bf16`: whether bf16 autocast runs for a ``precision`` setting.
- :func:`set_threads`: a job's CPU thread count (under torchrun, one share of the cores each).
- :func:`cpu_model` / :func:`machine_line`: what a benchmark or a training log says about the machine
  it ran on (CPU model, cores, torch threads, whether bf16 is native; the GPU when one is used).
- :func:`images_to_tensor`: uint8 pixels (numpy or torch) as a uint8 (N, 1, R, R) tensor, resized
  once, the form every trainer keeps its data in on the device.

It imports only torch and numpy (and :mod:`core.distributed`), so ``core.gan`` and
``core.classify`` stay importable on a machine with nothing else.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np
import torch

PRECISIONS = ("auto", "fp32", "bf16")
# bf16 autocast on CPUs with native bf16 (AMX / AVX512-BF16). Measured with bench/classify.py --threads 1 on the
# project's 2-core AMX Xeon, images/s against the DataLoader fp32 baseline, medians of 5 rounds in one run:
# small_cnn@64 fp32 1.23x, bf16 2.22x; resnet18@64 fp32 1.09x, bf16 2.36x; and the GAN step likewise
# (bench/gan.py). So "auto" is bf16 where the CPU has it natively, fp32 where it does not.
CPU_BF16_AUTO = True


def resolve_device(name: str) -> torch.device:
    """The torch device of a ``device`` setting; a CUDA device that is not here raises ValueError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device={name!r}: choose auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r}: no CUDA GPU is visible here; use --device cpu or auto.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device={name!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s) "
                         f"(cuda:0 to cuda:{torch.cuda.device_count() - 1}); choose one of them.")
    return device


def check_device_name(device: str) -> None:
    """The spelling check of a config's ``device`` field (whether it is here is :func:`resolve_device`'s)."""
    if device != "auto" and not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"device={device!r}: choose auto, cpu, cuda or cuda:N.")


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matrix maths runs natively here (every CUDA GPU we target; AMX or AVX512-BF16 CPUs)."""
    if device.type == "cuda":
        return True
    cpu = getattr(torch, "cpu", None)
    return any(getattr(cpu, name, lambda: False)() for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what :mod:`platform` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_line(device: torch.device | str | None = None) -> str:
    """One line naming the machine a figure was measured on, printed by every benchmark:
    ``machine: CPU <model>, <n> cores, torch threads <t>, native bf16 yes|no[; GPU <name>]; torch <version>``."""
    cpu = torch.device("cpu")
    line = (f"machine: CPU {cpu_model()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
            f"native bf16 {'yes' if native_bf16(cpu) else 'no'}")
    device = torch.device(device) if device is not None else cpu
    if device.type == "cuda":
        line += f"; GPU {torch.cuda.get_device_name(device)}"
    return f"{line}; torch {torch.__version__}"


def use_bf16(device: torch.device, precision: str) -> bool:
    """bf16 autocast for a ``precision`` setting: "bf16" always, "fp32" never, "auto" on GPUs and on
    CPUs with native bf16 (when :data:`CPU_BF16_AUTO`, which the benchmarks measured)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: choose one of {', '.join(PRECISIONS)}.")
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return True
    return CPU_BF16_AUTO and native_bf16(device)


def precision_line(device: torch.device, precision: str) -> str:
    """What a ``precision`` setting runs as on ``device``, and why, for a job's log and its MLflow tags:
    e.g. ``fp32 (precision auto: AMD EPYC has no native bf16)``."""
    bf16 = use_bf16(device, precision)
    ran = "bf16 autocast" if bf16 else "fp32"
    if precision != "auto":
        return f"{ran} (precision {precision})"
    if device.type == "cuda":
        return f"{ran} (precision auto: a GPU)"
    why = "native bf16" if native_bf16(device) else "no native bf16"
    return f"{ran} (precision auto: {cpu_model()} has {why})"


def set_threads(threads: int | None, ctx) -> None:
    """CPU threads for this process: ``threads``, else one share of the cores per torchrun rank
    (:func:`core.distributed.default_threads` of ``ctx``), else torch's default (one per core)."""
    from core import distributed

    threads = threads or distributed.default_threads(ctx)
    if threads:
        torch.set_num_threads(threads)


def images_to_tensor(images, resolution: int) -> torch.Tensor:
    """uint8 (N, H, W) or (N, 1, H, W), numpy or torch -> uint8 (N, 1, R, R) on the CPU."""
    if isinstance(images, np.ndarray):
        a = np.ascontiguousarray(images)
        t = torch.from_numpy(a if a.flags.writeable else a.copy())   # a memmap or a pandas view is read-only
    else:
        t = torch.as_tensor(images)
    if t.dtype != torch.uint8:
        raise ValueError(f"images: expected uint8 pixels (N, H, W), got {t.dtype}; convert with core.data.io.to_uint8.")
    if t.ndim == 3:
        t = t[:, None]
    if t.ndim != 4 or t.shape[1] != 1 or t.shape[0] < 1:
        raise ValueError(f"images: expected shape (N, H, W) with N >= 1, got {tuple(t.shape)}.")
    if t.shape[-2:] != (resolution, resolution):   # resize once, up front
        f = torch.nn.functional.interpolate(t.float(), size=(resolution, resolution), mode="bilinear",
                                            antialias=True, align_corners=False)
        t = f.round().clamp(0, 255).to(torch.uint8)
    return t.contiguous()
