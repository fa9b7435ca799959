"""Pipelines on torch tensors: an (N, H, W) uint8/uint16 batch on the CPU or a GPU.

- CPU tensors share memory with NumPy and run the NumPy kernels (Pillow's kernels are the
  fastest there, and the results equal :meth:`Pipeline.apply` bit for bit).
- GPU tensors stay on the device. Flips, quarter turns, crops and nearest-neighbour affine
  steps shared by the images are exact copies (the same index maps as on the CPU); other
  affine steps and the elastic warp use ``grid_sample``, zoom uses the antialiased bicubic
  resize (Pillow's filter in floating point), intensity steps run elementwise, so results
  match the CPU within a few grey levels. CLAHE has no GPU kernel: those images make a round
  trip to the CPU. Random fields (noise, elastic) are drawn by NumPy from the planned seeds,
  so both devices see the same randomness.
Only this module imports torch, and only when a tensor arrives. It does not import the
pipeline module: :func:`run_torch` reads the pipeline's ``steps`` and shares the batch
grouping and the NumPy kernels with it through :mod:`core.augment.batch`.
"""
from __future__ import annotations

import functools

import numpy as np

from core.augment.batch import run_kernel, run_numpy, step_groups
from core.augment.ops import _rotate_transpose, elastic_field, get_op, nearest_gather_plan, noise_field


def run_torch(pipeline, x, plans, workers=None, device_kernels: bool | None = None):
    """Run the planned steps of ``pipeline`` (anything with ``steps``) on tensor ``x``.
    ``device_kernels`` (default: on a GPU) picks the torch kernels; tests set it on the CPU to
    check them against the NumPy kernels."""
    import torch

    if not (device_kernels if device_kernels is not None else x.device.type != "cpu"):
        out = run_numpy(pipeline.steps, x.numpy(), plans, workers)
        return torch.from_numpy(np.ascontiguousarray(out))
    dtype = x.dtype
    if dtype not in (torch.uint8, torch.uint16):
        raise ValueError(f"batch: expected a uint8 or uint16 tensor, got {dtype}.")
    out = x if dtype == torch.uint8 else x.to(torch.int32)  # few CUDA ops take uint16
    owned = out is not x                                     # may we write into `out`?
    for s, op, members, applied, out_shape in step_groups(pipeline.steps, plans, tuple(x.shape[1:])):
        kernel = _KERNELS.get(op.name) or (lambda sub, a, d, op=op: _on_cpu(op, sub, a, d, workers))
        if len(members) == len(out):  # the whole batch: no gather, no scatter
            out, owned = kernel(out, applied, dtype).to(out.dtype), True
            continue
        idx = torch.as_tensor(members, device=x.device)
        result = kernel(out.index_select(0, idx), applied, dtype)
        if not owned:
            out, owned = out.clone(), True
        out[idx] = result.to(out.dtype)
    if out.dtype != dtype:
        return out.to(dtype)
    return out if owned else out.clone()


def _on_cpu(op, sub, applied, dtype, workers):
    import torch

    arr = sub.to(dtype).cpu().numpy()
    return torch.from_numpy(run_kernel(op, arr, applied, workers)).to(sub.device).to(sub.dtype)


def _vmax(sub, dtype):
    """Per-image full scale, (n, 1, 1): the rule of :func:`core.augment.ops.value_max`."""
    import torch

    if dtype == torch.uint8:
        return torch.full((len(sub), 1, 1), 255.0, device=sub.device)
    top = sub.reshape(len(sub), -1).amax(1).float()
    vmax = torch.where(top < 256, 255.0, torch.where(top < 4096, 4095.0, 65535.0))
    return vmax.view(-1, 1, 1)


def _finish(values, sub, vmax):
    import torch

    return torch.minimum(torch.round(values).clamp_(min=0), vmax).to(sub.dtype)


def _param(applied, key, sub):
    import torch

    return torch.tensor([a[key] for a in applied], dtype=torch.float32, device=sub.device).view(-1, 1, 1)


# geometric ----------------------------------------------------------------------------

def _affine_grid_sample(sub, inverses, out_shape, mode):
    """Sample each image through its own affine output->input map (continuous pixel coords)."""
    import torch
    import torch.nn.functional as F

    n, h, w = sub.shape
    oh, ow = out_shape
    m = torch.tensor(inverses, dtype=torch.float32, device=sub.device).view(n, 2, 3)
    ys, xs = torch.meshgrid(torch.arange(oh, device=sub.device, dtype=torch.float32) + 0.5,
                            torch.arange(ow, device=sub.device, dtype=torch.float32) + 0.5, indexing="ij")
    pts = torch.stack([xs, ys, torch.ones_like(xs)], -1).view(1, -1, 3)     # (1, oh*ow, 3)
    src = pts @ m.transpose(1, 2)                                           # (n, oh*ow, 2), input pixels
    grid = (src / torch.tensor([w, h], device=sub.device) * 2 - 1).view(n, oh, ow, 2)
    out = F.grid_sample(sub.float().unsqueeze(1), grid, mode=mode, padding_mode="zeros", align_corners=False)
    return out.squeeze(1)


def _affine_kernel(name):
    def kernel(sub, applied, dtype):
        import torch

        op = get_op(name)
        shape = tuple(sub.shape[1:])
        geoms = [op.geometry(a, shape) for a in applied]
        interp = applied[0].get("interpolation", "nearest")
        same = all(a == applied[0] for a in applied)
        if same and name == "rotate" and _rotate_transpose(applied[0]["angle"], shape) is not None:
            return torch.rot90(sub, _rotate_transpose(applied[0]["angle"], shape), dims=(1, 2))
        if same and interp == "nearest":  # exact: Pillow's own index map, gathered on the device
            index, outside = _device_plan(geoms[0].inverse, shape, geoms[0].out_shape, str(sub.device))
            flat = sub.reshape(len(sub), -1).index_select(1, index)
            flat[:, outside] = 0
            return flat.view(len(sub), *geoms[0].out_shape)
        vals = _affine_grid_sample(sub, [g.inverse for g in geoms], geoms[0].out_shape, interp)
        return _finish(vals, sub, _vmax(sub, dtype))
    return kernel


@functools.lru_cache(maxsize=32)
def _device_plan(inverse, in_shape, out_shape, device):
    """:func:`nearest_gather_plan` as tensors on ``device``, uploaded once per geometry."""
    import torch

    return tuple(torch.as_tensor(v, device=device) for v in nearest_gather_plan(inverse, in_shape, out_shape))


def _crop(sub, applied, dtype):
    x0, y0, x1, y1 = applied[0]["box"]
    return sub[:, y0:y1, x0:x1].contiguous()


def _zoom(sub, applied, dtype):
    import torch
    import torch.nn.functional as F

    h, w = sub.shape[1:]
    vmax = _vmax(sub, dtype)
    out = torch.empty((len(sub), h, w), dtype=torch.float32, device=sub.device)
    groups: dict[tuple, list[int]] = {}
    for i, a in enumerate(applied):
        groups.setdefault(tuple(a["box"]), []).append(i)
    for (x0, y0, x1, y1), members in groups.items():  # one resize per distinct box
        idx = torch.as_tensor(members, device=sub.device)
        crop = sub.index_select(0, idx)[:, y0:y1, x0:x1].float().unsqueeze(1)
        out[idx] = F.interpolate(crop, size=(h, w), mode="bicubic", antialias=True, align_corners=False)[:, 0]
    return _finish(out, sub, vmax)


def _elastic(sub, applied, dtype):
    import torch

    h, w = sub.shape[1:]
    fields = [elastic_field(a, (h, w)) for a in applied]
    dx = torch.as_tensor(np.stack([f[0] for f in fields]), device=sub.device)
    dy = torch.as_tensor(np.stack([f[1] for f in fields]), device=sub.device)
    import torch.nn.functional as F

    xs = torch.arange(w, device=sub.device, dtype=torch.float32).view(1, 1, w) + 0.5 + dx
    ys = torch.arange(h, device=sub.device, dtype=torch.float32).view(1, h, 1) + 0.5 + dy
    grid = torch.stack([xs / w * 2 - 1, ys / h * 2 - 1], -1)
    vals = F.grid_sample(sub.float().unsqueeze(1), grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False).squeeze(1)
    return _finish(vals, sub, _vmax(sub, dtype))


# intensity ----------------------------------------------------------------------------

def _gamma(sub, applied, dtype):
    vmax = _vmax(sub, dtype)
    vals = vmax * (sub.float().clamp(max=vmax) / vmax) ** _param(applied, "gamma", sub)
    return _finish(vals, sub, vmax)


def _brightness_contrast(sub, applied, dtype):
    vmax = _vmax(sub, dtype)
    x = sub.float().clamp(max=vmax)
    mean = sub.float().mean(dim=(1, 2), keepdim=True)
    vals = (x - mean) * _param(applied, "contrast", sub) + mean + _param(applied, "brightness", sub) * vmax
    return _finish(vals, sub, vmax)


def _noise(sub, applied, dtype):
    import torch

    vmax = _vmax(sub, dtype)
    noise = torch.as_tensor(np.stack([noise_field(a, tuple(sub.shape[1:])) for a in applied]), device=sub.device)
    return _finish(sub.float() + noise * _param(applied, "sigma", sub) * vmax, sub, vmax)


def _blur(sub, applied, dtype):
    import torch
    import torch.nn.functional as F

    vmax = _vmax(sub, dtype)
    outs = []
    for i, a in enumerate(applied):
        img = sub[i:i + 1].float().unsqueeze(1)
        if a["sigma"] > 0:  # scipy's kernel: radius int(4 sigma + 0.5), edges repeated
            r = int(4.0 * a["sigma"] + 0.5)
            t = torch.arange(-r, r + 1, device=sub.device, dtype=torch.float32)
            k = torch.exp(-0.5 * (t / a["sigma"]) ** 2)
            k = k / k.sum()
            img = F.conv2d(F.pad(img, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
            img = F.conv2d(F.pad(img, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
        outs.append(img[:, 0])
    return _finish(torch.cat(outs), sub, vmax)


def _erase(sub, applied, dtype):
    import torch

    vmax = _vmax(sub, dtype)
    out = sub.clone()
    for i, a in enumerate(applied):
        rng = np.random.default_rng(a["seed"])
        mean = round(float(sub[i].float().mean()))
        for x0, y0, x1, y1 in a["rects"]:
            if a["fill"] == "black":
                out[i, y0:y1, x0:x1] = 0
            elif a["fill"] == "mean":
                out[i, y0:y1, x0:x1] = mean
            else:
                top = int(vmax[i].item())
                noise = rng.integers(0, top + 1, size=(y1 - y0, x1 - x0))
                out[i, y0:y1, x0:x1] = torch.as_tensor(noise, device=sub.device).to(sub.dtype)
    return out


_KERNELS = {
    "rotate": _affine_kernel("rotate"),
    "shear": _affine_kernel("shear"),
    "translate_scale": _affine_kernel("translate_scale"),
    "hflip": lambda sub, applied, dtype: sub.flip(2),
    "vflip": lambda sub, applied, dtype: sub.flip(1),
    "crop": _crop,
    "zoom": _zoom,
    "elastic": _elastic,
    "gamma": _gamma,
    "brightness_contrast": _brightness_contrast,
    "gaussian_noise": _noise,
    "gaussian_blur": _blur,
    "random_erasing": _erase,
}
