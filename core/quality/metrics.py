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
    * ``"separable"``: the same Gaussian window applied as two 1-D passes, each two matrix products
      over a view of the data against the two halves of a banded block of the kernel (GEMMs, far faster
      on a CPU than torch's 11x11 convolution; no copies, no transpose), then the same SSIM formula, in
      chunks of a few pairs that stay in cache, on ``threads`` workers (default: one per torch thread,
      i.e. every core). ``"auto"`` uses it on CPUs and torchmetrics on GPUs.
- ``ssim_psnr``: both at once; the separable engine sums each pair's squared errors in the same pass.
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


def _psnr_db(err: np.ndarray, data_range: float) -> np.ndarray:
    """10 log10(data_range^2 / MSE) in dB; inf where the MSE is 0."""
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(data_range ** 2 / err)


def psnr(x, y, data_range: float = 255.0) -> np.ndarray:
    """10 log10(data_range^2 / MSE) in dB; inf for identical images (uint8 pairs: exact integer sums)."""
    return _psnr_db(mse(x, y), data_range)


def gaussian_window(dtype=torch.float32) -> torch.Tensor:
    """The 11-tap 1-D Gaussian (sigma 1.5) that scipy.ndimage.gaussian_filter uses, summing to 1."""
    r = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (r / SSIM_SIGMA) ** 2)
    return (g / g.sum()).to(dtype)


# Outputs per GEMM block. Measured on a 2-core AMD EPYC (AVX2, MKL), one thread, 256 px: 16 beats 8, 12, 24, 32 and
# the largest divisor of the output length (41 for 246): a block costs 2 * (block + 10) flops an output, and 16 is
# where MKL's skinny GEMMs still run near their best rate.
SEPARABLE_BLOCK = 16
# Pairs per chunk in one worker: 4 pairs x 4 maps x 272^2 float32 = 4.7 MB a buffer, two buffers a worker. Fewer
# pairs pay torch's ~10 us per-op overhead (about 25 ops a chunk) more often, more pairs spill out of the cache.
SEPARABLE_CHUNK = 4


class _BandedFilter:
    """'Valid' 1-D Gaussian filtering of one axis as two GEMMs over a view of the data (no copies).

    The axis, zero-padded to ``padded = (n_blocks + 1) * block`` samples, is cut into blocks of ``block`` samples.
    Outputs ``j*block .. (j+1)*block - 1`` need block ``j`` and the first 10 samples of block ``j + 1``, so a pass
    is ``Y_j = X_j @ top + X_{j+1}[:10] @ bottom`` (``top``, ``bottom``: the two parts of the banded kernel
    matrix): one GEMM over all blocks, one over the same blocks shifted by one. Blocks that straddle two rows or
    images only feed outputs past ``n_out``, which are cropped."""

    def __init__(self, length: int, dtype=torch.float32, device="cpu", block: int = SEPARABLE_BLOCK):
        self.n_out = length - 2 * SSIM_RADIUS
        self.block = block
        self.n_blocks = -(-self.n_out // block)
        self.padded = (self.n_blocks + 1) * block
        g = gaussian_window(dtype)
        band = torch.zeros(block + 2 * SSIM_RADIUS, block, dtype=dtype)
        for j in range(block):
            band[j:j + len(g), j] = g
        self.top, self.bottom = band[:block].contiguous().to(device), band[block:].contiguous().to(device)
        self.top_t, self.bottom_t = self.top.T.contiguous(), self.bottom.T.contiguous()

    def last_axis(self, x: torch.Tensor, out: torch.Tensor) -> None:
        """x, out: contiguous (..., padded); out[..., :n_out] becomes x filtered along the last axis."""
        xs, ys = x.view(-1, self.block), out.view(-1, self.block)
        torch.mm(xs[:-1], self.top, out=ys[:-1])
        ys[:-1].addmm_(xs[1:, :2 * SSIM_RADIUS], self.bottom)

    def second_last_axis(self, x: torch.Tensor, out: torch.Tensor, width: int) -> None:
        """x, out: contiguous (..., padded, W); out[..., :n_out, :width] becomes x[..., :width] filtered along
        axis -2 (a batched GEMM from the left: no transpose)."""
        b, w = self.block, x.shape[-1]
        xs, ys = x.view(-1, b, w)[..., :width], out.view(-1, b, w)[..., :width]
        torch.matmul(self.top_t, xs[:-1], out=ys[:-1])
        ys[:-1].baddbmm_(self.bottom_t.expand(xs.shape[0] - 1, b, 2 * SSIM_RADIUS), xs[1:, :2 * SSIM_RADIUS])


def _separable_worker(x, y, data_range: float, chunk: int, starts, ssim_out, sse_out) -> None:
    """Take chunk starts from the shared iterator ``starts`` until it runs dry; write each pair's mean SSIM and
    sum of squared errors. Buffers are allocated once per worker and zeroed (the padding must stay finite:
    0 x NaN is NaN)."""
    n, h, w = x.shape
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    fw, fh = _BandedFilter(w, dtype, x.device), _BandedFilter(h, dtype, x.device)
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    c = min(chunk, n)
    # a, b, ab + C2/2, a^2 + b^2 + C2 (var_a + var_b is only needed as a sum; the Gaussian sums to 1, so a
    # constant passes through the filter); the H pass writes back into the same buffer
    maps = torch.zeros((4, c, fh.padded, fw.padded), dtype=dtype, device=x.device)
    after_w = torch.zeros_like(maps)
    diff = torch.empty((c, h, w), dtype=dtype, device=x.device)
    a, b, ab, aabb = maps[..., :h, :w]
    mu_a, mu_b, e_ab, e_aabb = maps[..., :fh.n_out, :fw.n_out]
    half_c2 = torch.full((), c2 / 2, dtype=dtype, device=x.device).expand_as(ab)
    full_c2 = torch.full((), c2, dtype=dtype, device=x.device).expand_as(ab)
    prod = torch.empty_like(mu_a)
    for start in starts:
        k = min(c, n - start)   # a short last chunk leaves stale (finite) pairs in the other slots: ignored
        a[:k].copy_(x[start:start + k])   # uint8 -> float once
        b[:k].copy_(y[start:start + k])
        # squared errors for PSNR while the chunk is in cache; uint8 rows up to 258 px sum exactly in float32
        sse = torch.sub(a, b, out=diff).square_().sum(-1).sum(-1, dtype=torch.float64)
        torch.addcmul(half_c2, a, b, out=ab)
        torch.addcmul(full_c2, a, a, out=aabb).addcmul_(b, b)
        fw.last_axis(maps, after_w)
        fh.second_last_axis(after_w, maps, fw.n_out)
        # SSIM = (2 p + C1)(2 cov + C2) / ((q + C1)(var_a + var_b + C2)),  p = mu_a mu_b, q = mu_a^2 + mu_b^2
        #      = 4 (p + C1/2)(E[ab + C2/2] - p) / ((q + C1)(E[a^2 + b^2 + C2] - q))
        p = torch.mul(mu_a, mu_b, out=prod)
        q = mu_a.square_().addcmul_(mu_b, mu_b)
        e_ab.sub_(p)
        e_aabb.sub_(q)
        ratio = p.add_(c1 / 2).mul_(e_ab).div_(q.add_(c1).mul_(e_aabb))
        ssim_out[start:start + k] = ratio.sum(-1).sum(-1, dtype=torch.float64)[:k].cpu()
        sse_out[start:start + k] = sse[:k].cpu()


def _ssim_separable(x: torch.Tensor, y: torch.Tensor, data_range: float, chunk: int,
                    threads: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean SSIM, sum of squared errors) of each pair, float64. ``threads`` > 1 runs that many workers, each
    single-threaded, pulling chunks from one queue: no barrier per operation, so a core taken by another
    process slows the run by its share only (torch's intra-op threads wait for the slowest thread at every op)."""
    n, h, w = x.shape
    ssim_sum = torch.empty(n, dtype=torch.float64)
    sse = torch.empty(n, dtype=torch.float64)
    starts = iter(range(0, n, chunk))   # shared by the workers (a C iterator: next() holds the GIL)
    threads = max(1, min(threads, -(-n // chunk))) if x.device.type == "cpu" else 1
    if threads == 1:
        _separable_worker(x, y, data_range, chunk, starts, ssim_sum, sse)
    else:
        from concurrent.futures import ThreadPoolExecutor

        saved = torch.get_num_threads()

        def work():
            torch.set_num_threads(1)   # this thread's OpenMP / MKL team: 1
            _separable_worker(x, y, data_range, chunk, starts, ssim_sum, sse)

        try:
            with ThreadPoolExecutor(threads) as pool:
                for f in [pool.submit(work) for _ in range(threads)]:
                    f.result()
        finally:
            torch.set_num_threads(saved)   # set_num_threads also sets torch's default for new threads: put it back
    return ssim_sum.mul_(4.0 / ((h - 2 * SSIM_RADIUS) * (w - 2 * SSIM_RADIUS))), sse


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


def _ssim_batch(x, y, data_range, engine, chunk, device, threads) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Checked inputs on ``device`` and the SSIM of each pair; the sum of squared errors too when the
    separable engine ran (None otherwise)."""
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}: choose one of {', '.join(ENGINES)}.")
    x, y = _pair(x, y, convert=False)   # converted chunk by chunk: no full-size float copies
    if min(x.shape[1:]) < 2 * SSIM_RADIUS + 1 + 2:
        raise ValueError(f"SSIM needs images of at least {2 * SSIM_RADIUS + 3} px a side, got {tuple(x.shape[1:])}.")
    x, y = x.to(device), y.to(device)
    if engine == "auto":
        engine = "torchmetrics" if x.device.type == "cuda" else "separable"
    if engine == "torchmetrics":
        return x, y, _ssim_torchmetrics(x, y, float(data_range), max(1, chunk or 2)), None
    threads = threads or torch.get_num_threads()
    return x, y, *_ssim_separable(x, y, float(data_range), max(1, chunk or SEPARABLE_CHUNK), threads)


def ssim(x, y, data_range: float = 255.0, engine: str = "auto", chunk: int | None = None, device: str = "cpu",
         threads: int | None = None) -> np.ndarray:
    """Mean SSIM of each pair (see the module docstring for the exact definition). ``threads``: workers of
    the separable engine (default: torch's thread count, one a core unless set lower)."""
    return _ssim_batch(x, y, data_range, engine, chunk, device, threads)[2].numpy()


def ssim_psnr(x, y, data_range: float = 255.0, engine: str = "auto", chunk: int | None = None, device: str = "cpu",
              threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(SSIM, PSNR) of each pair in one pass over the images: the separable engine sums the squared errors
    of each chunk while it is in cache (exact for uint8 images up to 258 px wide, float32 row sums beyond)."""
    x, y, s, sse = _ssim_batch(x, y, data_range, engine, chunk, device, threads)
    err = (sse / (x.shape[1] * x.shape[2])).numpy() if sse is not None else mse(x, y)
    return s.numpy(), _psnr_db(err, data_range)


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
               "psnr": _psnr_db(err, data_range)}
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
