"""Procedural spine-radiograph phantoms with one VinDr-SpineXR-style finding each.

``render_phantom(label, size, seed)`` draws a lateral, lumbar-like radiograph:
soft tissue with air outside the body and bowel gas, a gently curved column of
5-7 vertebral bodies (bright cortical rim, trabecular texture, darker discs),
posterior elements (pedicles, articular pillars, spinous processes, neural
foramina), random pose / exposure / gamma / noise and collimation borders.
The finding for ``label`` is drawn into it and boxed.

Each finding is one :class:`Finding` entry in :data:`FINDINGS`: how it reshapes the
column before the layout (``reshape``), what it draws on top of the normal bones
(``draw``), where its boxes are (``boxes``) and what it measures on the finished image
(``measure``).  The normal anatomy is drawn by the ``_draw_*`` helpers below, the same for
every label; a new finding is a new entry (and its functions) there, with its name
appended to CLASS_NAMES and its share to TRAIN_IMAGE_ESTIMATE.

Random streams are split so that the *normal anatomy* depends on ``seed`` only
and the *finding* on ``(seed, label)``: for the localised findings (osteophytes,
surgical implant, foraminal stenosis, other lesions) the image differs from the
``"No finding"`` image of the same seed only around the boxes.  Findings are
placed on vertebrae away from the image border and the collimation margin.

Only numpy is imported (no scipy, torch, ...) so that worker subprocesses import it cheaply.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "CLASS_NAMES",
    "FINDINGS",
    "TRAIN_IMAGE_ESTIMATE",
    "Box",
    "Finding",
    "PhantomSample",
    "class_counts",
    "render_phantom",
]

# The index of a name seeds its finding's random stream: append new findings at the end.
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


# --------------------------------------------------------------------------- normal anatomy

_f32 = np.float32


@dataclass(frozen=True)
class _Anatomy:
    """The label-independent random draws of one image (see :func:`_draw_anatomy`)."""

    # the column (lengths in pixels; e_s, e_t, c0 in image coordinates)
    n: int  # number of vertebrae, 5-7
    b0: float  # nominal body half height
    a0: float  # nominal body half width (anterior-posterior)
    b_nom: np.ndarray  # (n,) nominal body half heights
    a_nom: np.ndarray  # (n,) body half widths
    wedge_nom: np.ndarray  # (n,) anterior / posterior body height
    gaps: np.ndarray  # (n - 1,) disc heights
    pl: float  # pedicle length
    pw: float  # articular pillar width
    sp_len: float  # spinous process length
    sp_tilt: float  # its downward tilt (radians)
    pillar_shear: float  # tan of the articular pillars' shear angle
    lordosis: float  # column curvature: quadratic ...
    cubic: float  # ... and cubic term (pixels)
    e_s: np.ndarray  # unit vector along the column (caudal)
    e_t: np.ndarray  # unit vector across it (posterior)
    c0: np.ndarray  # column centre
    # soft tissue
    t_back: float  # skin of the back / of the belly, as offsets along e_t from c0
    t_front: float
    waves: list  # low-frequency thickness waves (k, angle, phase, amplitude)
    heel: float  # heel effect: exposure gradient along the column
    gas: list  # bowel gas pockets (position, s offset, radius, elongation, angle, depth)
    fat: tuple  # subcutaneous fat band (width, depth)
    # exposure
    lo: float  # air level
    w_t: float  # weight of soft tissue ...
    w_b: float  # ... and of bone
    gamma: float
    sig_q: float  # quantum (signal-dependent) noise ...
    sig_e: float  # ... and electronic noise
    collim: list  # collimation borders (side, depth, tilt, value)
    # bone appearance
    tex_amp: float  # trabecular texture amplitude
    body_level: np.ndarray  # (n,) body densities
    body_round: np.ndarray  # (n,) corner radius / half height
    body_conc: np.ndarray  # (n,) endplate concavity
    body_waist: np.ndarray  # (n,) concave anterior / posterior walls
    bilat: np.ndarray  # offset of the right half's posterior elements from the left half's
    sp_h: float  # spinous process half height / body half height
    arcs: list  # superimposed iliac crest / ribs (see _draw_arcs)


def _draw_anatomy(rng: np.random.Generator, size: int) -> _Anatomy:
    """Draw the normal anatomy, pose and exposure.  The order of the draws is fixed:
    changing it (or adding a draw in the middle) changes every image."""
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
    arcs = _draw_arcs(rng, size, pitch, a0, e_s, e_t)
    return _Anatomy(
        n=n, b0=b0, a0=a0, b_nom=b_nom, a_nom=a_nom, wedge_nom=wedge_nom, gaps=gaps, pl=pl, pw=pw, sp_len=sp_len,
        sp_tilt=sp_tilt, pillar_shear=pillar_shear, lordosis=lordosis, cubic=cubic, e_s=e_s, e_t=e_t, c0=c0,
        t_back=t_back, t_front=t_front, waves=waves, heel=heel, gas=gas, fat=fat,
        lo=lo, w_t=w_t, w_b=w_b, gamma=gamma, sig_q=sig_q, sig_e=sig_e, collim=collim,
        tex_amp=tex_amp, body_level=body_level, body_round=body_round, body_conc=body_conc, body_waist=body_waist,
        bilat=bilat, sp_h=sp_h, arcs=arcs,
    )


def _draw_arcs(rng, size, pitch, a0, e_s, e_t):
    """Superimposed iliac crest / ribs, anchored to the lowest / highest vertebra so that a
    finding that changes the column's length does not move them across other discs.
    One tuple each: (anchor level, s offset, t offset, R, thickness, fill density, rim density,
    sector direction, cos half-angle)."""
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
    return arcs


@dataclass
class _Shape:
    """The column's per-level shape, which a finding may change before the layout."""

    b_ant: np.ndarray  # (n,) anterior body half heights
    b_post: np.ndarray  # (n,) posterior body half heights
    shifts: np.ndarray  # (n,) anterior shift of each level
    gaps: np.ndarray  # (n - 1,) disc heights
    dens_boost: np.ndarray  # (n,) extra body density (compressed bone)

    @classmethod
    def nominal(cls, an: _Anatomy) -> _Shape:
        b_post = 2 * an.b_nom / (1 + an.wedge_nom)
        return cls(an.wedge_nom * b_post, b_post, np.zeros(an.n), an.gaps.copy(), np.zeros(an.n))


def _layout(an: _Anatomy, shape: _Shape) -> list[_Level]:
    """Stack the bodies and discs of ``shape`` along the curved column, centred on c0."""
    n = an.n
    b_ant, b_post, shifts = shape.b_ant, shape.b_post, shape.shifts
    hc = b_ant + b_post  # full height at the column centre line
    s = np.zeros(n)
    for i in range(1, n):
        s[i] = s[i - 1] + hc[i - 1] / 2 + shape.gaps[i - 1] + hc[i] / 2
    s -= (s[0] - hc[0] / 2 + s[-1] + hc[-1] / 2) / 2
    half = max(abs(s[0]), abs(s[-1]), 1.0)
    levels = []
    for i in range(n):
        x = s[i] / half
        t = -an.lordosis * (1 - x * x) + an.cubic * (x ** 3 - x) - shifts[i]
        dt = (2 * an.lordosis * x + an.cubic * (3 * x * x - 1)) / half
        ev = _unit(an.e_s + dt * an.e_t)
        eu = _unit(an.e_t - dt * an.e_s)
        levels.append(_Level(an.c0 + s[i] * an.e_s + t * an.e_t, eu, ev, float(an.a_nom[i]),
                             float(b_ant[i]), float(b_post[i]), float(s[i]), float(shifts[i])))
    return levels


@dataclass
class _Scene:
    """One image being drawn: what a finding's functions read and draw into."""

    size: int
    an: _Anatomy
    shape: _Shape
    levels: list[_Level]  # laid out from ``shape`` (again after a finding reshapes it)
    tex: np.ndarray | None = None  # trabecular texture field, unit variance
    dens: np.ndarray | None = None  # solid bone, max-composited: bodies, discs, bony findings
    post: np.ndarray | None = None  # superimposed posterior elements, additive

    @property
    def S(self) -> float:
        """Scale of the image relative to 256 px."""
        return self.size / 256.0

    @property
    def rim_t(self) -> float:
        """Cortical rim thickness."""
        return max(0.12 * self.an.b0, 0.7)

    @property
    def centre_level(self) -> int:
        return int(round((self.an.n - 1) / 2))

    def inside_safe(self, points) -> bool:
        """All points at least 8.5% of the image away from its border (and the collimation)."""
        margin = 0.085 * self.size
        p = np.asarray(points)
        return bool(np.all(p >= margin) and np.all(p <= self.size - margin))

    def safe_body(self, i: int) -> bool:
        return self.inside_safe(self.levels[i].corners())

    def safe_post(self, i: int) -> bool:
        L, an = self.levels[i], self.an
        return self.safe_body(i) and self.inside_safe([L.img(L.a + an.pl + an.pw, -L.b_post),
                                                       L.img(L.a + an.pl + an.pw, L.b_post)])

    def foramen(self, i: int):
        """Ellipse (centre, eu, ev, ru, rv) of the neural foramen between levels i and i+1."""
        A, B = self.levels[i], self.levels[i + 1]
        pl = self.an.pl
        v_top = -0.54 * A.b_post + 0.40 * A.b_post
        top_next = B.img(0, -0.54 * B.b_post - 0.40 * B.b_post) - A.c
        v_bot = float(np.dot(top_next, A.ev))
        ru = max(pl / 2 - 0.6, 0.5)
        rv = max((v_bot - v_top) / 2 - 0.6, 0.5)
        cen = A.img(A.a + pl / 2, (v_top + v_bot) / 2)
        return cen, A.eu, A.ev, ru, rv


def _pick(rng: np.random.Generator, cands, fallback) -> int:
    """One of ``cands`` (one draw from the finding's stream), or ``fallback`` if there are none."""
    return int(rng.choice(cands)) if cands else int(fallback)


def _ellipse_mask(size, cen, eu, ev, ru, rv):
    w = _local(size, cen, eu, ev, max(ru, rv) + 1)
    if w is None:
        return None, None
    sl, u, v = w
    return sl, (u / _f32(ru)) ** 2 + (v / _f32(rv)) ** 2 <= 1


def _ellipse_bbox(cen, eu, ev, ru, rv, pad=0.5):
    hx = math.hypot(ru * eu[0], rv * ev[0]) + pad
    hy = math.hypot(ru * eu[1], rv * ev[1]) + pad
    return (cen[0] - hx, cen[1] - hy, cen[0] + hx, cen[1] + hy)


# --------------------------------------------------------------------------- pixel layers


def _grid(size: int):
    """Pixel-centre coordinates: xs (1, size) and ys (size, 1)."""
    xs = np.arange(size, dtype=_f32)[None, :] + _f32(0.5)
    ys = np.arange(size, dtype=_f32)[:, None] + _f32(0.5)
    return xs, ys


def _random_fields(rng_px: np.random.Generator, size: int):
    """The trabecular texture (vertically elongated, unit variance) and the noise field, in this order."""
    S = size / 256.0
    z = rng_px.standard_normal((size, size), dtype=_f32)
    tex = _gauss(z, (1.5 * S, 0.7 * S), truncate=3.0)
    tex -= _gauss(tex, 2.5 * S, truncate=2.5)
    tex *= _f32(1.0 / (float(tex.std()) + 1e-6))
    noise = rng_px.standard_normal((size, size), dtype=_f32)
    return tex, noise


def _soft_tissue(an: _Anatomy, size: int, xs, ys) -> np.ndarray:
    """Soft-tissue thickness: cylinder-like across the body, air outside, subcutaneous fat, bowel gas."""
    c0, e_t, e_s = an.c0, an.e_t, an.e_s
    t_pix = (xs - _f32(c0[0])) * _f32(e_t[0]) + (ys - _f32(c0[1])) * _f32(e_t[1])
    s_pix = (xs - _f32(c0[0])) * _f32(e_s[0]) + (ys - _f32(c0[1])) * _f32(e_s[1])
    tc, tr = (an.t_back + an.t_front) / 2, (an.t_back - an.t_front) / 2
    q = (t_pix - _f32(tc)) * _f32(1 / tr)
    tissue = np.sqrt(np.clip(1 - q * q, 0, 1))
    lf = np.zeros((1, 1), dtype=_f32)
    for k, ang, ph, amp in an.waves:
        kx, ky = k * math.cos(ang), k * math.sin(ang)
        lf = lf + _f32(amp) * (np.cos(kx * xs + _f32(ph)) * np.cos(ky * ys)
                               - np.sin(kx * xs + _f32(ph)) * np.sin(ky * ys))
    tissue *= (1 + lf) * (1 + _f32(an.heel) * s_pix * _f32(1 / size))
    fat_w, fat_depth = an.fat  # subcutaneous fat: a darker band just inside the skin of the back
    fb = (_f32(an.t_back - 0.55 * fat_w) - t_pix) * _f32(1 / (0.4 * fat_w))
    tissue *= 1 - _f32(fat_depth) * np.exp(-fb * fb)
    _bowel_gas(tissue, an, size)
    return tissue


def _bowel_gas(tissue: np.ndarray, an: _Anatomy, size: int) -> None:
    """Darken ``tissue`` with the gas pockets in front of the column."""
    S = size / 256.0
    for frac, s_g, rad, elong, ang, depth in an.gas:
        t_lo, t_hi = an.t_front + 0.06 * size, -an.a0 - 0.07 * size - rad
        if t_hi <= t_lo:
            continue
        t_g = t_lo + frac * (t_hi - t_lo)
        cg = an.c0 + s_g * an.e_s + t_g * an.e_t
        eu_g = np.array([math.cos(ang), math.sin(ang)])
        ev_g = np.array([-eu_g[1], eu_g[0]])
        w = _local(size, cg, eu_g, ev_g, rad * elong + 3 * S + 2)
        if w is None:
            continue
        sl, u, v = w
        d = np.hypot(u * _f32(1 / elong), v) - _f32(rad)
        alpha = np.clip(0.5 - d * _f32(1 / (0.35 * rad + 1)), 0, 1)
        tissue[sl] *= 1 - _f32(depth) * alpha


def _draw_spine(sc: _Scene) -> None:
    """The vertebral bodies and discs into ``sc.dens``, the posterior elements into ``sc.post``."""
    sc.dens = np.zeros((sc.size, sc.size), dtype=_f32)
    sc.post = np.zeros((sc.size, sc.size), dtype=_f32)
    for i, L in enumerate(sc.levels):
        _draw_body(sc, i, L)
        for side, o in enumerate((np.zeros(2), sc.an.bilat)):  # left and right halves, slightly offset
            _draw_pedicle_and_pillar(sc, i, L, o, 0.62 if side == 0 else 0.5)
        _draw_spinous_process(sc, L)
    _draw_discs(sc)


def _draw_body(sc: _Scene, i: int, L: _Level) -> None:
    """Vertebral body: textured, with a cortical rim and sclerotic endplates."""
    an = sc.an
    bmax = max(L.b_ant, L.b_post)
    w = _local(sc.size, L.c, L.eu, L.ev, math.hypot(L.a, bmax) + 2)
    if w is not None:
        sl, u, v = w
        d = _body_sdf(u, v, L.a, L.b_ant, L.b_post, an.body_round[i] * min(L.b_ant, L.b_post), an.body_conc[i],
                      an.body_waist[i])
        vv = v * _f32(1 / bmax)
        endplate = _f32(0.16) * (vv * vv) ** 4  # subchondral sclerosis under the endplates
        _stamp_bone(sc.dens, sl, d, an.body_level[i] + sc.shape.dens_boost[i], 0.92, sc.rim_t, sc.tex, an.tex_amp,
                    extra=endplate)


def _draw_pedicle_and_pillar(sc: _Scene, i: int, L: _Level, o: np.ndarray, wgt: float) -> None:
    """One side's pedicle and articular pillar, offset by ``o``, added with weight ``wgt``."""
    an, size, rim_t, tex, post = sc.an, sc.size, sc.rim_t, sc.tex, sc.post
    pl, pw, pillar_shear, gaps_f = an.pl, an.pw, an.pillar_shear, sc.shape.gaps
    # pedicle
    pc = L.img(L.a + pl / 2 - 0.05 * L.a, -0.54 * L.b_post) + o
    w = _local(size, pc, L.eu, L.ev, math.hypot(pl / 2 + 0.05 * L.a, 0.4 * L.b_post) + 2)
    if w is not None:
        sl, u, v = w
        d = _sd_round_box(u, v, _f32(pl / 2 + 0.05 * L.a), _f32(0.40 * L.b_post), _f32(0.3 * L.b_post))
        _stamp_bone(post, sl, d, 0.5, 0.95, rim_t, tex, an.tex_amp * 0.7, add=wgt)
    # articular pillar (superior + inferior articular processes), sheared
    hv = L.b_post + 0.43 * (gaps_f[i] if i < an.n - 1 else gaps_f[i - 1])
    pcen = L.img(L.a + pl + pw / 2, 0.0) + o
    w = _local(size, pcen, L.eu, L.ev, math.hypot(pw / 2 + pillar_shear * hv, hv) + 2)
    if w is not None:
        sl, u, v = w
        taper = 1 - _f32(0.25) * np.clip(np.abs(v) * _f32(1 / hv), 0, 1)
        d = _sd_round_box(u - _f32(pillar_shear) * v, v, _f32(pw / 2) * taper, _f32(hv), _f32(0.3 * pw))
        _stamp_bone(post, sl, d, 0.45, 0.9, rim_t, tex, an.tex_amp * 0.7, add=wgt)


def _draw_spinous_process(sc: _Scene, L: _Level) -> None:
    """Lamina + spinous process: a midline plate going back and slightly down, wider tip."""
    an = sc.an
    sp_tilt, sp_len, sp_h, pw = an.sp_tilt, an.sp_len, an.sp_h, an.pw
    d_sp = math.cos(sp_tilt) * L.eu + math.sin(sp_tilt) * L.ev
    n_sp = -math.sin(sp_tilt) * L.eu + math.cos(sp_tilt) * L.ev
    scen = L.img(L.a + an.pl + 0.85 * pw, 0.2 * L.b_post) + d_sp * sp_len / 2
    hl = sp_len / 2 + 0.15 * pw
    w = _local(sc.size, scen, d_sp, n_sp, math.hypot(hl, 1.2 * sp_h * L.b_post) + 2)
    if w is not None:
        sl, u, v = w
        x = u * _f32(1 / hl)
        hv_sp = _f32(sp_h * L.b_post) * (_f32(0.75) + _f32(0.25) * x * x + _f32(0.1) * x)
        d = _sd_round_box(u, v - _f32(0.15 * sp_h * L.b_post) * x, _f32(hl), hv_sp, _f32(0.35 * sp_h * L.b_post))
        _stamp_bone(sc.post, sl, d, 0.28, 0.6, sc.rim_t, sc.tex, an.tex_amp * 0.5, add=1.0)


def _draw_discs(sc: _Scene) -> None:
    """Discs: low density, in the gaps between the bodies."""
    levels, gaps_f, b0 = sc.levels, sc.shape.gaps, sc.an.b0
    for i in range(sc.an.n - 1):
        A, B = levels[i], levels[i + 1]
        dc = (A.img(0, A.b_mid) + B.img(0, -B.b_mid)) / 2
        eu_d, ev_d = _unit(A.eu + B.eu), _unit(A.ev + B.ev)
        hv = gaps_f[i] / 2 + 0.15 * b0
        ha = 0.97 * (A.a + B.a) / 2
        w = _local(sc.size, dc, eu_d, ev_d, math.hypot(ha, hv) + 2)
        if w is not None:
            sl, u, v = w
            d = _sd_round_box(u, v, _f32(ha), _f32(hv), _f32(0.5 * hv))
            np.maximum(sc.dens[sl], _f32(0.05) * _fill(d), out=sc.dens[sl])


def _draw_overlays(sc: _Scene, xs, ys) -> np.ndarray:
    """Superimposed anatomy that is not spine: iliac crest / wing and lower ribs (additive)."""
    size, an = sc.size, sc.an
    S = sc.S
    over = np.zeros((size, size), dtype=_f32)
    for anchor, s_off, t_off, R, thick, fill_d, rim_d, sdir, cos_lim in an.arcs:
        cx_, cy_ = an.c0 + an.e_s * (sc.levels[anchor].s + s_off) + an.e_t * t_off
        y0 = max(int(cy_ - R - thick - 2), 0)
        y1 = min(int(cy_ + R + thick + 2), size)
        x0 = max(int(cx_ - R - thick - 2), 0)
        x1 = min(int(cx_ + R + thick + 2), size)
        if y0 >= y1 or x0 >= x1:
            continue
        ddx, ddy = xs[:, x0:x1] - _f32(cx_), ys[y0:y1] - _f32(cy_)
        rr = np.hypot(ddx, ddy)
        cosang = (ddx * _f32(sdir[0]) + ddy * _f32(sdir[1])) / np.maximum(rr, _f32(1e-3))
        sector = np.clip((cosang - _f32(cos_lim)) * _f32(1 / (0.6 * (1 - cos_lim))), 0, 1)
        if fill_d > 0:  # iliac wing: filled disc with a cortical crest
            d = rr - _f32(R)
            val = _f32(fill_d) * np.clip(0.5 - d * _f32(1 / (2 * S)), 0, 1)
            val += _f32(rim_d) * np.clip(1 - np.abs(d + _f32(thick)) * _f32(1 / thick), 0, 1)
        else:  # rib: a band with two cortical lines
            d = np.abs(rr - _f32(R))
            val = _f32(0.06) * _fill(d - _f32(thick))
            val += _f32(rim_d) * np.clip(1 - np.abs(d - _f32(thick * 0.8)) * _f32(1 / max(0.25 * thick, 0.7)), 0, 1)
        over[y0:y1, x0:x1] += val * sector
    return over


def _expose(an: _Anatomy, size: int, bone: np.ndarray, tissue: np.ndarray, noise: np.ndarray,
            metal: np.ndarray | None) -> np.ndarray:
    """The radiograph: bone + tissue exposure, gamma, noise, blur, collimation, then metal on top."""
    S = size / 256.0
    bone = (1 - np.exp(_f32(-1.3) * bone)) * _f32(1 / (1 - math.exp(-1.3)))  # mild saturation of overlaps
    img = _f32(an.lo) + _f32(an.w_t) * tissue + _f32(an.w_b) * bone
    np.clip(img, 0, 1, out=img)
    img **= _f32(an.gamma)
    img += (_f32(an.sig_q) * np.sqrt(img) + _f32(an.sig_e)) * noise
    img = _gauss(img, max(0.5 * S, 0.45), truncate=3.0)
    _collimate(img, an.collim, size)
    np.clip(img, 0, 0.98, out=img)
    if metal is not None:
        img = img * (1 - metal) + metal
    return img.astype(np.float32, copy=False)


def _collimate(img: np.ndarray, collim, size: int) -> None:
    """Blend the collimation borders (side 0-3: top, bottom, left, right) into ``img``."""
    for side, depth, tilt, val in collim:
        band = int(math.ceil(depth + abs(math.tan(tilt)) * size / 2 + 2))
        band = min(band, size)
        lin = np.arange(size, dtype=_f32) + _f32(0.5)
        across = (np.arange(band, dtype=_f32) + _f32(0.5))[:, None]
        dist = across + _f32(math.tan(tilt)) * (lin[None, :] - _f32(size / 2))
        alpha = np.clip(_f32(depth + 0.5) - dist, 0, 1)
        if side == 0:
            view = img[:band, :]
        elif side == 1:
            view = img[::-1][:band, :]
        elif side == 2:
            view = img.T[:band, :]
        else:
            view = img.T[::-1][:band, :]
        view[...] = view * (1 - alpha) + _f32(val) * alpha


def _vertebra_records(levels: list[_Level], b_nom: np.ndarray) -> list[dict]:
    """PhantomSample.vertebrae: each level's geometry, in image coordinates."""
    n = len(levels)
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
    return vertebrae



# --------------------------------------------------------------------------- findings


@dataclass
class _Mark:
    """Where one image's finding went: written by its reshape / draw functions, read by boxes / measure."""

    level: int | None = None  # the level it is on (the upper one of a pair)
    sign: dict[str, float] = field(default_factory=dict)  # PhantomSample.sign
    geom: dict = field(default_factory=dict)  # what boxes / measure need to know of its geometry
    metal: np.ndarray | None = None  # metal coverage in [0, 1], laid over the exposed image


_Extent = tuple[float, float, float, float]  # xmin, ymin, xmax, ymax (before clipping to the image)


def _no_boxes(sc: _Scene, mark: _Mark) -> list[_Extent]:
    return []


@dataclass(frozen=True)
class Finding:
    """One entry of :data:`FINDINGS`: how a finding changes the normal anatomy, what it draws and where its
    boxes are.  render_phantom calls, in this order and each only if given:

    - ``reshape(scene, rng, mark)`` before the column is laid out: picks a level and changes
      ``scene.shape`` (body heights, disc heights, shifts, density); the column is laid out again after it.
    - ``draw(scene, rng, mark)`` after the normal bones are drawn: draws into ``scene.dens`` (bone, on
      top of the normal anatomy) or ``mark.metal``.  A finding with only ``draw`` is *localised*: its image
      differs from the "No finding" image of the same seed only around its boxes.
    - ``boxes(scene, mark) -> [(xmin, ymin, xmax, ymax), ...]``: its boxes, from the final geometry.
    - ``measure(scene, mark, image, boxes) -> dict``: signs measured on the exposed image, added to ``mark.sign``.

    ``rng`` is the finding's own random stream (seeded by the seed and the label's index in CLASS_NAMES):
    reshape and draw may use it freely, in a fixed order, without changing the normal anatomy.
    """

    name: str
    about: str  # what is drawn and what PhantomSample.sign reports
    reshape: Callable[[_Scene, np.random.Generator, _Mark], None] | None = None
    draw: Callable[[_Scene, np.random.Generator, _Mark], None] | None = None
    boxes: Callable[[_Scene, _Mark], list[_Extent]] = _no_boxes
    measure: Callable[[_Scene, _Mark, np.ndarray, list[Box]], dict[str, float]] | None = None

    @property
    def localised(self) -> bool:
        return self.reshape is None


# Disc space narrowing ------------------------------------------------------------------


def _narrow_disc(sc: _Scene, rng: np.random.Generator, mark: _Mark) -> None:
    n, gaps_f = sc.an.n, sc.shape.gaps
    cands = [j for j in range(n - 1) if sc.safe_body(j) and sc.safe_body(j + 1)]
    level_j = _pick(rng, cands, min(sc.centre_level, n - 2))
    ratio = rng.uniform(0.22, 0.38)
    others = np.delete(gaps_f, level_j)
    gaps_f[level_j] = ratio * float(np.median(others))
    mark.level = level_j
    mark.sign = {"disc_ratio": float(gaps_f[level_j] / np.median(others)), "level": float(level_j)}


def _disc_box(sc: _Scene, mark: _Mark) -> list[_Extent]:
    """The disc between the endplates' corners of the two levels around it."""
    A, B = sc.levels[mark.level], sc.levels[mark.level + 1]
    pts = [A.img(-A.a, A.b_ant), A.img(A.a, A.b_post), B.img(-B.a, -B.b_ant), B.img(B.a, -B.b_post)]
    return [_bbox_points(pts)]


# Spondylolisthesis and vertebral collapse ----------------------------------------------


def _slip(sc: _Scene, rng: np.random.Generator, mark: _Mark) -> None:
    n = sc.an.n
    cands = [j for j in range(n - 1) if sc.safe_post(j) and sc.safe_body(j + 1)]
    level_j = _pick(rng, cands, min(sc.centre_level, n - 2))
    frac = rng.uniform(0.16, 0.29)
    sc.shape.shifts[: level_j + 1] = frac * 2 * sc.an.a_nom[level_j]
    mark.level = level_j
    mark.sign = {"shift_fraction": float(frac), "level": float(level_j)}


def _collapse(sc: _Scene, rng: np.random.Generator, mark: _Mark) -> None:
    b_nom, shape = sc.an.b_nom, sc.shape
    cands = [j for j in range(sc.an.n) if sc.safe_body(j)]
    level_j = _pick(rng, cands, sc.centre_level)
    hr = rng.uniform(0.42, 0.68)
    wedge = rng.uniform(0.5, 0.85)
    bp = 2 * hr * b_nom[level_j] / (1 + wedge)
    shape.b_post[level_j] = bp
    shape.b_ant[level_j] = wedge * bp
    shape.dens_boost[level_j] = 0.08
    mark.level = level_j
    mark.sign = {"height_ratio": float((shape.b_ant[level_j] + shape.b_post[level_j]) / (2 * b_nom[level_j])),
                 "wedge": float(wedge), "level": float(level_j)}


def _level_box(sc: _Scene, mark: _Mark) -> list[_Extent]:
    """The body of the affected level."""
    return [_bbox_points(sc.levels[mark.level].corners())]


# Osteophytes ---------------------------------------------------------------------------


def _draw_osteophytes(sc: _Scene, rng: np.random.Generator, mark: _Mark) -> None:
    n = sc.an.n
    corners = [(i, sv) for i in range(n) if sc.safe_body(i) for sv in (-1, 1)
               if not (i == 0 and sv == -1) and not (i == n - 1 and sv == 1)]
    if not corners:
        corners = [(sc.centre_level, 1)]
    k = int(rng.integers(1, 5))
    k = min(k, len(corners))
    chosen = rng.choice(len(corners), size=k, replace=False)
    spurs, lengths = [], []
    for ci in sorted(int(c) for c in chosen):
        i, sv = corners[ci]
        L = sc.levels[i]
        b = L.b_ant
        ln = rng.uniform(0.40, 0.62) * b
        phi = math.radians(rng.uniform(30, 60))
        pts = [L.img(-L.a + 0.15 * ln, sv * (b - 1.1 * ln)),
               L.img(-L.a + 0.9 * ln, sv * (b - 0.05 * ln)),
               L.img(-L.a - ln * math.cos(phi), sv * (b + ln * math.sin(phi)))]
        cen = np.mean(pts, axis=0)
        rad = max(math.hypot(*(p - cen)) for p in pts) + 2
        wcrop = _crop(sc.size, cen[0], cen[1], rad)
        if wcrop is not None:
            sl, dx, dy = wcrop
            rel = [(p[0] - cen[0], p[1] - cen[1]) for p in pts]
            d = _sd_polygon(dx, dy, rel)
            _stamp_bone(sc.dens, sl, d, 0.86, 0.95, sc.rim_t, sc.tex, sc.an.tex_amp * 0.5)
        spurs.append(pts)
        lengths.append(ln)
    mark.geom["spurs"] = spurs
    mark.sign = {"count": float(len(spurs)), "mean_length": float(np.mean(lengths))}


def _osteophyte_boxes(sc: _Scene, mark: _Mark) -> list[_Extent]:
    """One box per spur."""
    return [_bbox_points(pts) for pts in mark.geom["spurs"]]


# Other lesions -------------------------------------------------------------------------


def _draw_lesion(sc: _Scene, rng: np.random.Generator, mark: _Mark) -> None:
    cands = [j for j in range(sc.an.n) if sc.safe_body(j)]
    level_j = _pick(rng, cands, sc.centre_level)
    L, rim_t, dens, tex = sc.levels[level_j], sc.rim_t, sc.dens, sc.tex
    bmin = min(L.b_ant, L.b_post)
    r = rng.uniform(0.30, 0.38) * bmin
    room_v = max(bmin - rim_t - 2.0 * r, 0.0)
    room_u = max(L.a - rim_t - 2.0 * r, 0.0)
    cen = L.img(rng.uniform(-1, 1) * room_u * 0.8, rng.uniform(-1, 1) * room_v * 0.8)
    lytic = rng.random() < 0.5
    w = _local(sc.size, cen, L.eu, L.ev, r * 1.3 + 2)
    if w is not None:
        sl, u, v = w
        d = np.hypot(u, v) - _f32(r)
        alpha = np.clip(0.5 - d * _f32(1 / max(0.25 * r, 1.0)), 0, 1)
        if lytic:
            dens[sl] = dens[sl] * (1 - alpha) + alpha * (_f32(0.04) + _f32(0.3 * sc.an.tex_amp) * tex[sl])
        else:
            dens[sl] = dens[sl] + alpha * _f32(0.45)
    mark.level = level_j
    mark.geom.update(centre=cen, radius=r)
    mark.sign = {"radius": float(r), "lytic": float(lytic), "level": float(level_j),
                 "cx": float(cen[0]), "cy": float(cen[1])}


def _lesion_box(sc: _Scene, mark: _Mark) -> list[_Extent]:
    L, r = sc.levels[mark.level], mark.geom["radius"]
    return [_ellipse_bbox(mark.geom["centre"], L.eu, L.ev, 1.15 * r, 1.15 * r)]


def _lesion_contrast(sc: _Scene, mark: _Mark, img: np.ndarray, boxes: list[Box]) -> dict[str, float]:
    """Mean inside the lesion minus mean of a ring around it."""
    cen, r = mark.geom["centre"], mark.geom["radius"]
    sl, dx, dy = _crop(sc.size, cen[0], cen[1], 2.2 * r + 1)
    rr = np.hypot(dx, dy)
    patch = img[sl]
    inner = patch[rr <= 0.75 * r]
    ring = patch[(rr >= 1.4 * r) & (rr <= 2.0 * r)]
    return {"contrast": float(inner.mean() - ring.mean()) if inner.size and ring.size else 0.0}


# Foraminal stenosis --------------------------------------------------------------------


def _draw_stenosis(sc: _Scene, rng: np.random.Generator, mark: _Mark) -> None:
    """A hypertrophic articular process / posterior osteophyte bulging into one foramen."""
    n = sc.an.n
    cands = [j for j in range(n - 1) if sc.safe_post(j) and sc.safe_post(j + 1)]
    level_j = _pick(rng, cands, min(sc.centre_level, n - 2))
    cen, eu, ev, ru, rv = sc.foramen(level_j)
    bc = cen + eu * (ru * rng.uniform(0.15, 0.45)) + ev * (rv * rng.uniform(-0.1, 0.35))
    bru, brv = ru * rng.uniform(0.75, 1.0), rv * rng.uniform(0.55, 0.8)
    w = _local(sc.size, bc, eu, ev, max(bru, brv) + 2)
    if w is not None:
        sl, u, v = w
        d = (np.hypot(u * _f32(1 / bru), v * _f32(1 / brv)) - 1) * _f32(min(bru, brv))
        _stamp_bone(sc.dens, sl, d, 0.62, 0.82, sc.rim_t, sc.tex, sc.an.tex_amp * 0.6)
    mark.level = level_j
    mark.geom.update(foramen=(cen, eu, ev, ru, rv), bulge=(bc, eu, ev, bru, brv))


def _stenosis_box(sc: _Scene, mark: _Mark) -> list[_Extent]:
    """The foramen and the bulge together."""
    x0a, y0a, x1a, y1a = _ellipse_bbox(*mark.geom["foramen"], pad=1.0)
    x0b, y0b, x1b, y1b = _ellipse_bbox(*mark.geom["bulge"], pad=1.0)
    return [(min(x0a, x0b), min(y0a, y0b), max(x1a, x1b), max(y1a, y1b))]


def _foramen_ratio(sc: _Scene, mark: _Mark, img: np.ndarray, boxes: list[Box]) -> dict[str, float]:
    """Free (bone-less) area of the narrowed foramen over the median of the others."""
    level_j = mark.level
    areas = []
    for i in range(sc.an.n - 1):
        sl, m = _ellipse_mask(sc.size, *sc.foramen(i))
        areas.append(float(np.sum(((sc.dens[sl] + sc.post[sl]) < 0.25) & m)) if sl is not None else float("nan"))
    normal = [a for i, a in enumerate(areas) if i != level_j and np.isfinite(a) and a > 0]
    normal_area = float(np.median(normal)) if normal else float("nan")
    cen, _, _, ru, rv = mark.geom["foramen"]
    return {"foramen_ratio": float(areas[level_j] / normal_area) if normal_area > 0 else 0.0,
            "area_px": float(areas[level_j]), "normal_area_px": normal_area, "level": float(level_j),
            "cx": float(cen[0]), "cy": float(cen[1]), "radius_u": float(ru), "radius_v": float(rv)}


# Surgical implant ----------------------------------------------------------------------


def _draw_implant(sc: _Scene, rng: np.random.Generator, mark: _Mark) -> None:
    """Pedicle screws in 2-3 adjacent levels joined by a rod, drawn as metal."""
    n, b0, levels = sc.an.n, sc.an.b0, sc.levels
    k = int(rng.integers(2, 4))
    runs = [j for j in range(n - k + 1) if all(sc.safe_post(i) for i in range(j, j + k))]
    if not runs:
        k = 2
        runs = [j for j in range(n - 1) if sc.safe_post(j) and sc.safe_post(j + 1)]
    j0 = _pick(rng, runs, min(max(sc.centre_level - 1, 0), n - k))
    metal = np.zeros((sc.size, sc.size), dtype=_f32)
    r_sh = max(0.12 * b0, 1.2)
    r_rod = max(0.13 * b0, 1.3)
    heads = [_draw_screws(sc, metal, levels[i], math.radians(rng.uniform(-8, 8)), r_sh, r_rod)
             for i in range(j0, j0 + k)]
    ext = [heads[0] - levels[j0].ev * 0.35 * b0] + heads + [heads[-1] + levels[j0 + k - 1].ev * 0.35 * b0]
    _draw_rod(sc.size, metal, ext, r_rod)
    mark.level = j0
    mark.metal = metal
    mark.geom.update(levels=k, heads=heads)


def _draw_screws(sc: _Scene, metal: np.ndarray, L: _Level, ang: float, r_sh: float, r_rod: float) -> np.ndarray:
    """The left and right pedicle screws of level L (nearly superimposed) with their tulip heads,
    tilted by ``ang``; returns the (left) head position."""
    pl, pw, size = sc.an.pl, sc.an.pw, sc.size
    off = np.array([1.4, 0.9]) * max(sc.S, 0.5)
    head = L.img(L.a + pl + 0.35 * pw, -0.5 * L.b_post)
    dirv = -math.cos(ang) * L.eu + math.sin(ang) * L.ev
    tip = head + dirv * (2 * L.a + pl + 0.35 * pw - 0.45 * L.a)
    for o in (np.zeros(2), off):  # left and right screws, nearly superimposed
        A_, B_ = head + o, tip + o
        cen = (A_ + B_) / 2
        hl = math.hypot(*(B_ - A_)) / 2
        w = _local(size, cen, dirv, np.array([-dirv[1], dirv[0]]), hl + 2 * r_sh + 2)
        if w is not None:
            sl, u, v = w
            thread = 1 + _f32(0.18) * np.sin(u * _f32(2 * math.pi / max(2.2 * r_sh, 2.5)))
            d = _sd_round_box(u, v, _f32(hl), _f32(r_sh) * thread, _f32(r_sh * 0.9))
            np.maximum(metal[sl], _fill(d), out=metal[sl])
        # tulip head
        w = _local(size, A_, L.eu, L.ev, 2.2 * r_sh + 2.5 * r_rod + 2)
        if w is not None:
            sl, u, v = w
            d = _sd_round_box(u, v, _f32(1.6 * r_rod), _f32(2.0 * r_rod), _f32(0.6 * r_rod))
            np.maximum(metal[sl], _fill(d), out=metal[sl])
    return head


def _draw_rod(size: int, metal: np.ndarray, points, r_rod: float) -> None:
    """A rod of radius r_rod through ``points``."""
    for P, Q in zip(points[:-1], points[1:]):
        cen = (P + Q) / 2
        dv = _unit(Q - P)
        hl = math.hypot(*(Q - P)) / 2
        w = _local(size, cen, dv, np.array([-dv[1], dv[0]]), hl + r_rod + 2)
        if w is not None:
            sl, u, v = w
            d = _sd_round_box(u, v, _f32(hl + r_rod), _f32(r_rod), _f32(r_rod))
            np.maximum(metal[sl], _fill(d), out=metal[sl])


def _implant_box(sc: _Scene, mark: _Mark) -> list[_Extent]:
    """Around all the metal on the image."""
    rows = np.flatnonzero(mark.metal.max(axis=1) > 0)
    cols = np.flatnonzero(mark.metal.max(axis=0) > 0)
    if rows.size:
        return [(cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)]
    return [_bbox_points(mark.geom["heads"])]  # off-image (cannot happen for sane geometry): keep >= 1 box


def _implant_saturation(sc: _Scene, mark: _Mark, img: np.ndarray, boxes: list[Box]) -> dict[str, float]:
    bx = boxes[0]
    crop = img[int(bx.ymin):int(math.ceil(bx.ymax)), int(bx.xmin):int(math.ceil(bx.xmax))]
    return {"levels": float(mark.geom["levels"]), "saturated_fraction_in_box": float(np.mean(crop >= 1.0)),
            "level": float(mark.level)}


# The table -----------------------------------------------------------------------------

FINDINGS: dict[str, Finding] = {f.name: f for f in (
    Finding("No finding", "The normal anatomy only; no boxes, no signs."),
    Finding("Osteophytes",
            "1-4 bony spurs at anterior body corners, one box each; sign: count, mean_length (px).",
            draw=_draw_osteophytes, boxes=_osteophyte_boxes),
    Finding("Disc space narrowing",
            "One disc at 22-38% of the median disc height, boxed between its endplates; sign: disc_ratio, level.",
            reshape=_narrow_disc, boxes=_disc_box),
    Finding("Surgical implant",
            "Pedicle screws in 2-3 adjacent levels and a rod, as saturated metal, one box around it; "
            "sign: levels, saturated_fraction_in_box, level.",
            draw=_draw_implant, boxes=_implant_box, measure=_implant_saturation),
    Finding("Foraminal stenosis",
            "A bony bulge into one neural foramen, boxed with the foramen; sign: foramen_ratio (free area over "
            "the other foramina's median), area_px, normal_area_px, level, cx, cy, radius_u, radius_v.",
            draw=_draw_stenosis, boxes=_stenosis_box, measure=_foramen_ratio),
    Finding("Spondylolysthesis",
            "The levels above one disc shifted anteriorly by 16-29% of a body width, the slipped body boxed; "
            "sign: shift_fraction, level.",
            reshape=_slip, boxes=_level_box),
    Finding("Vertebral collapse",
            "One body at 42-68% of its height, wedge-shaped and denser, boxed; sign: height_ratio, wedge, level.",
            reshape=_collapse, boxes=_level_box),
    Finding("Other lesions",
            "A round lytic (dark) or sclerotic (bright) lesion inside one body, boxed; "
            "sign: radius, lytic, level, cx, cy, contrast.",
            draw=_draw_lesion, boxes=_lesion_box, measure=_lesion_contrast),
)}
if tuple(FINDINGS) != CLASS_NAMES:  # the index in CLASS_NAMES seeds a finding's random stream
    raise RuntimeError("FINDINGS and CLASS_NAMES must list the same findings in the same order.")


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
    size, seed = int(size), int(seed)
    finding = FINDINGS[label]
    rng = np.random.default_rng([seed, 11])  # anatomy, pose, exposure (label independent)
    rng_px = np.random.default_rng([seed, 23])  # texture and noise fields
    rng_s = np.random.default_rng([seed, 37, CLASS_NAMES.index(label)])  # the finding

    an = _draw_anatomy(rng, size)
    shape = _Shape.nominal(an)
    sc = _Scene(size, an, shape, _layout(an, shape))
    mark = _Mark()
    if finding.reshape is not None:
        finding.reshape(sc, rng_s, mark)
        sc.levels = _layout(an, shape)

    xs, ys = _grid(size)
    sc.tex, noise = _random_fields(rng_px, size)
    tissue = _soft_tissue(an, size, xs, ys)
    _draw_spine(sc)
    over = _draw_overlays(sc, xs, ys)
    if finding.draw is not None:
        finding.draw(sc, rng_s, mark)
    boxes = [_make_box(label, bb, size) for bb in finding.boxes(sc, mark)]

    img = _expose(an, size, sc.dens + sc.post + over, tissue, noise, mark.metal)
    if finding.measure is not None:
        mark.sign.update(finding.measure(sc, mark, img, boxes))
    return PhantomSample(image=img, label=label, boxes=boxes, sign=mark.sign,
                         vertebrae=_vertebra_records(sc.levels, an.b_nom))
