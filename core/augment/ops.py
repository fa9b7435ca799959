"""The classic augmentation registry: one table (:data:`OPS`) of operations.

Every entry declares its parameters (type, range, default, unit, help text) and three pure
functions, kept apart as in torchvision ``transforms/v2``:

- ``sample(rng, params, shape) -> applied``: draws the concrete values for one image from a
  seeded ``numpy.random.Generator`` (angles, noise seeds, patch positions). It needs only
  the image shape, never its pixels, so a batch can be planned before it is touched.
- ``apply(image, applied) -> image``: a pure function of the pixels and those values.
- ``geometry(applied, shape) -> Geometry`` (geometric operations only): where each output
  pixel comes from. Boxes are moved with the same mapping as the pixels
  (:func:`transform_boxes`), so they cannot drift apart.

The sliders of the Augment page, the contract tests, the MLflow params and the exported
pipelines all come from this table. Images are 2-D ``uint8`` or ``uint16`` arrays; the value
scale is the image's bit depth (:func:`value_max`), so 12-bit X-rays stay 12-bit.

Coordinates are continuous pixels: pixel ``j`` spans ``[j, j + 1)``, the convention of
Pillow's transforms and of the manifest's boxes.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# The original study's crop box (2, 5, 500, 1000) is in pixels of its ~1000 px radiographs.
# Here it is relative to the image: x / 1000 of the width, y / 1000 of the height.
STUDY_BOX_REFERENCE = 1000
STUDY_BOX = (2, 5, 500, 1000)
_BOX_DEFAULTS = tuple(v / STUDY_BOX_REFERENCE for v in STUDY_BOX)
_BOX_HELP = ("Box edges are fractions of the image width (left/right) and height (top/bottom). "
             "The defaults are the original study's box (2, 5, 500, 1000), given there in pixels of "
             "~1000 px radiographs, mapped proportionally (pixel / 1000) to any image size and "
             "clipped to the image.")


# --- parameters ---------------------------------------------------------------------------

def _fmt(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


@dataclass(frozen=True)
class Param:
    """One parameter of an operation: what the slider shows and what validation enforces."""

    name: str
    kind: str                      # "float" | "int" | "bool" | "choice" | "float_range" (a [low, high] pair)
    default: Any
    low: float | None = None       # smallest allowed value (numbers and ranges)
    high: float | None = None      # largest allowed value
    step: float | None = None      # slider step
    choices: tuple = ()            # allowed values of a "choice"
    unit: str = ""                 # shown after the value: "degrees", "px", "fraction of the image"
    help: str = ""

    def range_text(self) -> str:
        if self.kind == "bool":
            return "true or false"
        if self.kind == "choice":
            return "one of " + ", ".join(repr(c) for c in self.choices)
        unit = f" {self.unit}" if self.unit else ""
        return f"[{_fmt(self.low)}, {_fmt(self.high)}]{unit}"

    def validate(self, value: Any, where: str = "") -> Any:
        """Return ``value`` in canonical form, or raise ValueError naming the parameter and its range."""
        label = f"{where}{self.name}"
        if self.kind == "bool":
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"{label}={value!r} must be true or false.")
            return bool(value)
        if self.kind == "choice":
            if value not in self.choices:
                raise ValueError(f"{label}={value!r} must be {self.range_text()}.")
            return value
        if self.kind == "float_range":
            pair = list(value) if isinstance(value, (list, tuple)) else None
            if pair is None or len(pair) != 2 or not all(_is_number(v) for v in pair):
                raise ValueError(f"{label}={value!r} must be a pair [low, high] within {self.range_text()}.")
            lo, hi = float(pair[0]), float(pair[1])
            if not (self.low <= lo <= self.high and self.low <= hi <= self.high):
                raise ValueError(f"{label}={[lo, hi]} is outside the range {self.range_text()}; "
                                 f"choose both ends in that range.")
            if lo > hi:
                raise ValueError(f"{label}={[lo, hi]}: the low end is above the high end; swap them.")
            return (lo, hi)
        if not _is_number(value):
            raise ValueError(f"{label}={value!r} must be a number in {self.range_text()}.")
        if self.kind == "int" and float(value) != int(value):
            raise ValueError(f"{label}={value!r} must be a whole number in {self.range_text()}.")
        number = int(value) if self.kind == "int" else float(value)
        if not (math.isfinite(number) and self.low <= number <= self.high):
            raise ValueError(f"{label}={_fmt(number)} is outside the range {self.range_text()}; "
                             f"choose a value in that range.")
        return number


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


# --- geometry and boxes ---------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Geometry:
    """Where output pixels come from. ``inverse`` holds Pillow's six affine coefficients
    ``(a, b, c, d, e, f)``: output point (x, y) samples the input at
    (a x + b y + c, d x + e y + f). Elastic warps give a per-pixel ``field`` (dx, dy) instead."""

    in_shape: tuple[int, int]                    # (H, W) of the input
    out_shape: tuple[int, int]                   # (H, W) of the output
    inverse: tuple[float, ...] | None = None     # affine output -> input coefficients
    field: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)  # (dx, dy), each (H, W) float32


def _forward(inverse: tuple[float, ...]) -> np.ndarray:
    a, b, c, d, e, f = inverse
    return np.linalg.inv(np.array([[a, b, c], [d, e, f], [0.0, 0.0, 1.0]]))


def transform_boxes(boxes: list[dict], geom: Geometry) -> list[dict]:
    """Move boxes (pixel coords of the input) with the pixels; clip them to the output image and
    drop those left with less than one pixel of width or height."""
    if not boxes:
        return []
    h, w = geom.out_shape
    out = []
    for box in boxes:
        if geom.field is not None:
            found = _field_box(box, geom.field)
            if found is None:
                continue
            x0, y0, x1, y1 = found
        else:
            m = _forward(geom.inverse)
            corners = np.array([[box["xmin"], box["ymin"], 1], [box["xmax"], box["ymin"], 1],
                                [box["xmin"], box["ymax"], 1], [box["xmax"], box["ymax"], 1]], dtype=float)
            moved = corners @ m.T
            x0, y0 = moved[:, 0].min(), moved[:, 1].min()
            x1, y1 = moved[:, 0].max(), moved[:, 1].max()
        x0, x1 = float(np.clip(x0, 0, w)), float(np.clip(x1, 0, w))
        y0, y1 = float(np.clip(y0, 0, h)), float(np.clip(y1, 0, h))
        if x1 - x0 >= 1 and y1 - y0 >= 1:
            out.append({**box, "xmin": round(x0, 2), "ymin": round(y0, 2), "xmax": round(x1, 2), "ymax": round(y1, 2)})
    return out


def _field_box(box: dict, field_: tuple[np.ndarray, np.ndarray]):
    """Bounding box of the output pixels whose source point lies inside ``box``."""
    dx, dy = field_
    h, w = dx.shape
    src_x = np.arange(w, dtype=np.float32)[None, :] + 0.5 + dx
    src_y = np.arange(h, dtype=np.float32)[:, None] + 0.5 + dy
    inside = (src_x >= box["xmin"]) & (src_x < box["xmax"]) & (src_y >= box["ymin"]) & (src_y < box["ymax"])
    rows, cols = np.any(inside, axis=1), np.any(inside, axis=0)
    if not rows.any():
        return None
    r = np.flatnonzero(rows)
    c = np.flatnonzero(cols)
    return c[0], r[0], c[-1] + 1, r[-1] + 1


# --- pixel kernels shared by several operations ------------------------------------------

def check_image(image: np.ndarray, where: str = "image") -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 2 or image.dtype not in (np.uint8, np.uint16):
        got = f"{getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}"
        raise ValueError(f"{where}: expected a 2-D uint8 or uint16 grayscale array, got {got}; "
                         f"convert it with core.data.io.to_uint8 first.")
    if min(image.shape) < 2:
        raise ValueError(f"{where}: image of shape {image.shape} is too small to augment (at least 2 x 2 px).")


def value_max(image: np.ndarray) -> int:
    """The full-scale value: 255 for uint8; for uint16 the stored bit depth found from the
    maximum (8, 12 or 16 bits), the rule ``core.data.io.read_image`` uses for X-rays."""
    if image.dtype == np.uint8:
        return 255
    top = int(image.max()) if image.size else 0
    return 255 if top < 256 else 4095 if top < 4096 else 65535


def _to_dtype(values: np.ndarray, like: np.ndarray, vmax: int) -> np.ndarray:
    """Round float values and clip them to [0, vmax] in the dtype of ``like``."""
    return np.clip(np.rint(values), 0, vmax).astype(like.dtype)


_RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3}  # Pillow's Resampling codes


def warp_affine(image: np.ndarray, inverse: tuple[float, ...], out_shape: tuple[int, int],
                interpolation: str = "nearest") -> np.ndarray:
    """Pillow's affine transform (the original study's kernel), black outside the input.
    uint16 goes through Pillow's 32-bit integer mode: its 16-bit mode cannot interpolate and
    decides differently which border pixels fall inside, while the 32-bit mode samples exactly
    the pixels the 8-bit mode does."""
    from PIL import Image

    h, w = out_shape
    resample = _RESAMPLE[interpolation]
    if image.dtype == np.uint16:
        im = Image.fromarray(image.astype(np.int32))
        out = np.asarray(im.transform((w, h), Image.Transform.AFFINE, inverse, resample))
        return np.clip(out, 0, 65535).astype(np.uint16)
    im = Image.fromarray(image)
    return np.asarray(im.transform((w, h), Image.Transform.AFFINE, inverse, resample))


@functools.lru_cache(maxsize=64)
def nearest_gather_plan(inverse: tuple[float, ...], in_shape: tuple[int, int],
                        out_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """For nearest sampling: the flat input index each output pixel copies, and the flat output
    positions that fall outside the input (black).

    Made by Pillow itself, transforming an image of indices, so a batch gather with it equals
    Pillow's own result bit for bit; computed once per geometry and reused for the batch."""
    from PIL import Image

    h, w = in_shape
    index = np.arange(1, h * w + 1, dtype=np.int32).reshape(h, w)
    im = Image.fromarray(index).transform((out_shape[1], out_shape[0]), Image.Transform.AFFINE, inverse, 0)
    found = np.asarray(im).ravel().astype(np.intp)
    return np.maximum(found - 1, 0), np.flatnonzero(found == 0)


def gather_nearest(batch: np.ndarray, plan: tuple[np.ndarray, np.ndarray], out: np.ndarray) -> None:
    """(N, H, W) -> ``out`` (N, h, w): copy pixels through a plan from :func:`nearest_gather_plan`."""
    n = batch.shape[0]
    index, outside = plan
    flat = out.reshape(n, -1)
    np.take(batch.reshape(n, -1), index, axis=1, out=flat)
    if outside.size:
        flat[:, outside] = 0


def _centre_affine(matrix: np.ndarray, shape: tuple[int, int]) -> tuple[float, ...]:
    """A 2x2 output->input matrix acting about the image centre, as Pillow's six coefficients."""
    h, w = shape
    cx, cy = w / 2.0, h / 2.0
    a, b = matrix[0]
    d, e = matrix[1]
    return (a, b, cx - a * cx - b * cy, d, e, cy - d * cx - e * cy)


# --- the operations -----------------------------------------------------------------------

Sampler = Callable[[np.random.Generator, dict, tuple[int, int]], dict]


@dataclass(frozen=True)
class Op:
    """One registry entry. ``sample`` and ``apply`` are pure; see the module docstring."""

    name: str                                   # registry key, used in pipeline JSON
    title: str                                  # shown on the page
    help: str                                   # one or two sentences: what it does, units
    params: tuple[Param, ...]
    sample: Sampler
    apply: Callable[[np.ndarray, dict], np.ndarray]
    geometry: Callable[[dict, tuple[int, int]], Geometry] | None = None  # geometric operations only
    apply_many: Callable[[np.ndarray, list[dict], np.ndarray], None] | None = None  # (N, H, W) kernel into `out`
    is_random: Callable[[dict], bool] = lambda params: True   # do two seeds give different results?
    resizes: Callable[[dict, tuple[int, int]], tuple[int, int]] | None = None  # output (H, W) if not the input's
    check: Callable[[dict, str], None] | None = None          # rules across parameters
    study: bool = False                         # one of the original study's operations
    threads: bool = True                        # may a batch be split over threads (False: the kernel is)

    @property
    def geometric(self) -> bool:
        return self.geometry is not None

    def output_shape(self, applied: dict, shape: tuple[int, int]) -> tuple[int, int]:
        return self.resizes(applied, shape) if self.resizes else tuple(shape)

    def defaults(self) -> dict:
        return {p.name: p.default for p in self.params}

    def param(self, name: str) -> Param:
        return next(p for p in self.params if p.name == name)

    def validate(self, params: dict | None, where: str = "") -> dict:
        """Fill defaults and check every value; raise ValueError naming the parameter and its range."""
        params = dict(params or {})
        where = where or f"{self.name}: "
        unknown = sorted(set(params) - {p.name for p in self.params})
        if unknown:
            known = ", ".join(p.name for p in self.params) or "no parameters"
            raise ValueError(f"{where}unknown parameter(s) {', '.join(unknown)}; {self.name} takes {known}.")
        full = {p.name: p.validate(params.get(p.name, p.default), where) for p in self.params}
        if self.check:
            self.check(full, where)
        return full

    def run(self, image: np.ndarray, rng: np.random.Generator, params: dict | None = None,
            boxes: list[dict] | None = None) -> tuple[np.ndarray, list[dict], dict]:
        """Sample, apply and move boxes for one image: ``(image, boxes, applied)``."""
        check_image(image)
        applied = self.sample(rng, self.validate(params), image.shape)
        out = self.apply(image, applied)
        if boxes and self.geometric:
            boxes = transform_boxes(boxes, self.geometry(applied, image.shape))
        return out, list(boxes or []), applied


def _jitter(rng: np.random.Generator, spread: float) -> float:
    return float(rng.uniform(-spread, spread)) if spread > 0 else 0.0


def _interp_param(default: str) -> Param:
    return Param("interpolation", "choice", default, choices=("nearest", "bilinear"),
                 help="nearest copies pixels (Pillow's default, as in the original study); bilinear is smoother.")


# rotate ---------------------------------------------------------------------------------

def _rotate_inverse(angle: float, shape: tuple[int, int]) -> tuple[float, ...]:
    """Pillow's ``Image.rotate`` matrix (same rounding), so the result equals ``im.rotate(angle)``."""
    h, w = shape
    cx, cy = w / 2.0, h / 2.0
    r = -math.radians(angle)
    a, b = round(math.cos(r), 15), round(math.sin(r), 15)
    d, e = round(-math.sin(r), 15), round(math.cos(r), 15)
    c = a * -cx + b * -cy + cx
    f = d * -cx + e * -cy + cy
    return (a, b, c, d, e, f)


def _rotate_transpose(angle: float, shape: tuple[int, int]) -> int | None:
    """Quarter turns that Pillow does as exact transposes: the number of 90-degree turns, or None."""
    turns = round(angle % 360.0, 9)
    if turns == 180.0:
        return 2
    if turns in (90.0, 270.0) and shape[0] == shape[1]:
        return int(turns // 90)
    return 0 if turns in (0.0, 360.0) else None


def _rotate_sample(rng, p, shape):
    return {"angle": round(p["angle"] + _jitter(rng, p["jitter"]), 4), "interpolation": p["interpolation"]}


def _rotate_geometry(a, shape):
    return Geometry(shape, shape, _rotate_inverse(a["angle"], shape))


_TRANSPOSE = {1: 2, 2: 3, 3: 4}  # quarter turns -> Pillow's Transpose.ROTATE_90 / 180 / 270


def quarter_turn(image: np.ndarray, turns: int) -> np.ndarray:
    """Exact counter-clockwise quarter turns (as ``np.rot90``) with Pillow's cache-blocked transpose."""
    from PIL import Image

    if turns % 4 == 0:
        return image.copy()
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).transpose(_TRANSPOSE[turns % 4]))


def _rotate_apply(image, a):
    turns = _rotate_transpose(a["angle"], image.shape)
    if turns is not None:
        return quarter_turn(image, turns)
    return warp_affine(image, _rotate_inverse(a["angle"], image.shape), image.shape, a["interpolation"])


def _affine_many(geometry: Callable) -> Callable[[np.ndarray, list[dict], np.ndarray], None]:
    """Batch kernel for affine operations: images sharing the same nearest-neighbour geometry are
    copied through one cached index map; the rest go through Pillow one by one."""
    def many(batch: np.ndarray, applied: list[dict], out: np.ndarray) -> None:
        shape = batch.shape[1:]
        groups: dict[tuple, list[int]] = {}
        for i, a in enumerate(applied):
            groups.setdefault(tuple(sorted((k, str(v)) for k, v in a.items())), []).append(i)
        for members in groups.values():
            a = applied[members[0]]
            geom = geometry(a, shape)
            interp = a.get("interpolation", "nearest")
            if interp == "nearest" and len(members) == len(batch):
                gather_nearest(batch, nearest_gather_plan(geom.inverse, shape, geom.out_shape), out)
            elif interp == "nearest" and len(members) > 1:
                part = np.empty((len(members), *geom.out_shape), dtype=batch.dtype)
                gather_nearest(batch[members], nearest_gather_plan(geom.inverse, shape, geom.out_shape), part)
                out[members] = part
            else:
                for i in members:
                    out[i] = warp_affine(batch[i], geom.inverse, geom.out_shape, interp)
    return many


def _rotate_many(batch, applied, out):
    turns = {_rotate_transpose(a["angle"], batch.shape[1:]) for a in applied}
    if len(turns) == 1 and None not in turns:
        k = turns.pop()
        for i in range(len(batch)):
            out[i] = quarter_turn(batch[i], k)
    else:
        _affine_many(_rotate_geometry)(batch, applied, out)


# flips ----------------------------------------------------------------------------------

def _no_params(rng, p, shape):
    return {}


def _hflip_geometry(a, shape):
    return Geometry(shape, shape, (-1.0, 0.0, float(shape[1]), 0.0, 1.0, 0.0))


def _vflip_geometry(a, shape):
    return Geometry(shape, shape, (1.0, 0.0, 0.0, 0.0, -1.0, float(shape[0])))


# crop and zoom --------------------------------------------------------------------------

def _box_params() -> tuple[Param, ...]:
    names = ("left", "top", "right", "bottom")
    return tuple(Param(n, "float", round(d, 6), 0.0, 1.0, 0.001, unit="fraction of the image",
                       help=f"{n.capitalize()} edge. " + _BOX_HELP) for n, d in zip(names, _BOX_DEFAULTS))


def _box_check(p: dict, where: str) -> None:
    for lo, hi in (("left", "right"), ("top", "bottom")):
        if p[hi] - p[lo] < 0.01:
            raise ValueError(f"{where}{hi}={_fmt(p[hi])} must exceed {lo}={_fmt(p[lo])} by at least 0.01 "
                             f"(fractions of the image in [0, 1]).")


def box_pixels(p: dict, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """The relative box in pixels of an (H, W) image, rounded, clipped, at least one pixel wide."""
    h, w = shape
    x0, x1 = (min(max(round(p[k] * w), 0), w) for k in ("left", "right"))
    y0, y1 = (min(max(round(p[k] * h), 0), h) for k in ("top", "bottom"))
    x0, y0 = min(x0, w - 1), min(y0, h - 1)
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def _crop_sample(rng, p, shape):
    return {"box": list(box_pixels(p, shape))}


def _crop_geometry(a, shape):
    x0, y0, x1, y1 = a["box"]
    return Geometry(shape, (y1 - y0, x1 - x0), (1.0, 0.0, float(x0), 0.0, 1.0, float(y0)))


def _crop_apply(image, a):
    x0, y0, x1, y1 = a["box"]
    return image[y0:y1, x0:x1].copy()


def _crop_many(batch, applied, out):
    x0, y0, x1, y1 = applied[0]["box"]
    if any(a["box"] != applied[0]["box"] for a in applied):
        raise ValueError("crop: images of one batch must share one crop box (crop has no random part).")
    np.copyto(out, batch[:, y0:y1, x0:x1])


def _zoom_sample(rng, p, shape):
    x0, y0, x1, y1 = box_pixels(p, shape)
    if p["jitter"] > 0:  # a random box inside the given one, down to (1 - jitter) of its size
        s = float(rng.uniform(1.0 - p["jitter"], 1.0))
        bw, bh = max(1, round((x1 - x0) * s)), max(1, round((y1 - y0) * s))
        nx = x0 + int(rng.integers(0, x1 - x0 - bw + 1))
        ny = y0 + int(rng.integers(0, y1 - y0 - bh + 1))
        x0, y0, x1, y1 = nx, ny, nx + bw, ny + bh
    return {"box": [x0, y0, x1, y1]}


def _zoom_geometry(a, shape):
    x0, y0, x1, y1 = a["box"]
    h, w = shape
    return Geometry(shape, shape, ((x1 - x0) / w, 0.0, float(x0), 0.0, (y1 - y0) / h, float(y0)))


def _zoom_apply(image, a):
    """Crop, then resize back to the working size with Pillow's default (bicubic) filter."""
    from PIL import Image

    x0, y0, x1, y1 = a["box"]
    h, w = image.shape
    out = np.asarray(Image.fromarray(image).crop((x0, y0, x1, y1)).resize((w, h)))
    return np.minimum(out, value_max(image)).astype(image.dtype) if image.dtype == np.uint16 else out


def _zoom_many(batch, applied, out):
    """Zoom a batch. uint8 batches sharing one box use torch's antialiased bicubic resize for
    uint8 (a port of Pillow's fixed-point filter, multi-threaded; it differs from Pillow by at most
    2 grey levels on ~0.2 % of pixels); everything else goes through Pillow image by image."""
    boxes = {tuple(a["box"]) for a in applied}
    if batch.dtype == np.uint8 and len(boxes) == 1 and len(batch) >= 4:
        try:
            import torch
            import torch.nn.functional as F
        except ImportError:  # pragma: no cover - torch is a requirement, but keep NumPy-only use possible
            torch = None
        if torch is not None:
            x0, y0, x1, y1 = boxes.pop()
            crop = torch.from_numpy(np.ascontiguousarray(batch[:, y0:y1, x0:x1])).unsqueeze(1)
            res = F.interpolate(crop, size=batch.shape[1:], mode="bicubic", antialias=True, align_corners=False)
            out[...] = res[:, 0].numpy()
            return
    for i in range(len(batch)):
        out[i] = _zoom_apply(batch[i], applied[i])


# shear ----------------------------------------------------------------------------------

def _shear_sample(rng, p, shape):
    return {"angle": round(p["angle"] + _jitter(rng, p["jitter"]), 4), "interpolation": p["interpolation"]}


def _shear_geometry(a, shape):
    t = math.tan(math.radians(a["angle"]))
    return Geometry(shape, shape, _centre_affine(np.array([[1.0, -t], [0.0, 1.0]]), shape))


def _shear_apply(image, a):
    geom = _shear_geometry(a, image.shape)
    return warp_affine(image, geom.inverse, image.shape, a["interpolation"])


# translate / scale ----------------------------------------------------------------------

def _ts_sample(rng, p, shape):
    return {"dx": round(_jitter(rng, p["translate"]), 5), "dy": round(_jitter(rng, p["translate"]), 5),
            "scale": round(float(np.exp(rng.uniform(*np.log(p["scale"])))), 5), "interpolation": p["interpolation"]}


def _ts_geometry(a, shape):
    h, w = shape
    s = a["scale"]
    inv = _centre_affine(np.array([[1 / s, 0.0], [0.0, 1 / s]]), shape)
    # the shift happens after scaling: x_in = (x_out - dx W - cx) / s + cx
    inv = (inv[0], inv[1], inv[2] - a["dx"] * w / s, inv[3], inv[4], inv[5] - a["dy"] * h / s)
    return Geometry(shape, shape, inv)


def _ts_apply(image, a):
    return warp_affine(image, _ts_geometry(a, image.shape).inverse, image.shape, a["interpolation"])


# elastic --------------------------------------------------------------------------------

def elastic_field(a: dict, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random displacements (dx, dy) in pixels: normal offsets on a coarse grid of
    control points (spacing ``sigma`` x image size), upsampled bicubically to every pixel."""
    from PIL import Image

    h, w = shape
    rng = np.random.default_rng(a["seed"])
    cells = max(2, round(1.0 / a["sigma"]))
    coarse = rng.standard_normal((2, cells + 1, cells + 1)).astype(np.float32)
    amp = a["alpha"] * min(h, w)
    dx, dy = (np.asarray(Image.fromarray(c).resize((w, h), Image.Resampling.BICUBIC)) * amp
              for c in coarse)
    return dx, dy


def _elastic_sample(rng, p, shape):
    return {"alpha": p["alpha"], "sigma": p["sigma"], "seed": int(rng.integers(0, 2**31 - 1))}


def _elastic_geometry(a, shape):
    return Geometry(shape, shape, None, elastic_field(a, shape))


def _elastic_apply(image, a):
    from scipy import ndimage

    dx, dy = elastic_field(a, image.shape)
    h, w = image.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return ndimage.map_coordinates(image, [yy + dy, xx + dx], order=1, mode="grid-constant", cval=0)


# intensity ------------------------------------------------------------------------------

def _lut_apply(image: np.ndarray, lut_of: Callable[[np.ndarray, int], np.ndarray]) -> np.ndarray:
    """Apply a per-value mapping through a lookup table over [0, value_max]."""
    vmax = value_max(image)
    levels = np.arange(vmax + 1, dtype=np.float64)
    lut = _to_dtype(lut_of(levels, vmax), image, vmax)
    return np.take(lut, np.minimum(image, vmax))


def _clahe_apply(image, a):
    from skimage import exposure

    vmax = value_max(image)
    h, w = image.shape
    kernel = (max(2, round(h * a["kernel"])), max(2, round(w * a["kernel"])))
    scaled = image if image.dtype == np.uint8 else (image.astype(np.float64) / vmax)
    out = exposure.equalize_adapthist(scaled, kernel_size=kernel, clip_limit=a["clip_limit"], nbins=256)
    return _to_dtype(out * vmax, image, vmax)


def _gamma_sample(rng, p, shape):
    lo, hi = p["gamma"]
    return {"gamma": round(float(np.exp(rng.uniform(math.log(lo), math.log(hi)))), 5)}


def _gamma_apply(image, a):
    return _lut_apply(image, lambda v, vmax: vmax * (v / vmax) ** a["gamma"])


def _bc_sample(rng, p, shape):
    return {"brightness": round(_jitter(rng, p["brightness"]), 5),
            "contrast": round(1.0 + _jitter(rng, p["contrast"]), 5)}


def _bc_apply(image, a):
    mean = float(image.mean())
    return _lut_apply(image, lambda v, vmax: (v - mean) * a["contrast"] + mean + a["brightness"] * vmax)


def _noise_sample(rng, p, shape):
    lo, hi = p["sigma"]
    return {"sigma": round(float(rng.uniform(lo, hi)), 5), "seed": int(rng.integers(0, 2**31 - 1))}


def noise_field(a: dict, shape: tuple[int, int]) -> np.ndarray:
    """Standard-normal float32 noise for ``a["seed"]`` (shared by the NumPy and torch kernels)."""
    return np.random.default_rng(a["seed"]).standard_normal(shape, dtype=np.float32)


def _noise_apply(image, a):
    vmax = value_max(image)
    noisy = image.astype(np.float32) + noise_field(a, image.shape) * np.float32(a["sigma"] * vmax)
    return _to_dtype(noisy, image, vmax)


def _blur_sample(rng, p, shape):
    lo, hi = p["sigma"]
    return {"sigma": round(float(rng.uniform(lo, hi)), 4)}


def _blur_apply(image, a):
    from scipy import ndimage

    if a["sigma"] <= 0:
        return image.copy()
    out = ndimage.gaussian_filter(image, a["sigma"], output=np.float32, mode="nearest", truncate=4.0)
    return _to_dtype(out, image, value_max(image))


def _erase_sample(rng, p, shape):
    h, w = shape
    rects = []
    for _ in range(p["count"]):
        area = float(rng.uniform(*p["area"])) * h * w
        aspect = float(np.exp(rng.uniform(*np.log(p["aspect"]))))
        eh = int(np.clip(round(math.sqrt(area * aspect)), 1, h))
        ew = int(np.clip(round(math.sqrt(area / aspect)), 1, w))
        y0, x0 = int(rng.integers(0, h - eh + 1)), int(rng.integers(0, w - ew + 1))
        rects.append([x0, y0, x0 + ew, y0 + eh])
    return {"rects": rects, "fill": p["fill"], "seed": int(rng.integers(0, 2**31 - 1))}


def _erase_apply(image, a):
    out = image.copy()
    vmax = value_max(image)
    rng = np.random.default_rng(a["seed"])
    for x0, y0, x1, y1 in a["rects"]:
        if a["fill"] == "black":
            out[y0:y1, x0:x1] = 0
        elif a["fill"] == "mean":
            out[y0:y1, x0:x1] = round(float(image.mean()))
        else:
            out[y0:y1, x0:x1] = rng.integers(0, vmax + 1, size=(y1 - y0, x1 - x0))
    return out


def _flip_many(axis: int):
    def many(batch, applied, out):
        np.copyto(out, np.flip(batch, axis=axis))
    return many


def _range_check(name: str):
    def check(p: dict, where: str) -> None:
        if p[name][0] <= 0:
            raise ValueError(f"{where}{name}={list(p[name])}: the low end must be above 0.")
    return check


_DEGREES = "degrees"
OPS: dict[str, Op] = {op.name: op for op in (
    Op("rotate", "Rotate",
       "Rotate counter-clockwise about the centre by angle (degrees) plus a random jitter in "
       "[-jitter, +jitter]; corners outside the image are black, the size is kept (Pillow's rotate). "
       "The original study used 45 and 270.",
       (Param("angle", "float", 45.0, -360.0, 360.0, 1.0, unit=_DEGREES, help="Counter-clockwise angle."),
        Param("jitter", "float", 0.0, 0.0, 180.0, 0.5, unit=_DEGREES, help="Random extra angle, uniform in ± this."),
        _interp_param("nearest")),
       _rotate_sample, _rotate_apply, _rotate_geometry, _rotate_many,
       is_random=lambda p: p["jitter"] > 0, study=True),
    Op("hflip", "Horizontal flip", "Mirror left-right (the original study's horizontal flip).", (),
       _no_params, lambda im, a: np.ascontiguousarray(im[:, ::-1]), _hflip_geometry, _flip_many(2),
       is_random=lambda p: False, study=True),
    Op("vflip", "Vertical flip", "Mirror top-bottom (the original study's vertical flip). Not spine-safe: "
       "it puts the pelvis above the thorax.", (),
       _no_params, lambda im, a: np.ascontiguousarray(im[::-1]), _vflip_geometry, _flip_many(1),
       is_random=lambda p: False, study=True),
    Op("crop", "Crop",
       "Cut out a box; the output is the box's size. " + _BOX_HELP,
       _box_params(), _crop_sample, _crop_apply, _crop_geometry, _crop_many,
       is_random=lambda p: False, check=_box_check, study=True,
       resizes=lambda a, shape: (a["box"][3] - a["box"][1], a["box"][2] - a["box"][0])),
    Op("zoom", "Zoom",
       "Crop a box, then resize it back to the working size (the input's size) with Pillow's "
       "bicubic filter, as the original study resized its crops to 500 x 500. " + _BOX_HELP +
       " jitter > 0 picks a random box inside it, down to (1 - jitter) of its size.",
       (*_box_params(), Param("jitter", "float", 0.0, 0.0, 0.5, 0.01, unit="fraction of the box",
                              help="Random shrink and shift of the box.")),
       _zoom_sample, _zoom_apply, _zoom_geometry, _zoom_many,
       is_random=lambda p: p["jitter"] > 0, check=_box_check, study=True, threads=False),
    Op("shear", "Shear",
       "Horizontal shear about the centre by angle in DEGREES: rows below the centre move right by "
       "tan(angle) x their distance from it. The original study's text says '30 radians'; 30 radians "
       "is an implausible shear (tan 30 rad = -6.4), so it is read as 30 degrees.",
       (Param("angle", "float", 30.0, -60.0, 60.0, 1.0, unit=_DEGREES, help="Shear angle (degrees, not radians)."),
        Param("jitter", "float", 0.0, 0.0, 30.0, 0.5, unit=_DEGREES, help="Random extra angle, uniform in ± this."),
        _interp_param("nearest")),
       _shear_sample, _shear_apply, _shear_geometry, _affine_many(_shear_geometry),
       is_random=lambda p: p["jitter"] > 0, study=True),
    Op("translate_scale", "Translate / scale",
       "Shift by up to ± translate of the image size in x and y, and scale about the centre by a "
       "factor drawn log-uniformly from the scale range; black outside.",
       (Param("translate", "float", 0.05, 0.0, 0.3, 0.01, unit="fraction of the image", help="Largest shift."),
        Param("scale", "float_range", (0.9, 1.1), 0.5, 2.0, 0.01, unit="x", help="Scale factor range."),
        _interp_param("bilinear")),
       _ts_sample, _ts_apply, _ts_geometry, _affine_many(_ts_geometry), check=_range_check("scale")),
    Op("elastic", "Elastic deformation",
       "Smooth random warp: control points every sigma x image size move by normal offsets of "
       "alpha x image size (standard deviation); bilinear sampling, boxes follow the warp.",
       (Param("alpha", "float", 0.01, 0.0, 0.05, 0.001, unit="fraction of the image", help="Displacement scale."),
        Param("sigma", "float", 0.2, 0.05, 0.5, 0.01, unit="fraction of the image", help="Control-point spacing (smoothness).")),
       _elastic_sample, _elastic_apply, _elastic_geometry, is_random=lambda p: p["alpha"] > 0),
    Op("clahe", "CLAHE",
       "Contrast-limited adaptive histogram equalisation (scikit-image): local contrast in tiles of "
       "kernel x image size, limited by clip_limit.",
       (Param("clip_limit", "float", 0.01, 0.001, 0.1, 0.001, help="Higher gives more contrast."),
        Param("kernel", "float", 0.125, 0.05, 0.5, 0.005, unit="fraction of the image", help="Tile size.")),
       lambda rng, p, shape: dict(p), _clahe_apply, is_random=lambda p: False),
    Op("gamma", "Gamma",
       "Power-law intensity curve out = max x (in / max) ^ gamma, gamma drawn log-uniformly from the "
       "range (< 1 brightens, > 1 darkens).",
       (Param("gamma", "float_range", (0.8, 1.25), 0.2, 5.0, 0.01, help="Range of the exponent."),),
       _gamma_sample, _gamma_apply, is_random=lambda p: p["gamma"][0] < p["gamma"][1], check=_range_check("gamma")),
    Op("brightness_contrast", "Brightness / contrast",
       "Scale contrast about the image mean by 1 ± contrast and shift brightness by ± brightness of "
       "the full scale (both uniform); clipped to the range.",
       (Param("brightness", "float", 0.1, 0.0, 0.5, 0.01, unit="fraction of full scale", help="Largest shift."),
        Param("contrast", "float", 0.1, 0.0, 0.9, 0.01, unit="fraction", help="Largest relative contrast change.")),
       _bc_sample, _bc_apply, is_random=lambda p: p["brightness"] > 0 or p["contrast"] > 0),
    Op("gaussian_noise", "Gaussian noise",
       "Add normal noise with a standard deviation drawn from the sigma range (fraction of full scale).",
       (Param("sigma", "float_range", (0.01, 0.03), 0.0, 0.2, 0.005, unit="fraction of full scale",
              help="Range of the noise standard deviation."),),
       _noise_sample, _noise_apply, is_random=lambda p: p["sigma"][1] > 0),
    Op("gaussian_blur", "Gaussian blur",
       "Blur with a Gaussian whose standard deviation (pixels of the working image) is drawn from the range.",
       (Param("sigma", "float_range", (0.5, 1.5), 0.0, 8.0, 0.1, unit="px", help="Range of the blur radius."),),
       _blur_sample, _blur_apply, is_random=lambda p: p["sigma"][0] < p["sigma"][1]),
    Op("random_erasing", "Random erasing",
       "Blank count rectangles with an area drawn from the range (fraction of the image) and an aspect "
       "ratio (height / width) drawn log-uniformly; fill with black, the image mean or noise. Boxes are kept.",
       (Param("area", "float_range", (0.02, 0.1), 0.001, 0.5, 0.001, unit="fraction of the image", help="Area range."),
        Param("aspect", "float_range", (0.3, 3.3), 0.1, 10.0, 0.1, help="Height / width range."),
        Param("count", "int", 1, 1, 5, 1, help="Rectangles per image."),
        Param("fill", "choice", "black", choices=("black", "mean", "noise"), help="What fills a rectangle.")),
       _erase_sample, _erase_apply, check=_range_check("aspect")),
)}

# The original study's seven augmentations, in its order: (label, operation, params).
STUDY_OPERATIONS: tuple[tuple[str, str, dict], ...] = (
    ("rotate 45", "rotate", {"angle": 45.0}),
    ("rotate 270", "rotate", {"angle": 270.0}),
    ("horizontal flip", "hflip", {}),
    ("vertical flip", "vflip", {}),
    ("crop (2, 5, 500, 1000)", "crop", {}),
    ("zoom (crop + resize)", "zoom", {}),
    ("shear 30 degrees", "shear", {"angle": 30.0}),
)


def get_op(name: str, where: str = "") -> Op:
    """The registry entry ``name``, or a ValueError listing the known operations."""
    try:
        return OPS[name]
    except (KeyError, TypeError):
        raise ValueError(f"{where}unknown operation {name!r}; known operations: {', '.join(OPS)}.") from None


def describe_applied(applied: dict, op_name: str = "") -> str:
    """A short one-line text of applied parameters, e.g. ``rotate angle 12.5`` (captions, logs);
    a parameter named like its operation is shown by value only (``gamma 0.8``)."""
    parts = [op_name] if op_name else []
    for k, v in applied.items():
        if k in ("seed", "interpolation", "fill"):
            continue
        if k == op_name:
            k = ""
        if isinstance(v, float):
            parts.append(f"{k} {v:.3g}".strip())
        elif isinstance(v, list) and v and isinstance(v[0], list):
            parts.append(f"{len(v)} {k}")
        else:
            parts.append(f"{k} {v}".strip())
    return " ".join(parts)
