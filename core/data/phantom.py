"""Procedural spine-radiograph phantoms with one VinDr-SpineXR-style finding each.

``render_phantom(label, size, seed)`` draws a lateral, lumbar-like radiograph:
soft tissue with air outside the body and bowel gas, a gently curved column of
5-7 vertebral bodies (bright cortical rim, trabecular texture, darker discs),
posterior elements (pedicles, articular pillars, spinous processes, neural
foramina), random pose / exposure / gamma / noise and collimation borders.
The finding for ``label`` is drawn into it and boxed.

Random streams are split so that the *normal anatomy* depends on ``seed`` only
and the *finding* on ``(seed, label)``: for the localised findings (osteophytes,
surgical implant, foraminal stenosis, other lesions) the image differs from the
``"No finding"`` image of the same seed only around the boxes.  Findings are
placed on vertebrae away from the image border and the collimation margin.

Only numpy is imported (no scipy, torch, ...) so that worker subprocesses import it cheaply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "CLASS_NAMES",
    "TRAIN_IMAGE_ESTIMATE",
    "Box",
    "PhantomSample",
    "class_counts",
    "render_phantom",
]

CLASS_NAMES: tuple[str, ...] = (
    "No finding",
    "Osteophytes",
    "Disc space narrowing",
    "Surgical implant",
    "Foraminal stenosis",
    "Spondylolysthesis",
    "Vertebral collapse",
    "Other lesions",
)

# Approximate per-class counts of *training images* in VinDr-SpineXR.  The release
# publishes box counts, not image counts; these numbers are ESTIMATED from the box
# counts (e.g. an Osteophytes image carries ~4 boxes on average), so treat them as
# proportions for a realistic class imbalance, not as exact figures.
TRAIN_IMAGE_ESTIMATE: dict[str, int] = {
    "No finding": 4257,
    "Osteophytes": 2900,
    "Disc space narrowing": 520,
    "Foraminal stenosis": 300,
    "Other lesions": 330,
    "Surgical implant": 230,
    "Spondylolysthesis": 200,
    "Vertebral collapse": 180,
}

MIN_SIZE = 32
MAX_SIZE = 2048


def class_counts(n: int) -> dict[str, int]:
    """Split ``n`` images over CLASS_NAMES in TRAIN_IMAGE_ESTIMATE proportions.

    Largest-remainder rounding; the counts sum to ``n`` exactly and, when
    ``n >= len(CLASS_NAMES)``, every class gets at least one image (taken from
    the currently largest class).  Keys are in CLASS_NAMES order.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise ValueError(f"The number of images must be a whole number, got {n!r}.")
    n = int(n)
    if n < 1:
        raise ValueError(f"The number of images must be at least 1, got {n}.")
    weights = [TRAIN_IMAGE_ESTIMATE[name] for name in CLASS_NAMES]
    total = sum(weights)
    quotas = [n * w / total for w in weights]
    counts = [int(math.floor(q)) for q in quotas]
    left = n - sum(counts)
    # largest fractional part first; ties go to the earlier (larger) class
    order = sorted(range(len(CLASS_NAMES)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order[:left]:
        counts[i] += 1
    if n >= len(CLASS_NAMES):
        for i in range(len(counts)):
            if counts[i] == 0:
                donor = max(range(len(counts)), key=lambda j: (counts[j], -j))
                counts[donor] -= 1
                counts[i] += 1
    return {name: c for name, c in zip(CLASS_NAMES, counts)}


@dataclass(frozen=True)
class Box:
    """Axis-aligned box in continuous pixel coordinates (pixel j spans [j, j+1))."""

    label: str
    xmin: float
    ymin: float
    xmax: float
    ymax: float


@dataclass
class PhantomSample:
    image: np.ndarray  # float32 (size, size) in [0, 1], bright = bone / metal
    label: str
    boxes: list[Box] = field(default_factory=list)
    sign: dict[str, float] = field(default_factory=dict)
    vertebrae: list[dict] = field(default_factory=list)


# --------------------------------------------------------------------------- helpers


def _gauss_rows(a: np.ndarray, sigma: float, truncate: float) -> np.ndarray:
    """Gaussian filter along axis 0 with 'reflect' borders (the kernel of scipy.ndimage)."""
    r = int(truncate * sigma + 0.5)
    if r < 1 or sigma <= 0:
        return a
    x = np.arange(-r, r + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    w = (w / w.sum()).astype(np.float32)
    p = np.pad(a, ((r, r), (0, 0)), mode="symmetric")
    n = a.shape[0]
    out = p[r:r + n] * w[r]
    tmp = np.empty_like(out)
    for k in range(1, r + 1):
        np.add(p[r - k:r - k + n], p[r + k:r + k + n], out=tmp)
        tmp *= w[r + k]
        out += tmp
    return out


def _gauss(a: np.ndarray, sigma, truncate: float = 3.0) -> np.ndarray:
    """Separable 2-D Gaussian blur; sigma is a number or (sigma_rows, sigma_cols)."""
    sy, sx = (sigma, sigma) if np.isscalar(sigma) else sigma
    out = _gauss_rows(a, sy, truncate)
    return np.ascontiguousarray(_gauss_rows(np.ascontiguousarray(out.T), sx, truncate).T)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / float(np.hypot(v[0], v[1]))


def _crop(size: int, cx: float, cy: float, rad: float):
    """Pixel window around (cx, cy); returns (slices, dx row, dy column) or None."""
    x0 = max(int(math.floor(cx - rad)), 0)
    x1 = min(int(math.ceil(cx + rad)) + 1, size)
    y0 = max(int(math.floor(cy - rad)), 0)
    y1 = min(int(math.ceil(cy + rad)) + 1, size)
    if x0 >= x1 or y0 >= y1:
        return None
    dx = np.arange(x0, x1, dtype=np.float32) + np.float32(0.5 - cx)
    dy = np.arange(y0, y1, dtype=np.float32) + np.float32(0.5 - cy)
    return (slice(y0, y1), slice(x0, x1)), dx[None, :], dy[:, None]


def _local(size, c, eu, ev, rad):
    """Local (u, v) coordinates of a pixel window around centre c in frame (eu, ev)."""
    w = _crop(size, float(c[0]), float(c[1]), rad)
    if w is None:
        return None
    sl, dx, dy = w
    u = dx * np.float32(eu[0]) + dy * np.float32(eu[1])
    v = dx * np.float32(ev[0]) + dy * np.float32(ev[1])
    return sl, u, v


def _sd_round_box(u, v, hu, hv, r):
    """Signed distance to a rounded box with half extents (hu, hv) (arrays allowed)."""
    qx = np.abs(u) - (hu - r)
    qy = np.abs(v) - (hv - r)
    out = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return out + np.minimum(np.maximum(qx, qy), 0) - r


def _fill(d):
    """Anti-aliased coverage of the region d < 0 (one-pixel ramp)."""
    return np.clip(np.float32(0.5) - d, 0, 1)


def _stamp_bone(dens, sl, d, level, rim_level, rim_t, tex, tex_amp, extra=None, add=0.0):
    """Bone with interior density ``level`` (+ texture, + ``extra``) and a cortical rim.

    ``add == 0`` composites with max (solid structures); ``add > 0`` adds ``add`` times
    the bone (superimposed thin structures, as in a projection radiograph).
    """
    inside = _fill(d)
    rim = np.clip(d + np.float32(rim_t + 0.5), 0, 1)
    inner = np.float32(level) + np.float32(tex_amp) * tex[sl]
    if extra is not None:
        inner = inner + extra
    val = inside * (inner + np.float32(rim_level - level) * rim)
    if add:
        dens[sl] += np.float32(add) * val
    else:
        np.maximum(dens[sl], val, out=dens[sl])
    return inside


def _sd_polygon(px, py, pts):
    """Approximate signed distance to a convex polygon (max of edge half-planes)."""
    pts = np.asarray(pts, dtype=np.float64)
    area = 0.0
    for i in range(len(pts)):
        x0, y0 = pts[i]
        x1, y1 = pts[(i + 1) % len(pts)]
        area += x0 * y1 - x1 * y0
    sgn = 1.0 if area > 0 else -1.0
    d = None
    for i in range(len(pts)):
        x0, y0 = pts[i]
        x1, y1 = pts[(i + 1) % len(pts)]
        ex, ey = x1 - x0, y1 - y0
        ln = math.hypot(ex, ey) or 1.0
        nx, ny = sgn * ey / ln, -sgn * ex / ln  # outward normal
        de = (px - np.float32(x0)) * np.float32(nx) + (py - np.float32(y0)) * np.float32(ny)
        d = de if d is None else np.maximum(d, de)
    return d


def _bbox_points(points, pad=0.5):
    pts = np.asarray(points, dtype=np.float64)
    return (pts[:, 0].min() - pad, pts[:, 1].min() - pad,
            pts[:, 0].max() + pad, pts[:, 1].max() + pad)


def _make_box(label, bb, size):
    x0, y0, x1, y1 = (float(np.clip(v, 0, size)) for v in bb)
    if x1 - x0 < 1.0:  # keep boxes non-degenerate even for tiny images
        mid = min(max((x0 + x1) / 2, 0.5), size - 0.5)
        x0, x1 = mid - 0.5, mid + 0.5
    if y1 - y0 < 1.0:
        mid = min(max((y0 + y1) / 2, 0.5), size - 0.5)
        y0, y1 = mid - 0.5, mid + 0.5
    return Box(label, x0, y0, x1, y1)


class _Level:
    """One vertebra: centre, local frame (eu posterior, ev caudal) and body shape."""

    def __init__(self, c, eu, ev, a, b_ant, b_post, s, shift):
        self.c = c
        self.eu = eu
        self.ev = ev
        self.a = a
        self.b_ant = b_ant
        self.b_post = b_post
        self.s = s
        self.shift = shift

    @property
    def b_mid(self):
        return 0.5 * (self.b_ant + self.b_post)

    def img(self, u, v):
        return self.c + u * self.eu + v * self.ev

    def corners(self):
        a = self.a
        return [self.img(-a, -self.b_ant), self.img(a, -self.b_post),
                self.img(a, self.b_post), self.img(-a, self.b_ant)]


def _body_sdf(u, v, a, b_ant, b_post, r, conc, waist):
    """Rounded (possibly wedge-shaped) vertebral body with concave endplates/waist."""
    t = np.clip(u / np.float32(a), -1, 1)
    hv = np.float32(b_ant) + np.float32(b_post - b_ant) * (t + 1) * np.float32(0.5)
    hv = hv * (1 - np.float32(conc) * (1 - t * t))
    tv = np.clip(v / np.float32(max(b_post, b_ant)), -1, 1)
    hu = np.float32(a) * (1 - np.float32(waist) * (1 - tv * tv))
    return _sd_round_box(u, v, hu, hv, np.float32(r))


# --------------------------------------------------------------------------- renderer


def _validate(label, size, seed):
    if not isinstance(label, str) or label not in CLASS_NAMES:
        raise ValueError(
            f"Unknown label {label!r}; valid labels are: " + ", ".join(repr(c) for c in CLASS_NAMES) + "."
        )
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise ValueError(f"size must be a whole number of pixels, got {size!r}.")
    if not MIN_SIZE <= int(size) <= MAX_SIZE:
        raise ValueError(f"size must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {size}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise ValueError(f"seed must be a non-negative whole number, got {seed!r}.")


def render_phantom(label: str, size: int = 256, seed: int = 0) -> PhantomSample:
    """Render one phantom radiograph with the finding ``label``.

    Deterministic for (label, size, seed).  Raises ValueError for an unknown
    label, a size outside [32, 2048] or a negative seed.
    """
    _validate(label, size, seed)
    size = int(size)
    seed = int(seed)
    lab_idx = CLASS_NAMES.index(label)
    rng = np.random.default_rng([seed, 11])  # anatomy, pose, exposure (label independent)
    rng_px = np.random.default_rng([seed, 23])  # texture and noise fields
    rng_s = np.random.default_rng([seed, 37, lab_idx])  # the finding
    S = size / 256.0
    f32 = np.float32

    # ---------------------------------------------------------------- anatomy
    n = int(rng.integers(5, 8))
    span = rng.uniform(0.84, 1.02)
    pitch = span * size / n
    b0 = pitch * rng.uniform(0.355, 0.39)
    g0 = pitch - 2 * b0
    a0 = b0 * rng.uniform(1.30, 1.55)
    b_nom = b0 * (1 + 0.06 * (np.arange(n) - (n - 1) / 2) / n) * rng.uniform(0.96, 1.04, n)
    a_nom = a0 * (1 + 0.06 * np.arange(n) / n) * rng.uniform(0.97, 1.03, n)
    wedge_nom = rng.uniform(0.94, 1.05, n)
    gaps = g0 * rng.uniform(0.88, 1.12, n - 1)
    pl = a0 * rng.uniform(0.50, 0.62)  # pedicle length
    pw = a0 * rng.uniform(0.50, 0.62)  # articular pillar width
    sp_len = a0 * rng.uniform(0.8, 1.05)
    sp_tilt = math.radians(rng.uniform(8, 24))
    pillar_shear = math.tan(math.radians(rng.uniform(5, 15)))
    theta = math.radians(rng.uniform(-7, 7))
    facing = 1.0 if rng.random() < 0.5 else -1.0
    lordosis = rng.uniform(0.0, 0.05) * size
    cubic = rng.uniform(-0.012, 0.012) * size
    e_s = np.array([-math.sin(theta), math.cos(theta)])  # caudal
    e_t = facing * np.array([math.cos(theta), math.sin(theta)])  # posterior
    c0 = np.array([size / 2 + rng.uniform(-0.04, 0.04) * size,
                   size / 2 + rng.uniform(-0.03, 0.03) * size]) - e_t * (1.05 * a0)
    # soft tissue / exposure / collimation
    t_back = 1.1 * a0 + pl + pw + sp_len + rng.uniform(0.03, 0.22) * size
    t_front = -a0 - rng.uniform(0.22, 0.55) * size
    waves = [(rng.uniform(0.5, 2.5) * 2 * math.pi / size, rng.uniform(0, 2 * math.pi),
              rng.uniform(0, 2 * math.pi), rng.uniform(0.02, 0.05)) for _ in range(3)]
    heel = rng.uniform(-0.15, 0.15)
    gas = [(rng.uniform(0, 1), rng.uniform(-0.48, 0.48) * size, rng.uniform(0.02, 0.06) * size,
            rng.uniform(1.0, 2.0), rng.uniform(0, math.pi), rng.uniform(0.25, 0.55))
           for _ in range(int(rng.integers(2, 7)))]
    lo = rng.uniform(0.02, 0.06)
    w_t = rng.uniform(0.25, 0.36)
    w_b = rng.uniform(0.45, 0.56)
    gamma = rng.uniform(0.85, 1.2)
    sig_q = rng.uniform(0.012, 0.035)
    sig_e = rng.uniform(0.004, 0.012)
    collim = []
    for side in range(4):
        if rng.random() < 0.35:
            dark = rng.random() < 0.5
            collim.append((side, rng.uniform(0.015, 0.05) * size, math.radians(rng.uniform(-1, 1)),
                           rng.uniform(0.0, 0.06) if dark else rng.uniform(0.80, 0.92)))
    tex_amp = rng.uniform(0.06, 0.10)
    body_level = 0.36 + rng.uniform(-0.04, 0.04, n)
    body_round = rng.uniform(0.2, 0.34, n)  # corner radius / half height
    body_conc = rng.uniform(0.02, 0.08, n)  # endplate concavity
    body_waist = rng.uniform(0.02, 0.07, n)  # concave anterior / posterior walls
    bilat = (rng.uniform(0.03, 0.10) * a0) * np.array([rng.uniform(-1, 1), rng.uniform(-1, 1)])
    sp_h = rng.uniform(0.5, 0.75)  # spinous process half height / body half height
    fat = (rng.uniform(0.02, 0.05) * size, rng.uniform(0.15, 0.35))
    # superimposed iliac crest / ribs, anchored to the lowest / highest vertebra so that a
    # finding that changes the column's length does not move them across other discs.
    # (anchor level, s offset, t offset, R, thickness, fill density, rim density, sector dir, cos half-angle)
    arcs = []
    if rng.random() < 0.7:  # iliac crest over the lowest levels
        R = rng.uniform(0.45, 0.8) * size
        rel = -rng.uniform(0.1, 1.4) * pitch
        arcs.append((-1, rel + R, rng.uniform(0.3, 1.8) * a0, R, rng.uniform(0.012, 0.02) * size,
                     rng.uniform(0.06, 0.12), rng.uniform(0.06, 0.12), -e_s,
                     math.cos(math.radians(rng.uniform(30, 45)))))
    for _ in range(int(rng.integers(0, 3))):  # lower ribs crossing the top
        R = rng.uniform(0.6, 1.2) * size
        ang = math.radians(rng.uniform(-35, 35))
        dirv = math.cos(ang) * (-e_s) + math.sin(ang) * e_t
        rel = rng.uniform(-0.3, 1.5) * pitch
        arcs.append((0, rel + R * math.cos(ang), -R * math.sin(ang), R, rng.uniform(0.012, 0.02) * size,
                     0.0, rng.uniform(0.05, 0.10), dirv, math.cos(math.radians(rng.uniform(12, 22)))))

    # ---------------------------------------------------------------- layout
    def layout(b_ant, b_post, gaps_, shifts):
        hc = b_ant + b_post  # full height at the column centre line
        s = np.zeros(n)
        for i in range(1, n):
            s[i] = s[i - 1] + hc[i - 1] / 2 + gaps_[i - 1] + hc[i] / 2
        s -= (s[0] - hc[0] / 2 + s[-1] + hc[-1] / 2) / 2
        half = max(abs(s[0]), abs(s[-1]), 1.0)
        levels = []
        for i in range(n):
            x = s[i] / half
            t = -lordosis * (1 - x * x) + cubic * (x ** 3 - x) - shifts[i]
            dt = (2 * lordosis * x + cubic * (3 * x * x - 1)) / half
            ev = _unit(e_s + dt * e_t)
            eu = _unit(e_t - dt * e_s)
            levels.append(_Level(c0 + s[i] * e_s + t * e_t, eu, ev, float(a_nom[i]),
                                 float(b_ant[i]), float(b_post[i]), float(s[i]), float(shifts[i])))
        return levels

    b_post0 = 2 * b_nom / (1 + wedge_nom)
    b_ant0 = wedge_nom * b_post0
    shifts0 = np.zeros(n)
    levels = layout(b_ant0, b_post0, gaps, shifts0)

    margin = 0.085 * size

    def inside_safe(points):
        p = np.asarray(points)
        return bool(np.all(p >= margin) and np.all(p <= size - margin))

    def safe_body(i):
        return inside_safe(levels[i].corners())

    def safe_post(i):
        L = levels[i]
        return safe_body(i) and inside_safe([L.img(L.a + pl + pw, -L.b_post), L.img(L.a + pl + pw, L.b_post)])

    def pick(cands, fallback):
        return int(rng_s.choice(cands)) if cands else int(fallback)

    mid = (n - 1) / 2
    centre_level = int(round(mid))
    sign: dict[str, float] = {}
    b_ant, b_post, shifts = b_ant0.copy(), b_post0.copy(), shifts0.copy()
    gaps_f = gaps.copy()
    dens_boost = np.zeros(n)
    level_j = None

    if label == "Disc space narrowing":
        cands = [j for j in range(n - 1) if safe_body(j) and safe_body(j + 1)]
        level_j = pick(cands, min(centre_level, n - 2))
        ratio = rng_s.uniform(0.22, 0.38)
        others = np.delete(gaps_f, level_j)
        gaps_f[level_j] = ratio * float(np.median(others))
        sign = {"disc_ratio": float(gaps_f[level_j] / np.median(others)), "level": float(level_j)}
    elif label == "Spondylolysthesis":
        cands = [j for j in range(n - 1) if safe_post(j) and safe_body(j + 1)]
        level_j = pick(cands, min(centre_level, n - 2))
        frac = rng_s.uniform(0.16, 0.29)
        shifts[: level_j + 1] = frac * 2 * a_nom[level_j]
        sign = {"shift_fraction": float(frac), "level": float(level_j)}
    elif label == "Vertebral collapse":
        cands = [j for j in range(n) if safe_body(j)]
        level_j = pick(cands, centre_level)
        hr = rng_s.uniform(0.42, 0.68)
        wedge = rng_s.uniform(0.5, 0.85)
        bp = 2 * hr * b_nom[level_j] / (1 + wedge)
        b_post[level_j] = bp
        b_ant[level_j] = wedge * bp
        dens_boost[level_j] = 0.08
        sign = {"height_ratio": float((b_ant[level_j] + b_post[level_j]) / (2 * b_nom[level_j])),
                "wedge": float(wedge), "level": float(level_j)}
    levels = layout(b_ant, b_post, gaps_f, shifts)

    # ---------------------------------------------------------------- pixel fields
    xs = np.arange(size, dtype=f32)[None, :] + f32(0.5)
    ys = np.arange(size, dtype=f32)[:, None] + f32(0.5)
    z = rng_px.standard_normal((size, size), dtype=f32)
    tex = _gauss(z, (1.5 * S, 0.7 * S), truncate=3.0)
    tex -= _gauss(tex, 2.5 * S, truncate=2.5)
    tex *= f32(1.0 / (float(tex.std()) + 1e-6))
    noise = rng_px.standard_normal((size, size), dtype=f32)

    # soft tissue: cylinder-like thickness across the body, air outside
    t_pix = (xs - f32(c0[0])) * f32(e_t[0]) + (ys - f32(c0[1])) * f32(e_t[1])
    s_pix = (xs - f32(c0[0])) * f32(e_s[0]) + (ys - f32(c0[1])) * f32(e_s[1])
    tc, tr = (t_back + t_front) / 2, (t_back - t_front) / 2
    q = (t_pix - f32(tc)) * f32(1 / tr)
    tissue = np.sqrt(np.clip(1 - q * q, 0, 1))
    lf = np.zeros((1, 1), dtype=f32)
    for k, ang, ph, amp in waves:
        kx, ky = k * math.cos(ang), k * math.sin(ang)
        lf = lf + f32(amp) * (np.cos(kx * xs + f32(ph)) * np.cos(ky * ys)
                              - np.sin(kx * xs + f32(ph)) * np.sin(ky * ys))
    tissue *= (1 + lf) * (1 + f32(heel) * s_pix * f32(1 / size))
    fat_w, fat_depth = fat  # subcutaneous fat: a darker band just inside the skin of the back
    fb = (f32(t_back - 0.55 * fat_w) - t_pix) * f32(1 / (0.4 * fat_w))
    tissue *= 1 - f32(fat_depth) * np.exp(-fb * fb)
    # bowel gas in front of the column
    for frac, s_g, rad, elong, ang, depth in gas:
        t_lo, t_hi = t_front + 0.06 * size, -a0 - 0.07 * size - rad
        if t_hi <= t_lo:
            continue
        t_g = t_lo + frac * (t_hi - t_lo)
        cg = c0 + s_g * e_s + t_g * e_t
        eu_g = np.array([math.cos(ang), math.sin(ang)])
        ev_g = np.array([-eu_g[1], eu_g[0]])
        w = _local(size, cg, eu_g, ev_g, rad * elong + 3 * S + 2)
        if w is None:
            continue
        sl, u, v = w
        d = np.hypot(u * f32(1 / elong), v) - f32(rad)
        alpha = np.clip(0.5 - d * f32(1 / (0.35 * rad + 1)), 0, 1)
        tissue[sl] *= 1 - f32(depth) * alpha

    # ---------------------------------------------------------------- bones
    dens = np.zeros((size, size), dtype=f32)  # solid bone (max-composited)
    post = np.zeros((size, size), dtype=f32)  # superimposed posterior elements (additive)
    rim_t = max(0.12 * b0, 0.7)
    for i, L in enumerate(levels):
        bmax = max(L.b_ant, L.b_post)
        w = _local(size, L.c, L.eu, L.ev, math.hypot(L.a, bmax) + 2)
        if w is not None:
            sl, u, v = w
            d = _body_sdf(u, v, L.a, L.b_ant, L.b_post, body_round[i] * min(L.b_ant, L.b_post), body_conc[i],
                          body_waist[i])
            vv = v * f32(1 / bmax)
            endplate = f32(0.16) * (vv * vv) ** 4  # subchondral sclerosis under the endplates
            _stamp_bone(dens, sl, d, body_level[i] + dens_boost[i], 0.92, rim_t, tex, tex_amp, extra=endplate)
        for side, o in enumerate((np.zeros(2), bilat)):  # left and right halves, slightly offset
            wgt = 0.62 if side == 0 else 0.5
            # pedicle
            pc = L.img(L.a + pl / 2 - 0.05 * L.a, -0.54 * L.b_post) + o
            w = _local(size, pc, L.eu, L.ev, math.hypot(pl / 2 + 0.05 * L.a, 0.4 * L.b_post) + 2)
            if w is not None:
                sl, u, v = w
                d = _sd_round_box(u, v, f32(pl / 2 + 0.05 * L.a), f32(0.40 * L.b_post), f32(0.3 * L.b_post))
                _stamp_bone(post, sl, d, 0.5, 0.95, rim_t, tex, tex_amp * 0.7, add=wgt)
            # articular pillar (superior + inferior articular processes), sheared
            hv = L.b_post + 0.43 * (gaps_f[i] if i < n - 1 else gaps_f[i - 1])
            pcen = L.img(L.a + pl + pw / 2, 0.0) + o
            w = _local(size, pcen, L.eu, L.ev, math.hypot(pw / 2 + pillar_shear * hv, hv) + 2)
            if w is not None:
                sl, u, v = w
                taper = 1 - f32(0.25) * np.clip(np.abs(v) * f32(1 / hv), 0, 1)
                d = _sd_round_box(u - f32(pillar_shear) * v, v, f32(pw / 2) * taper, f32(hv), f32(0.3 * pw))
                _stamp_bone(post, sl, d, 0.45, 0.9, rim_t, tex, tex_amp * 0.7, add=wgt)
        # lamina + spinous process: a midline plate going back and slightly down, wider tip
        d_sp = math.cos(sp_tilt) * L.eu + math.sin(sp_tilt) * L.ev
        n_sp = -math.sin(sp_tilt) * L.eu + math.cos(sp_tilt) * L.ev
        scen = L.img(L.a + pl + 0.85 * pw, 0.2 * L.b_post) + d_sp * sp_len / 2
        hl = sp_len / 2 + 0.15 * pw
        w = _local(size, scen, d_sp, n_sp, math.hypot(hl, 1.2 * sp_h * L.b_post) + 2)
        if w is not None:
            sl, u, v = w
            x = u * f32(1 / hl)
            hv_sp = f32(sp_h * L.b_post) * (f32(0.75) + f32(0.25) * x * x + f32(0.1) * x)
            d = _sd_round_box(u, v - f32(0.15 * sp_h * L.b_post) * x, f32(hl), hv_sp, f32(0.35 * sp_h * L.b_post))
            _stamp_bone(post, sl, d, 0.28, 0.6, rim_t, tex, tex_amp * 0.5, add=1.0)
    # discs (low density, in the gaps)
    for i in range(n - 1):
        A, B = levels[i], levels[i + 1]
        dc = (A.img(0, A.b_mid) + B.img(0, -B.b_mid)) / 2
        eu_d, ev_d = _unit(A.eu + B.eu), _unit(A.ev + B.ev)
        hv = gaps_f[i] / 2 + 0.15 * b0
        ha = 0.97 * (A.a + B.a) / 2
        w = _local(size, dc, eu_d, ev_d, math.hypot(ha, hv) + 2)
        if w is not None:
            sl, u, v = w
            d = _sd_round_box(u, v, f32(ha), f32(hv), f32(0.5 * hv))
            np.maximum(dens[sl], f32(0.05) * _fill(d), out=dens[sl])

    # superimposed anatomy that is not spine: iliac crest / wing and lower ribs (additive)
    over = np.zeros((size, size), dtype=f32)
    for anchor, s_off, t_off, R, thick, fill_d, rim_d, sdir, cos_lim in arcs:
        cx_, cy_ = c0 + e_s * (levels[anchor].s + s_off) + e_t * t_off
        y0 = max(int(cy_ - R - thick - 2), 0)
        y1 = min(int(cy_ + R + thick + 2), size)
        x0 = max(int(cx_ - R - thick - 2), 0)
        x1 = min(int(cx_ + R + thick + 2), size)
        if y0 >= y1 or x0 >= x1:
            continue
        ddx, ddy = xs[:, x0:x1] - f32(cx_), ys[y0:y1] - f32(cy_)
        rr = np.hypot(ddx, ddy)
        cosang = (ddx * f32(sdir[0]) + ddy * f32(sdir[1])) / np.maximum(rr, f32(1e-3))
        sector = np.clip((cosang - f32(cos_lim)) * f32(1 / (0.6 * (1 - cos_lim))), 0, 1)
        if fill_d > 0:  # iliac wing: filled disc with a cortical crest
            d = rr - f32(R)
            val = f32(fill_d) * np.clip(0.5 - d * f32(1 / (2 * S)), 0, 1)
            val += f32(rim_d) * np.clip(1 - np.abs(d + f32(thick)) * f32(1 / thick), 0, 1)
        else:  # rib: a band with two cortical lines
            d = np.abs(rr - f32(R))
            val = f32(0.06) * _fill(d - f32(thick))
            val += f32(rim_d) * np.clip(1 - np.abs(d - f32(thick * 0.8)) * f32(1 / max(0.25 * thick, 0.7)), 0, 1)
        over[y0:y1, x0:x1] += val * sector

    # ---------------------------------------------------------------- localised findings
    metal = None
    lesion = roi = None  # geometry kept for the measured signs below
    boxes: list[Box] = []

    def foramen_frame(i):
        """Ellipse (centre, eu, ev, ru, rv) of the neural foramen between levels i and i+1."""
        A, B = levels[i], levels[i + 1]
        v_top = -0.54 * A.b_post + 0.40 * A.b_post
        top_next = B.img(0, -0.54 * B.b_post - 0.40 * B.b_post) - A.c
        v_bot = float(np.dot(top_next, A.ev))
        ru = max(pl / 2 - 0.6, 0.5)
        rv = max((v_bot - v_top) / 2 - 0.6, 0.5)
        cen = A.img(A.a + pl / 2, (v_top + v_bot) / 2)
        return cen, A.eu, A.ev, ru, rv

    def ellipse_mask(cen, eu, ev, ru, rv):
        w = _local(size, cen, eu, ev, max(ru, rv) + 1)
        if w is None:
            return None, None
        sl, u, v = w
        return sl, (u / f32(ru)) ** 2 + (v / f32(rv)) ** 2 <= 1

    def ellipse_bbox(cen, eu, ev, ru, rv, pad=0.5):
        hx = math.hypot(ru * eu[0], rv * ev[0]) + pad
        hy = math.hypot(ru * eu[1], rv * ev[1]) + pad
        return (cen[0] - hx, cen[1] - hy, cen[0] + hx, cen[1] + hy)

    if label == "Osteophytes":
        corners = [(i, sv) for i in range(n) if safe_body(i) for sv in (-1, 1)
                   if not (i == 0 and sv == -1) and not (i == n - 1 and sv == 1)]
        if not corners:
            corners = [(centre_level, 1)]
        k = int(rng_s.integers(1, 5))
        k = min(k, len(corners))
        chosen = rng_s.choice(len(corners), size=k, replace=False)
        lengths = []
        for ci in sorted(int(c) for c in chosen):
            i, sv = corners[ci]
            L = levels[i]
            b = L.b_ant
            ln = rng_s.uniform(0.40, 0.62) * b
            phi = math.radians(rng_s.uniform(30, 60))
            pts = [L.img(-L.a + 0.15 * ln, sv * (b - 1.1 * ln)),
                   L.img(-L.a + 0.9 * ln, sv * (b - 0.05 * ln)),
                   L.img(-L.a - ln * math.cos(phi), sv * (b + ln * math.sin(phi)))]
            cen = np.mean(pts, axis=0)
            rad = max(math.hypot(*(p - cen)) for p in pts) + 2
            wcrop = _crop(size, cen[0], cen[1], rad)
            if wcrop is not None:
                sl, dx, dy = wcrop
                rel = [(p[0] - cen[0], p[1] - cen[1]) for p in pts]
                d = _sd_polygon(dx, dy, rel)
                _stamp_bone(dens, sl, d, 0.86, 0.95, rim_t, tex, tex_amp * 0.5)
            boxes.append(_make_box(label, _bbox_points(pts), size))
            lengths.append(ln)
        sign = {"count": float(len(boxes)), "mean_length": float(np.mean(lengths))}

    elif label == "Other lesions":
        cands = [j for j in range(n) if safe_body(j)]
        level_j = pick(cands, centre_level)
        L = levels[level_j]
        bmin = min(L.b_ant, L.b_post)
        r = rng_s.uniform(0.30, 0.38) * bmin
        room_v = max(bmin - rim_t - 2.0 * r, 0.0)
        room_u = max(L.a - rim_t - 2.0 * r, 0.0)
        cen = L.img(rng_s.uniform(-1, 1) * room_u * 0.8, rng_s.uniform(-1, 1) * room_v * 0.8)
        lytic = rng_s.random() < 0.5
        w = _local(size, cen, L.eu, L.ev, r * 1.3 + 2)
        if w is not None:
            sl, u, v = w
            d = np.hypot(u, v) - f32(r)
            alpha = np.clip(0.5 - d * f32(1 / max(0.25 * r, 1.0)), 0, 1)
            if lytic:
                dens[sl] = dens[sl] * (1 - alpha) + alpha * (f32(0.04) + f32(0.3 * tex_amp) * tex[sl])
            else:
                dens[sl] = dens[sl] + alpha * f32(0.45)
        boxes.append(_make_box(label, ellipse_bbox(cen, L.eu, L.ev, 1.15 * r, 1.15 * r), size))
        sign = {"radius": float(r), "lytic": float(lytic), "level": float(level_j),
                "cx": float(cen[0]), "cy": float(cen[1])}
        lesion = (cen, r)

    elif label == "Foraminal stenosis":
        cands = [j for j in range(n - 1) if safe_post(j) and safe_post(j + 1)]
        level_j = pick(cands, min(centre_level, n - 2))
        cen, eu, ev, ru, rv = foramen_frame(level_j)
        # hypertrophic articular process / posterior osteophyte bulging into the foramen
        bc = cen + eu * (ru * rng_s.uniform(0.15, 0.45)) + ev * (rv * rng_s.uniform(-0.1, 0.35))
        bru, brv = ru * rng_s.uniform(0.75, 1.0), rv * rng_s.uniform(0.55, 0.8)
        w = _local(size, bc, eu, ev, max(bru, brv) + 2)
        if w is not None:
            sl, u, v = w
            d = (np.hypot(u * f32(1 / bru), v * f32(1 / brv)) - 1) * f32(min(bru, brv))
            _stamp_bone(dens, sl, d, 0.62, 0.82, rim_t, tex, tex_amp * 0.6)
        x0a, y0a, x1a, y1a = ellipse_bbox(cen, eu, ev, ru, rv, pad=1.0)
        x0b, y0b, x1b, y1b = ellipse_bbox(bc, eu, ev, bru, brv, pad=1.0)
        boxes.append(_make_box(label, (min(x0a, x0b), min(y0a, y0b), max(x1a, x1b), max(y1a, y1b)), size))
        roi = (cen, ru, rv)

    elif label == "Surgical implant":
        k = int(rng_s.integers(2, 4))
        runs = [j for j in range(n - k + 1) if all(safe_post(i) for i in range(j, j + k))]
        if not runs:
            k = 2
            runs = [j for j in range(n - 1) if safe_post(j) and safe_post(j + 1)]
        j0 = pick(runs, min(max(centre_level - 1, 0), n - k))
        metal = np.zeros((size, size), dtype=f32)
        r_sh = max(0.12 * b0, 1.2)
        r_rod = max(0.13 * b0, 1.3)
        off = np.array([1.4, 0.9]) * max(S, 0.5)
        heads = []
        for i in range(j0, j0 + k):
            L = levels[i]
            ang = math.radians(rng_s.uniform(-8, 8))
            head = L.img(L.a + pl + 0.35 * pw, -0.5 * L.b_post)
            dirv = -math.cos(ang) * L.eu + math.sin(ang) * L.ev
            tip = head + dirv * (2 * L.a + pl + 0.35 * pw - 0.45 * L.a)
            heads.append(head)
            for o in (np.zeros(2), off):  # left and right screws, nearly superimposed
                A_, B_ = head + o, tip + o
                cen = (A_ + B_) / 2
                hl = math.hypot(*(B_ - A_)) / 2
                w = _local(size, cen, dirv, np.array([-dirv[1], dirv[0]]), hl + 2 * r_sh + 2)
                if w is not None:
                    sl, u, v = w
                    thread = 1 + f32(0.18) * np.sin(u * f32(2 * math.pi / max(2.2 * r_sh, 2.5)))
                    d = _sd_round_box(u, v, f32(hl), f32(r_sh) * thread, f32(r_sh * 0.9))
                    np.maximum(metal[sl], _fill(d), out=metal[sl])
                # tulip head
                w = _local(size, A_, L.eu, L.ev, 2.2 * r_sh + 2.5 * r_rod + 2)
                if w is not None:
                    sl, u, v = w
                    d = _sd_round_box(u, v, f32(1.6 * r_rod), f32(2.0 * r_rod), f32(0.6 * r_rod))
                    np.maximum(metal[sl], _fill(d), out=metal[sl])
        ext = [heads[0] - levels[j0].ev * 0.35 * b0] + heads + [heads[-1] + levels[j0 + k - 1].ev * 0.35 * b0]
        for P, Q in zip(ext[:-1], ext[1:]):
            cen = (P + Q) / 2
            dv = _unit(Q - P)
            hl = math.hypot(*(Q - P)) / 2
            w = _local(size, cen, dv, np.array([-dv[1], dv[0]]), hl + r_rod + 2)
            if w is not None:
                sl, u, v = w
                d = _sd_round_box(u, v, f32(hl + r_rod), f32(r_rod), f32(r_rod))
                np.maximum(metal[sl], _fill(d), out=metal[sl])
        rows = np.flatnonzero(metal.max(axis=1) > 0)
        cols = np.flatnonzero(metal.max(axis=0) > 0)
        if rows.size:
            boxes.append(_make_box(label, (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1), size))
        else:  # off-image (cannot happen for sane geometry) - keep the contract of >= 1 box
            boxes.append(_make_box(label, _bbox_points(heads), size))
        level_j = j0

    # ---------------------------------------------------------------- geometry findings' boxes
    if label == "Disc space narrowing":
        A, B = levels[level_j], levels[level_j + 1]
        pts = [A.img(-A.a, A.b_ant), A.img(A.a, A.b_post), B.img(-B.a, -B.b_ant), B.img(B.a, -B.b_post)]
        boxes.append(_make_box(label, _bbox_points(pts), size))
    elif label in ("Spondylolysthesis", "Vertebral collapse"):
        boxes.append(_make_box(label, _bbox_points(levels[level_j].corners()), size))

    # ---------------------------------------------------------------- exposure
    bone = dens + post + over
    bone = (1 - np.exp(f32(-1.3) * bone)) * f32(1 / (1 - math.exp(-1.3)))  # mild saturation of overlaps
    img = f32(lo) + f32(w_t) * tissue + f32(w_b) * bone
    np.clip(img, 0, 1, out=img)
    img **= f32(gamma)
    img += (f32(sig_q) * np.sqrt(img) + f32(sig_e)) * noise
    img = _gauss(img, max(0.5 * S, 0.45), truncate=3.0)
    for side, depth, tilt, val in collim:
        band = int(math.ceil(depth + abs(math.tan(tilt)) * size / 2 + 2))
        band = min(band, size)
        lin = np.arange(size, dtype=f32) + f32(0.5)
        across = (np.arange(band, dtype=f32) + f32(0.5))[:, None]
        dist = across + f32(math.tan(tilt)) * (lin[None, :] - f32(size / 2))
        alpha = np.clip(f32(depth + 0.5) - dist, 0, 1)
        if side == 0:
            view = img[:band, :]
        elif side == 1:
            view = img[::-1][:band, :]
        elif side == 2:
            view = img.T[:band, :]
        else:
            view = img.T[::-1][:band, :]
        view[...] = view * (1 - alpha) + f32(val) * alpha
    np.clip(img, 0, 0.98, out=img)
    if metal is not None:
        img = img * (1 - metal) + metal
    img = img.astype(np.float32, copy=False)

    # ---------------------------------------------------------------- measured signs
    if label == "Surgical implant":
        bx = boxes[0]
        crop = img[int(bx.ymin):int(math.ceil(bx.ymax)), int(bx.xmin):int(math.ceil(bx.xmax))]
        sign = {"levels": float(k), "saturated_fraction_in_box": float(np.mean(crop >= 1.0)),
                "level": float(level_j)}
    elif label == "Other lesions":
        cen, r = lesion
        w = _crop(size, cen[0], cen[1], 2.2 * r + 1)
        sl, dx, dy = w
        rr = np.hypot(dx, dy)
        patch = img[sl]
        inner = patch[rr <= 0.75 * r]
        ring = patch[(rr >= 1.4 * r) & (rr <= 2.0 * r)]
        sign["contrast"] = float(inner.mean() - ring.mean()) if inner.size and ring.size else 0.0
    elif label == "Foraminal stenosis":
        areas = []
        for i in range(n - 1):
            sl, m = ellipse_mask(*foramen_frame(i))
            areas.append(float(np.sum(((dens[sl] + post[sl]) < 0.25) & m)) if sl is not None else float("nan"))
        normal = [a for i, a in enumerate(areas) if i != level_j and np.isfinite(a) and a > 0]
        normal_area = float(np.median(normal)) if normal else float("nan")
        sign = {"foramen_ratio": float(areas[level_j] / normal_area) if normal_area > 0 else 0.0,
                "area_px": float(areas[level_j]), "normal_area_px": normal_area, "level": float(level_j),
                "cx": float(roi[0][0]), "cy": float(roi[0][1]), "radius_u": float(roi[1]), "radius_v": float(roi[2])}

    vertebrae = []
    for i, L in enumerate(levels):
        gap_below = None
        if i < n - 1:
            gap_below = float(levels[i + 1].s - L.s - L.b_mid - levels[i + 1].b_mid)
        vertebrae.append({
            "index": i,
            "center": (float(L.c[0]), float(L.c[1])),
            "cx": float(L.c[0]),
            "cy": float(L.c[1]),
            "width": float(2 * L.a),
            "height": float(2 * L.b_mid),
            "height_anterior": float(2 * L.b_ant),
            "height_posterior": float(2 * L.b_post),
            "nominal_height": float(2 * b_nom[i]),
            "shift": float(L.shift),
            "angle_deg": float(math.degrees(math.atan2(-L.ev[0], L.ev[1]))),
            "u_axis": (float(L.eu[0]), float(L.eu[1])),  # towards posterior
            "v_axis": (float(L.ev[0]), float(L.ev[1])),  # towards caudal
            "gap_below": gap_below,
        })
    return PhantomSample(image=img, label=label, boxes=boxes, sign=sign, vertebrae=vertebrae)
