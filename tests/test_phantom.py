"""Tests for core.data.phantom: determinism, class split and - from the pixels -
that every finding is drawn, visible and inside its box."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from core.data.phantom import (
    CLASS_NAMES,
    FINDINGS,
    TRAIN_IMAGE_ESTIMATE,
    Box,
    PhantomSample,
    class_counts,
    render_phantom,
)

SEEDS = (0, 1, 2, 3, 4)
SIZE = 256
LOCALISED = ("Osteophytes", "Surgical implant", "Foraminal stenosis", "Other lesions")


# --------------------------------------------------------------------------- helpers


def _box_mask(boxes, size, grow=0):
    m = np.zeros((size, size), dtype=bool)
    for b in boxes:
        x0 = max(int(np.floor(b.xmin)) - grow, 0)
        y0 = max(int(np.floor(b.ymin)) - grow, 0)
        x1 = min(int(np.ceil(b.xmax)) + grow, size)
        y1 = min(int(np.ceil(b.ymax)) + grow, size)
        m[y0:y1, x0:x1] = True
    return m


def _crop(img, b: Box):
    return img[int(np.floor(b.ymin)):int(np.ceil(b.ymax)), int(np.floor(b.xmin)):int(np.ceil(b.xmax))]


def _profile(img, p0, p1, step=0.25):
    """Bilinear samples from p0 to p1 (x, y, continuous pixel coordinates) and their spacing."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    length = float(np.hypot(*(p1 - p0)))
    n = max(int(length / step), 2)
    pts = p0[None] + np.linspace(0, 1, n)[:, None] * (p1 - p0)[None]
    # pixel (row i, col j) has its centre at (j + 0.5, i + 0.5)
    samples = ndimage.map_coordinates(img, [pts[:, 1] - 0.5, pts[:, 0] - 0.5], order=1, mode="nearest")
    return samples, length / (n - 1)


def _centre(v):
    return np.array([v["cx"], v["cy"]])


def _inner(v, size, margin=0.1):
    return margin * size <= v["cx"] <= (1 - margin) * size and margin * size <= v["cy"] <= (1 - margin) * size


def _disc_gaps_from_pixels(img, verts):
    """Length (pixels) of the dark disc run on the line joining adjacent vertebral centres,
    at half height between the dip and the dimmer of the two endplate rims around it.
    NaN for pairs near the image border."""
    size = img.shape[0]
    runs = []
    for a, b in zip(verts[:-1], verts[1:]):
        if not (_inner(a, size) and _inner(b, size)):
            runs.append(np.nan)
            continue
        p, dl = _profile(img, _centre(a), _centre(b))
        p = ndimage.uniform_filter1d(p, 3)
        k = len(p) // 6
        lo = int(np.argmin(p[k:-k])) + k  # the dip between the two endplates
        rims = min(p[k:lo + 1].max(), p[lo:-k].max())  # the bright endplates around it
        thr = (rims + p[lo]) / 2
        below = p < thr
        i0 = lo
        while i0 > 0 and below[i0 - 1]:
            i0 -= 1
        i1 = lo
        while i1 < len(p) - 1 and below[i1 + 1]:
            i1 += 1
        runs.append((i1 - i0 + 1) * dl if below[lo] else 0.0)
    return np.array(runs)


# --------------------------------------------------------------------------- API / contracts


def test_class_names_and_estimates():
    assert CLASS_NAMES == (  # VinDr-SpineXR label strings, including its spelling
        "No finding", "Osteophytes", "Disc space narrowing", "Surgical implant",
        "Foraminal stenosis", "Spondylolysthesis", "Vertebral collapse", "Other lesions")
    assert set(TRAIN_IMAGE_ESTIMATE) == set(CLASS_NAMES)
    assert TRAIN_IMAGE_ESTIMATE["No finding"] == 4257 and TRAIN_IMAGE_ESTIMATE["Vertebral collapse"] == 180


@pytest.mark.parametrize("n", [1, 7, 8, 9, 100, 1000, 1001, 4321])
def test_class_counts_sum_and_floor(n):
    c = class_counts(n)
    assert list(c) == list(CLASS_NAMES)
    assert sum(c.values()) == n
    assert all(v >= 0 for v in c.values())
    if n >= len(CLASS_NAMES):
        assert min(c.values()) >= 1


def test_findings_table():
    """One FINDINGS entry per class, in CLASS_NAMES order; the localised ones only draw."""
    assert tuple(FINDINGS) == CLASS_NAMES
    assert all(name == f.name and f.about for name, f in FINDINGS.items())
    assert {f.name for f in FINDINGS.values() if f.localised and f.draw} == set(LOCALISED)


def test_class_counts_proportions():
    n = 1000
    c = class_counts(n)
    total = sum(TRAIN_IMAGE_ESTIMATE.values())
    for name in CLASS_NAMES:
        assert abs(c[name] - n * TRAIN_IMAGE_ESTIMATE[name] / total) < 1.0  # largest remainder
    small = sorted(c.values())[:5]
    assert all(15 <= v <= 60 for v in small), c
    assert c["No finding"] > c["Osteophytes"] > c["Disc space narrowing"] > c["Vertebral collapse"]


@pytest.mark.parametrize("bad", [0, -5])
def test_class_counts_rejects_bad_n(bad):
    with pytest.raises(ValueError, match="at least 1"):
        class_counts(bad)


def test_class_counts_rejects_non_integer():
    with pytest.raises(ValueError):
        class_counts(2.5)


def test_unknown_label_names_the_valid_ones():
    with pytest.raises(ValueError) as e:
        render_phantom("Fracture", 64, 0)
    msg = str(e.value)
    assert "Fracture" in msg and "No finding" in msg and "Other lesions" in msg


@pytest.mark.parametrize("size", [0, 16, 31, 2049, 100000])
def test_absurd_size_rejected(size):
    with pytest.raises(ValueError, match="size"):
        render_phantom("No finding", size, 0)


def test_negative_seed_rejected():
    with pytest.raises(ValueError, match="seed"):
        render_phantom("No finding", 64, -1)


def test_determinism():
    for label in CLASS_NAMES:
        a = render_phantom(label, 128, 7)
        b = render_phantom(label, 128, 7)
        np.testing.assert_array_equal(a.image, b.image)
        assert a.boxes == b.boxes
        assert a.sign == b.sign
        c = render_phantom(label, 128, 8)
        assert not np.array_equal(a.image, c.image)


def test_anatomy_depends_on_seed_only():
    """Same seed, different finding: the normal column is the same (localised signs)."""
    base = render_phantom("No finding", SIZE, 3)
    for label in LOCALISED:
        s = render_phantom(label, SIZE, 3)
        assert [v["center"] for v in s.vertebrae] == [v["center"] for v in base.vertebrae]


@pytest.mark.parametrize("label", CLASS_NAMES)
@pytest.mark.parametrize("size", [32, 97, SIZE])
def test_image_and_box_contract(label, size):
    for seed in SEEDS[:3]:
        s = render_phantom(label, size, seed)
        assert isinstance(s, PhantomSample)
        assert s.label == label
        assert s.image.dtype == np.float32 and s.image.shape == (size, size)
        assert np.isfinite(s.image).all()
        assert s.image.min() >= 0.0 and s.image.max() <= 1.0
        assert s.image.std() > 0.05  # not blank
        assert 5 <= len(s.vertebrae) <= 7
        assert all(isinstance(v, float) for v in s.sign.values())
        if label == "No finding":
            assert s.boxes == [] and s.sign == {}
        else:
            assert len(s.boxes) >= 1
        for b in s.boxes:
            assert b.label == label
            assert 0 <= b.xmin < b.xmax <= size and 0 <= b.ymin < b.ymax <= size
            assert b.xmax - b.xmin >= 1 and b.ymax - b.ymin >= 1
            if size == SIZE:  # tight: a finding is small compared with the image
                assert (b.xmax - b.xmin) * (b.ymax - b.ymin) < 0.25 * size * size


def test_looks_like_a_spine():
    """Bright cortical rim around a textured body, bodies brighter than the discs between
    them and than the soft tissue in front, centres evenly spaced along one column."""
    for seed in SEEDS:
        s = render_phantom("No finding", SIZE, seed)
        img = ndimage.gaussian_filter(s.image.astype(np.float64), 0.7)
        vs = s.vertebrae
        inner_levels = [v for v in vs if _inner(v, SIZE)]
        assert len(inner_levels) >= 3
        brighter, rim = [], []
        for v in inner_levels:
            c = _centre(v)
            u = np.array(v["u_axis"])
            ev = np.array(v["v_axis"])
            h = v["height"] / 2
            core, _ = _profile(img, c - u * v["width"] * 0.25, c + u * v["width"] * 0.25)
            interior = np.median(core)
            # trabecular texture inside the body (not a flat fill)
            assert np.std(_profile(s.image, c - u * v["width"] * 0.3, c + u * v["width"] * 0.3)[0]) > 0.01
            # the endplate rim is brighter than the interior
            p, _ = _profile(img, c - ev * (h + 3), c)
            rim.append(p.max() > np.median(p[len(p) // 2:]) + 0.03)
            # the body is brighter than the soft tissue in front of it
            q, _ = _profile(img, c - u * (v["width"] / 2 + 10), c - u * (v["width"] / 2 + 4))
            # (the iliac crest or a rib can overlap one of them)
            brighter.append(interior > np.median(q) + 0.05)
        assert np.mean(brighter) >= 0.75, (seed, brighter)
        assert np.mean(rim) >= 0.75, (seed, rim)
        gaps = _disc_gaps_from_pixels(s.image, vs)
        gaps = gaps[np.isfinite(gaps)]
        assert gaps.size >= 2 and (gaps > 0.3 * np.median([v["gap_below"] for v in vs[:-1]])).all(), (seed, gaps)
        cs = np.array([_centre(v) for v in vs])
        steps = np.hypot(*np.diff(cs, axis=0).T)
        assert steps.std() / steps.mean() < 0.15


# --------------------------------------------------------------------------- localised findings


@pytest.mark.parametrize("label", LOCALISED)
def test_localised_finding_lies_inside_its_boxes(label):
    """Versus the 'No finding' image of the same seed, every changed pixel is inside a box
    (grown by the blur radius) and every box contains a clear change."""
    for seed in SEEDS:
        base = render_phantom("No finding", SIZE, seed).image
        s = render_phantom(label, SIZE, seed)
        diff = np.abs(s.image - base)
        inside = _box_mask(s.boxes, SIZE, grow=3)
        assert diff[~inside].max() < 1e-5, (label, seed)
        for b in s.boxes:
            assert _crop(diff, b).max() > 0.08, (label, seed, b)


def test_osteophytes_are_bright_spurs():
    for seed in SEEDS:
        s = render_phantom("Osteophytes", SIZE, seed)
        base = render_phantom("No finding", SIZE, seed).image
        assert 1 <= len(s.boxes) <= 4 and s.sign["count"] == len(s.boxes)
        for b in s.boxes:
            assert _crop(s.image, b).mean() > _crop(base, b).mean() + 0.03
            # a spur is small: at most about half a vertebral body
            assert (b.xmax - b.xmin) < 0.6 * max(v["width"] for v in s.vertebrae)
        # and brighter than a soft-tissue patch of the same size next to the column
        bx = s.boxes[0]
        w, h = int(np.ceil(bx.xmax - bx.xmin)), int(np.ceil(bx.ymax - bx.ymin))
        v = s.vertebrae[len(s.vertebrae) // 2]
        tissue_c = _centre(v) - np.array(v["u_axis"]) * (v["width"] / 2 + 12)
        patch = s.image[int(tissue_c[1]) - h // 2:int(tissue_c[1]) + h // 2 + 1,
                        int(tissue_c[0]) - w // 2:int(tissue_c[0]) + w // 2 + 1]
        assert _crop(s.image, bx).max() > patch.mean() + 0.1


def test_surgical_implant_is_saturated_metal_only_in_its_box():
    for seed in SEEDS:
        s = render_phantom("Surgical implant", SIZE, seed)
        assert len(s.boxes) == 1
        b = s.boxes[0]
        sat = s.image >= 1.0
        in_box = _box_mask(s.boxes, SIZE)
        assert sat[in_box].sum() > 50
        assert not sat[~in_box].any()
        frac = _crop(sat, b).mean()
        assert abs(frac - s.sign["saturated_fraction_in_box"]) < 1e-6
        assert 0.05 < frac < 0.6
        assert s.sign["levels"] in (2.0, 3.0)
        # the hardware spans the instrumented levels along the column
        k = int(s.sign["levels"])
        j = int(s.sign["level"])
        heights = [s.vertebrae[i]["height"] for i in range(j, j + k)]
        assert max(b.ymax - b.ymin, b.xmax - b.xmin) > 0.8 * sum(heights[:-1])


def test_no_saturation_without_metal():
    for label in CLASS_NAMES:
        if label == "Surgical implant":
            continue
        for seed in SEEDS:
            assert render_phantom(label, SIZE, seed).image.max() < 0.99


def test_other_lesion_contrast_direction():
    kinds = set()
    for seed in range(8):
        s = render_phantom("Other lesions", SIZE, seed)
        b = s.boxes[0]
        r = s.sign["radius"]
        cx, cy = s.sign["cx"], s.sign["cy"]
        assert b.xmin <= cx <= b.xmax and b.ymin <= cy <= b.ymax
        yy, xx = np.mgrid[:SIZE, :SIZE] + 0.5
        rr = np.hypot(xx - cx, yy - cy)
        inner = s.image[rr <= 0.7 * r].mean()
        ring = s.image[(rr >= 1.4 * r) & (rr <= 2.0 * r)].mean()
        measured = inner - ring
        lytic = bool(s.sign["lytic"])
        kinds.add(lytic)
        if lytic:
            assert measured < -0.05, (seed, measured)
            assert s.sign["contrast"] < -0.05
        else:
            assert measured > 0.05, (seed, measured)
            assert s.sign["contrast"] > 0.05
        assert abs(measured - s.sign["contrast"]) < 0.03
        # the spot is inside a vertebral body
        v = s.vertebrae[int(s.sign["level"])]
        off = np.array([cx, cy]) - _centre(v)
        assert abs(off @ np.array(v["u_axis"])) + r < v["width"] / 2
        assert abs(off @ np.array(v["v_axis"])) + r < v["height"] / 2
    assert kinds == {True, False}  # both sclerotic and lytic spots occur


def test_foraminal_stenosis_occludes_the_foramen():
    for seed in SEEDS:
        s = render_phantom("Foraminal stenosis", SIZE, seed)
        base = render_phantom("No finding", SIZE, seed).image
        assert 0.0 <= s.sign["foramen_ratio"] < 0.75
        assert s.sign["area_px"] < s.sign["normal_area_px"]
        b = s.boxes[0]
        assert b.xmin <= s.sign["cx"] <= b.xmax and b.ymin <= s.sign["cy"] <= b.ymax
        # the foramen (dark in the normal image) gets bone density
        cx, cy = s.sign["cx"], s.sign["cy"]
        rad = min(s.sign["radius_u"], s.sign["radius_v"])
        yy, xx = np.mgrid[:SIZE, :SIZE] + 0.5
        roi = np.hypot(xx - cx, yy - cy) <= rad
        assert s.image[roi].mean() > base[roi].mean() + 0.05
        # the normal foramen is darker than the pedicles around it
        assert base[roi].mean() < np.percentile(_crop(base, b), 90) - 0.05


# --------------------------------------------------------------------------- geometric findings


def test_disc_space_narrowing_geometry_and_pixels():
    for seed in SEEDS:
        s = render_phantom("Disc space narrowing", SIZE, seed)
        base = render_phantom("No finding", SIZE, seed)
        j = int(s.sign["level"])
        gaps = np.array([v["gap_below"] for v in s.vertebrae[:-1]])
        others = np.delete(gaps, j)
        ratio = gaps[j] / np.median(others)
        assert 0.2 <= ratio <= 0.4
        assert abs(ratio - s.sign["disc_ratio"]) < 1e-6
        # intensity profile along the column: the narrowed disc has the shortest dark run,
        # 20-40 % of the other discs (allowing for pixel quantisation and blur)
        runs = _disc_gaps_from_pixels(s.image, s.vertebrae)
        assert np.isfinite(runs[j])
        measured = runs[j] / np.nanmedian(np.delete(runs, j))
        assert 0.1 <= measured <= 0.55, (seed, measured)
        # against the same spine without the finding only this disc got narrower
        base_runs = _disc_gaps_from_pixels(base.image, base.vertebrae)
        change = runs / base_runs
        assert 0.1 <= change[j] <= 0.55
        assert np.all(np.delete(change, j)[np.isfinite(np.delete(change, j))] > 0.7), (seed, change)
        # the box spans the narrowed disc between the two bodies
        b = s.boxes[0]
        mid = (_centre(s.vertebrae[j]) + _centre(s.vertebrae[j + 1])) / 2
        assert b.xmin <= mid[0] <= b.xmax and b.ymin <= mid[1] <= b.ymax
        assert b.ymax - b.ymin < 0.8 * s.vertebrae[j]["height"] + s.vertebrae[j]["width"] * 0.5
    # in normal spines the pixel measure follows the geometry
    for seed in SEEDS:
        base = render_phantom("No finding", SIZE, seed)
        runs = _disc_gaps_from_pixels(base.image, base.vertebrae)
        gaps = np.array([v["gap_below"] for v in base.vertebrae[:-1]])
        ok = np.isfinite(runs)
        assert 0.7 <= np.median(runs[ok] / gaps[ok]) <= 1.3


def _wall_distance(img, start, direction, lo, hi):
    """Distance from start along direction, within [lo, hi], of the steepest bright-to-dark step."""
    p, dl = _profile(img, start, np.asarray(start) + np.asarray(direction) * hi)
    g = np.gradient(ndimage.uniform_filter1d(p, 5))
    i0 = int(lo / dl)
    return (i0 + int(np.argmin(g[i0:]))) * dl


def _anterior_offsets(s):
    """Per adjacent pair (upper a, lower b): how far a's anterior wall stands in front of b's,
    as a fraction of a's width, measured from the pixels along two rows perpendicular to b's
    axis (through b's centre and at a's level on b's axis, so a slip shows up)."""
    img = ndimage.gaussian_filter(s.image.astype(np.float64), 0.7)
    out = []
    for a, b in zip(s.vertebrae[:-1], s.vertebrae[1:]):
        if not (_inner(a, SIZE) and _inner(b, SIZE)):
            out.append(np.nan)
            continue
        ub, vb = np.array(b["u_axis"]), np.array(b["v_axis"])
        cb = _centre(b)
        ra = cb + vb * float((_centre(a) - cb) @ vb)  # a's level, on b's axis
        wa = _wall_distance(img, ra, -ub, 0.2 * a["width"], 1.0 * a["width"])
        wb = _wall_distance(img, cb, -ub, 0.2 * b["width"], 1.0 * b["width"])
        out.append((wa - wb) / a["width"])
    return np.array(out)


def test_spondylolisthesis_shift():
    for seed in SEEDS:
        s = render_phantom("Spondylolysthesis", SIZE, seed)
        base = render_phantom("No finding", SIZE, seed)
        j = int(s.sign["level"])
        f = s.sign["shift_fraction"]
        assert 0.15 <= f <= 0.30
        assert s.vertebrae[j]["shift"] == pytest.approx(f * s.vertebrae[j]["width"])
        # the slipped body's anterior wall steps forward against the body below it, by the
        # shift fraction, compared with the same spine without the slip; other steps unchanged
        step = _anterior_offsets(s) - _anterior_offsets(base)
        assert abs(step[j] - f) < 0.05, (seed, step, j, f)
        others = np.delete(step, j)
        assert np.all(np.abs(others[np.isfinite(others)]) < 0.05), (seed, step)
        b = s.boxes[0]
        c = _centre(s.vertebrae[j])
        assert b.xmin <= c[0] <= b.xmax and b.ymin <= c[1] <= b.ymax


def _body_heights(s):
    """Height of each body through its centre along its own axis, from the pixels: the
    steepest bright-to-dark steps (endplate -> disc) above and below the centre.
    NaN for bodies near the image border."""
    img = ndimage.gaussian_filter(s.image.astype(np.float64), 0.7)
    hs = []
    for v in s.vertebrae:
        if not _inner(v, SIZE):
            hs.append(np.nan)
            continue
        c, ev = _centre(v), np.array(v["v_axis"])
        nh = v["nominal_height"]
        hs.append(_wall_distance(img, c, -ev, 0.1 * nh, 0.62 * nh) + _wall_distance(img, c, ev, 0.1 * nh, 0.62 * nh))
    return np.array(hs)


def test_vertebral_collapse_height_and_wedge():
    for seed in SEEDS:
        s = render_phantom("Vertebral collapse", SIZE, seed)
        j = int(s.sign["level"])
        v = s.vertebrae[j]
        assert 0.4 <= s.sign["height_ratio"] <= 0.7
        assert s.sign["wedge"] < 1.0
        assert v["height_anterior"] < v["height_posterior"]
        assert v["height_anterior"] / v["height_posterior"] == pytest.approx(s.sign["wedge"])
        assert v["height"] / v["nominal_height"] == pytest.approx(s.sign["height_ratio"])
        hs = _body_heights(s)
        assert np.isfinite(hs[j])
        ratio = hs[j] / np.nanmedian(np.delete(hs, j))
        assert 0.3 <= ratio <= 0.8, (seed, hs, j)
        assert np.nanargmin(hs) == j
        # against the same spine without the fracture: the body lost 30-60 % of its height
        base_h = _body_heights(render_phantom("No finding", SIZE, seed))
        assert 0.35 <= hs[j] / base_h[j] <= 0.75
        b = s.boxes[0]
        c = _centre(v)
        assert b.xmin <= c[0] <= b.xmax and b.ymin <= c[1] <= b.ymax
        assert (b.ymax - b.ymin) * (b.xmax - b.xmin) < 2.0 * v["width"] * v["width"]


# --------------------------------------------------------------------------- learnability


def _down(img, f=8):
    n = img.shape[0] // f
    return img[: n * f, : n * f].reshape(n, f, n, f).mean(axis=(1, 3))


def test_implant_is_learnable_from_pixels():
    """Trivial classifiers trained on a few seeds separate implants from normal spines."""
    train, test = range(0, 12), range(100, 112)

    def feats(label, seeds):
        return [render_phantom(label, 128, s).image for s in seeds]

    tr = {lab: feats(lab, train) for lab in ("No finding", "Surgical implant")}
    te = {lab: feats(lab, test) for lab in ("No finding", "Surgical implant")}
    # 1) a one-number statistic: share of near-white pixels, threshold from the training set
    stat = lambda im: float(np.mean(im > 0.985))  # noqa: E731
    thr = (max(map(stat, tr["No finding"])) + min(map(stat, tr["Surgical implant"]))) / 2
    acc = np.mean([stat(im) < thr for im in te["No finding"]] + [stat(im) > thr for im in te["Surgical implant"]])
    assert acc >= 0.95
    # 2) nearest centroid on 16x16 downsampled, bright-tail images
    def vec(im):
        return _down(np.clip(im - 0.9, 0, None) * 10, 8).ravel()

    cents = {lab: np.mean([vec(im) for im in ims], axis=0) for lab, ims in tr.items()}
    correct = 0
    for lab, ims in te.items():
        for im in ims:
            pred = min(cents, key=lambda k: np.sum((vec(im) - cents[k]) ** 2))
            correct += pred == lab
    assert correct / 24 >= 0.8


# --------------------------------------------------------------------------- pinned output

# sha256 over every (label, size, seed) below of the float32 pixel bytes and the sample's label,
# boxes, signs and vertebrae, and of a small built dataset (its manifest's content_hash, which
# covers the PNG files' sha256). Pinned from the code as it was before render_phantom was split
# into a findings table (commit 884c679) so that refactoring cannot change a single bit.
# Computed with numpy 2.4 / Pillow 13 (zlib 1.2.13) on x86-64: another numpy build or CPU
# may round float32 exp/sin/cos differently in the last bit, and another zlib may compress
# the PNGs differently; if only that changed, recompute the constants on the old code.
PINNED_RECORDS = "a943fd2d1ee38082b37afcbdfac9ff5c8be7bf4c331316b32991251e4f66eb13"
PINNED_DATASET = "1966a8f978caf4ff360ef9c371f27bcdf504999623ff2465fe0dcb4189f8a631"
PINNED_SIZES = (32, 97, 256)
PINNED_SEEDS = (0, 5)


def _rounded(value, places: int = 5):
    """Floats to ``places`` decimals, through lists, tuples and dicts."""
    if isinstance(value, float):
        return round(value, places)
    if isinstance(value, (list, tuple)):
        return [_rounded(v, places) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v, places) for k, v in value.items()}
    return value


def test_pinned_renders():
    """render_phantom's output is the pinned one for every label, size and seed: each image's mean and
    standard deviation (to 1e-5, in tests/phantom_pinned_stats.json) and every record (label, boxes,
    sign, vertebrae; floats to 4 decimals) hashed together. Not a hash of the float32 pixels: numpy's
    vectorised float32 sin/exp differ in the last bits between CPUs (that hash, and one of the 8-bit
    pixels, differed between an Intel Xeon and an AMD EPYC, and on one machine with numpy's AVX2
    kernels switched off); these two measures were equal in all three cases."""
    stats = json.loads((Path(__file__).parent / "phantom_pinned_stats.json").read_text())
    h = hashlib.sha256()
    for label in CLASS_NAMES:
        for size in PINNED_SIZES:
            for seed in PINNED_SEEDS:
                s = render_phantom(label, size, seed)
                meta = {"label": s.label, "boxes": [vars(b) for b in s.boxes], "sign": s.sign,
                        "vertebrae": s.vertebrae}
                h.update(json.dumps(_rounded(meta, 4), sort_keys=True).encode())
                img = s.image.astype(np.float64)
                want = stats[f"{label}|{size}|{seed}"]
                assert img.mean() == pytest.approx(want[0], abs=1e-5) and img.std() == pytest.approx(want[1], abs=1e-5), \
                    (label, size, seed)
    assert h.hexdigest() == PINNED_RECORDS


def test_pinned_dataset_hash(tmp_path):
    """A small built phantom dataset (images, boxes, splits, studies) is the pinned one."""
    from core.data.datasets import build_phantom_dataset

    ds = build_phantom_dataset(tmp_path / "pinned", n=24, size=64, seed=3, workers=1)
    assert ds.content_hash == PINNED_DATASET
