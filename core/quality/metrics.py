"""Per-pair image metrics, batched in torch, with values that match scikit-image.

Every function takes two stacks of grey images of the same shape, ``(N, H, W)`` (uint8, or float
in ``[0, data_range]``), the real/reference image first, and returns one float64 value per pair.

- ``mse``, ``rmse``, ``nrmse`` (scikit-image's ``normalized_root_mse`` with its default
  ``normalization="euclidean"``: ``||ref - test|| / ||ref||``) and ``psnr``
  (``peak_signal_noise_ratio(ref, test, data_range=...)``; ``inf`` for identical images).
- ``ssim``: scikit-image's ``structural_similarity(ref, test, data_range=..., gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False)``, i.e. Wang et al. 2004 with an 11x11 Gaussian window
  (sigma 1.5, truncated at 3.5 sigma), averaged over the pixels whose window lies inside the image
  (scikit-image crops a 5-pixel border). Two engines give the same numbers (tested to 1e-4):
    * ``"torchmetrics"``: torchmetrics' SSIM map (the pairs are laid along the channel axis, so its
      grouped convolution runs depthwise over the whole batch), cropped like scikit-image.
      torchmetrics alone averages the reflect-padded border too, which differs by ~2e-4.
    * ``"separable"``: the same Gaussian window applied as two 1-D passes, each one matrix product
      against a banded block of the kernel (a GEMM, far faster on a CPU than torch's 11x11
      convolution), then the same SSIM formula. ``"auto"`` uses it on CPUs and torchmetrics on GPUs.
- ``ms_ssim``: torchmetrics' multi-scale SSIM (Wang et al. 2003). The standard 5 scales need
  images larger than 160 px; smaller images use the first scales that fit, with their weights
  renormalised to sum to 1 (64 px: 3 scales, 128 px: 4). Negative contrast terms are clipped at 0
  (``normalize="relu"``) so a bad pair scores 0 rather than NaN.
"""
from __future__ import annotations

import math

import numpy as np
import torch

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_RADIUS = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)   # 5: scikit-image's and torchmetrics' window is 11 px
K1, K2 = 0.01, 0.03
MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)   # Wang et al. 2003
ENGINES = ("auto", "separable", "torchmetrics")


def as_batch(images, name: str = "images", convert: bool = True) -> torch.Tensor:
    """(N, H, W) or (H, W) uint8/float array or tensor -> float32 tensor (N, H, W) (or the input's
    dtype with ``convert=False``)."""
    if not isinstance(images, torch.Tensor):
        images = np.ascontiguousarray(images)
        images = torch.from_numpy(images if images.flags.writeable else images.copy())
    t = images
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3:
        raise ValueError(f"{name}: expected grey images shaped (N, H, W), got shape {tuple(t.shape)}.")
    return t.float() if convert and t.dtype != torch.float64 else t


def _pair(x, y, convert: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = as_batch(x, "reference images", convert), as_batch(y, "test images", convert)
    if x.shape != y.shape:
        raise ValueError(f"image pairs must have the same shape: reference {tuple(x.shape)} vs test "
                         f"{tuple(y.shape)}; resize both sets to one size first.")
    return x, y


def _squared_error_sums(x: torch.Tensor, y: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """Per-pair sum of squared differences, float64. uint8 pairs are summed exactly in integers,
    chunk by chunk (no full-size float copies)."""
    n = x.shape[0]
    out = torch.empty(n, dtype=torch.float64)
    exact = not x.is_floating_point() and not y.is_floating_point()
    for i in range(0, n, chunk):
        if exact:
            d = x[i:i + chunk].to(torch.int32) - y[i:i + chunk].to(torch.int32)
            out[i:i + chunk] = d.mul_(d).sum(dim=(1, 2)).double()        # int32 squares, int64 sums
        else:
            d = x[i:i + chunk].double() - y[i:i + chunk].double()
            out[i:i + chunk] = d.mul_(d).sum(dim=(1, 2))
    return out


def mse(x, y) -> np.ndarray:
    x, y = _pair(x, y, convert=False)
    return (_squared_error_sums(x, y) / (x.shape[1] * x.shape[2])).numpy()


def rmse(x, y) -> np.ndarray:
    return np.sqrt(mse(x, y))


def nrmse(x, y) -> np.ndarray:
    """sqrt(MSE) / sqrt(mean(ref^2)) (scikit-image's "euclidean" normalisation; inf for a black ref)."""
    x, y = _pair(x, y, convert=False)
    denom = np.sqrt((_squared_error_sums(x, torch.zeros_like(x[:1]).expand_as(x)) / (x.shape[1] * x.shape[2])).numpy())
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt(mse(x, y)) / denom


def psnr(x, y, data_range: float = 255.0) -> np.ndarray:
    """10 log10(data_range^2 / MSE) in dB; inf for identical images."""
    err = mse(x, y)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(data_range ** 2 / err)


def gaussian_window(dtype=torch.float32) -> torch.Tensor:
    """The 11-tap 1-D Gaussian (sigma 1.5) that scipy.ndimage.gaussian_filter uses, summing to 1."""
    r = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (r / SSIM_SIGMA) ** 2)
    return (g / g.sum()).to(dtype)


def _block_length(n_out: int, most: int = 48) -> int:
    """The largest divisor of ``n_out`` up to ``most``: outputs per GEMM block."""
    return max(d for d in range(1, min(most, n_out) + 1) if n_out % d == 0)


class _BandedFilter:
    """'Valid' 1-D filtering of the last axis as one GEMM: the axis is cut into overlapping blocks
    of ``block + 10`` samples, each multiplied by the same (block + 10, block) banded kernel matrix."""

    def __init__(self, length: int, dtype=torch.float32, device="cpu"):
        n_out = length - 2 * SSIM_RADIUS
        self.block = _block_length(n_out)
        span = self.block + 2 * SSIM_RADIUS
        g = gaussian_window(dtype)
        band = torch.zeros(span, self.block, dtype=dtype)
        for j in range(self.block):
            band[j:j + len(g), j] = g
        self.band = band.to(device)
        self.span = span

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        blocks = x.unfold(-1, self.span, self.block).contiguous()      # (..., n_blocks, span)
        shape = blocks.shape
        return (blocks.view(-1, self.span) @ self.band).view(*shape[:-2], -1)   # (..., n_out)


def _ssim_separable(x: torch.Tensor, y: torch.Tensor, data_range: float, chunk: int) -> torch.Tensor:
    n, h, w = x.shape
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    fw, fh = _BandedFilter(w, dtype, x.device), _BandedFilter(h, dtype, x.device)
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    out = torch.empty(n, dtype=torch.float64)
    for i in range(0, n, chunk):   # small chunks keep the intermediates in cache
        a, b = x[i:i + chunk].to(dtype), y[i:i + chunk].to(dtype)
        # SSIM needs var_a + var_b only as a sum, so a^2 + b^2 is filtered as one map (4, not 5)
        maps = torch.empty((4, *a.shape), dtype=dtype, device=a.device)
        maps[0], maps[1] = a, b
        torch.mul(a, a, out=maps[2])
        maps[2].addcmul_(b, b)
        torch.mul(a, b, out=maps[3])
        # W pass, then H pass on the transposed maps; the mean below does not care about orientation
        mu_a, mu_b, aabb, ab = fh(fw(maps).transpose(-1, -2).contiguous())
        mu_ab = mu_a * mu_b
        ab.sub_(mu_ab).mul_(2).add_(c2)                       # 2 cov + C2
        mu_a.square_()
        mu_b.square_()
        aa = aabb.sub_(mu_a).sub_(mu_b).add_(c2)              # var_a + var_b + C2
        num = mu_ab.mul_(2).add_(c1).mul_(ab)                 # (2 mu_a mu_b + C1)(2 cov + C2)
        den = mu_a.add_(mu_b).add_(c1).mul_(aa)               # (mu_a^2 + mu_b^2 + C1)(var_a + var_b + C2)
        out[i:i + chunk] = num.div_(den).mean(dim=(-2, -1), dtype=torch.float64).cpu()
    return out


def _ssim_torchmetrics(x: torch.Tensor, y: torch.Tensor, data_range: float, chunk: int) -> torch.Tensor:
    from torchmetrics.functional.image import structural_similarity_index_measure

    r = SSIM_RADIUS
    out = torch.empty(x.shape[0], dtype=torch.float64)
    for i in range(0, x.shape[0], chunk):
        # pairs along the channel axis: one depthwise convolution over the chunk
        a = x[i:i + chunk][None].float().contiguous(memory_format=torch.channels_last)
        b = y[i:i + chunk][None].float().contiguous(memory_format=torch.channels_last)
        _, full = structural_similarity_index_measure(b, a, data_range=data_range, gaussian_kernel=True,
                                                      sigma=SSIM_SIGMA, reduction="none", return_full_image=True)
        out[i:i + chunk] = full[0, :, r:-r, r:-r].double().mean(dim=(-2, -1)).cpu()
    return out


def ssim(x, y, data_range: float = 255.0, engine: str = "auto", chunk: int = 2, device: str = "cpu") -> np.ndarray:
    """Mean SSIM of each pair (see the module docstring for the exact definition)."""
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}: choose one of {', '.join(ENGINES)}.")
    x, y = _pair(x, y, convert=False)   # converted chunk by chunk: no full-size float copies
    if min(x.shape[1:]) < 2 * SSIM_RADIUS + 1 + 2:
        raise ValueError(f"SSIM needs images of at least {2 * SSIM_RADIUS + 3} px a side, got {tuple(x.shape[1:])}.")
    x, y = x.to(device), y.to(device)
    if engine == "auto":
        engine = "torchmetrics" if x.device.type == "cuda" else "separable"
    fn = _ssim_separable if engine == "separable" else _ssim_torchmetrics
    return fn(x, y, float(data_range), max(1, chunk)).numpy()


def ms_ssim_scales(height: int, width: int, kernel: int = 2 * SSIM_RADIUS + 1) -> int:
    """How many MS-SSIM scales torchmetrics allows at this size (0: none)."""
    for k in range(len(MS_SSIM_BETAS), 1, -1):
        div = max(1, k - 1) ** 2
        if min(height, width) >= 2 ** k and height // div > kernel - 1 and width // div > kernel - 1:
            return k
    return 0


def ms_ssim(x, y, data_range: float = 255.0, chunk: int = 32) -> tuple[np.ndarray, int]:
    """(MS-SSIM of each pair, scales used); all-NaN with 0 scales when the images are too small."""
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    x, y = _pair(x, y)
    scales = ms_ssim_scales(*x.shape[1:])
    if scales == 0:
        return np.full(x.shape[0], np.nan), 0
    betas = MS_SSIM_BETAS[:scales]
    betas = tuple(float(b) / sum(betas) for b in betas)
    out = np.empty(x.shape[0])
    for i in range(0, x.shape[0], chunk):
        v = multiscale_structural_similarity_index_measure(
            y[i:i + chunk, None], x[i:i + chunk, None], data_range=float(data_range), betas=betas,
            normalize="relu", reduction="none")
        out[i:i + chunk] = v.double().numpy()
    return out, scales


def pair_metrics(reference, test, data_range: float = 255.0, with_ms_ssim: bool = True) -> dict[str, np.ndarray]:
    """All per-pair metrics at once: {"mse", "rmse", "nrmse", "psnr", "ssim", "ms_ssim"}."""
    x, y = _pair(reference, test)
    err = mse(x, y)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = {"mse": err, "rmse": np.sqrt(err), "nrmse": np.sqrt(err) / x.double().pow(2).mean(dim=(1, 2)).sqrt().numpy(),
               "psnr": 10.0 * np.log10(data_range ** 2 / err)}
    out["ssim"] = ssim(x, y, data_range)
    out["ms_ssim"] = ms_ssim(x, y, data_range)[0] if with_ms_ssim else np.full(len(err), np.nan)
    return out


def mean_pairwise_ms_ssim(images, max_pairs: int = 200, seed: int = 0, data_range: float = 255.0) -> dict:
    """Diversity: mean MS-SSIM over random distinct pairs inside one set (a collapsed GAN scores
    high). Falls back to SSIM when the images are too small for MS-SSIM. Returns
    {"value", "std", "pairs", "metric"}; value is NaN for fewer than 2 images."""
    x = as_batch(images)
    n = x.shape[0]
    metric = "ms_ssim" if ms_ssim_scales(*x.shape[1:]) else "ssim"
    if n < 2:
        return {"value": math.nan, "std": math.nan, "pairs": 0, "metric": metric}
    rng = np.random.default_rng(seed)
    total = n * (n - 1) // 2
    if total <= max_pairs:
        i, j = np.triu_indices(n, k=1)
    else:
        i = rng.integers(0, n, max_pairs * 2)
        j = rng.integers(0, n, max_pairs * 2)
        keep = i != j
        i, j = i[keep][:max_pairs], j[keep][:max_pairs]
    a, b = x[torch.from_numpy(i)], x[torch.from_numpy(j)]
    vals = ms_ssim(a, b, data_range)[0] if metric == "ms_ssim" else ssim(a, b, data_range)
    return {"value": float(np.mean(vals)), "std": float(np.std(vals)), "pairs": len(vals), "metric": metric}
