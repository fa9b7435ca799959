"""core.augment: contract tests over EVERY registry entry, exact values of the original study's
seven operations against Pillow, batches (NumPy, torch CPU, torch device kernels), pipelines,
and the augmented-dataset path with its MLflow run and CLI command."""
from __future__ import annotations

import io
import json
import math
import shutil
import subprocess
import sys
import zipfile
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.augment import OPS, PRESETS, STUDY_OPERATIONS, Pipeline, Step, get_op, value_max
from core.augment.apply import AugmentConfig, augment_dataset, augmented_zip, plan_jobs
from core.augment.torch_batch import run_torch
from core.data.datasets import load_dataset, verify_dataset
from core.data.io import to_uint8
from core.data.phantom import render_phantom

ROOT = Path(__file__).resolve().parent.parent
# Parameters under which an operation whose defaults are deterministic becomes random.
RANDOM_PARAMS = {"rotate": {"jitter": 10.0}, "shear": {"jitter": 5.0}, "zoom": {"jitter": 0.2}}
# Operations that have no random part whatever their parameters.
ALWAYS_DETERMINISTIC = {"hflip", "vflip", "crop", "clahe"}
ALL_OPS = sorted(OPS)
GEOMETRIC = sorted(n for n, op in OPS.items() if op.geometric)


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.fixture(scope="module")
def images() -> dict:
    """A non-square phantom crop in uint8 and as 12-bit data in uint16."""
    img8 = to_uint8(render_phantom("Surgical implant", 96, 5).image)[:, 8:88]   # 96 x 80
    img16 = img8.astype(np.uint16) * 16 + np.arange(80, dtype=np.uint16)[None, :] % 16
    assert img16.max() < 4096
    return {"uint8": img8, "uint16": img16}


def params_for(name: str) -> dict:
    return OPS[name].validate(RANDOM_PARAMS.get(name))


# --- contract tests, one per registry entry ----------------------------------------------

@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
@pytest.mark.parametrize("name", ALL_OPS)
def test_op_keeps_shape_dtype_and_value_range(name, dtype, images):
    img = images[dtype]
    op = OPS[name]
    out, _, applied = op.run(img, rng(0), params_for(name))
    assert out.dtype == img.dtype and out.ndim == 2
    assert out.shape == op.output_shape(applied, img.shape)
    if name != "crop":
        assert out.shape == img.shape
    assert int(out.max()) <= value_max(img), "left the image's bit depth (12-bit data must stay 12-bit)"
    assert out.shape != img.shape or not np.array_equal(out, img), "the operation did nothing"
    json.dumps(applied)  # the applied params are JSON, for captions and logs


@pytest.mark.parametrize("name", ALL_OPS)
def test_op_same_seed_same_output_different_seed_differs_if_random(name, images):
    op, img = OPS[name], images["uint8"]
    params = params_for(name)
    a1, _, p1 = op.run(img, rng(1), params)
    a2, _, p2 = op.run(img, rng(1), params)
    assert np.array_equal(a1, a2) and p1 == p2
    b, _, _ = op.run(img, rng(2), params)
    if name in ALWAYS_DETERMINISTIC:
        assert not op.is_random(params) and np.array_equal(a1, b)
    else:
        assert op.is_random(params), f"{name}: give RANDOM_PARAMS an entry that makes it random"
        assert not np.array_equal(a1, b), "a different seed gave the same output"


@pytest.mark.parametrize("name", ALL_OPS)
def test_op_json_round_trip_changes_nothing(name, images):
    pipeline = Pipeline((Step(name, RANDOM_PARAMS.get(name, {}), 0.75),), name=f"only {name}")
    text = pipeline.to_json()
    back = Pipeline.from_json(text)
    assert back == pipeline and back.hash == pipeline.hash and back.to_json() == text
    one = pipeline.apply(images["uint8"], rng(3))
    two = back.apply(images["uint8"], rng(3))
    assert np.array_equal(one.image, two.image) and one.applied == two.applied


def _bad_value(p):
    if p.kind == "bool":
        return "yes"
    if p.kind == "choice":
        return "bogus"
    if p.kind == "float_range":
        return [p.low, p.high + 1]
    return p.high + 1


@pytest.mark.parametrize("name,param", [(n, p.name) for n in ALL_OPS for p in OPS[n].params])
def test_bad_param_message_names_parameter_and_range(name, param):
    spec = OPS[name].param(param)
    data = {"steps": [{"op": "hflip"}, {"op": name, "params": {param: _bad_value(spec)}, "probability": 1}]}
    with pytest.raises(ValueError) as e:
        Pipeline.from_dict(data)
    msg = str(e.value)
    assert f"step 2 ({name})" in msg and f"{param}=" in msg and spec.range_text() in msg, msg


@pytest.mark.parametrize("name", ALL_OPS)
def test_unknown_param_is_named(name):
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) nonsense"):
        Pipeline.from_dict({"steps": [{"op": name, "params": {"nonsense": 1}}]})


@pytest.mark.parametrize("name", GEOMETRIC)
def test_geometric_op_moves_boxes_with_the_pixels(name):
    h, w = 96, 80
    img = np.zeros((h, w), np.uint8)
    x, y = 22, 30
    img[y:y + 4, x:x + 4] = 255                       # a marked 4x4 block inside the study box
    box = {"label": "mark", "xmin": x, "ymin": y, "xmax": x + 4, "ymax": y + 4}
    params = {**RANDOM_PARAMS.get(name, {}), **({"alpha": 0.03} if name == "elastic" else {})}
    for seed in range(4):
        out, boxes, applied = OPS[name].run(img, rng(seed), params, [box])
        marked = np.argwhere(out >= 128)
        assert len(marked) and len(boxes) == 1, (name, applied)
        b = boxes[0]
        cy, cx = marked[:, 0] + 0.5, marked[:, 1] + 0.5
        assert (cx >= b["xmin"] - 1).all() and (cx <= b["xmax"] + 1).all(), (name, applied, b)
        assert (cy >= b["ymin"] - 1).all() and (cy <= b["ymax"] + 1).all(), (name, applied, b)
        oh, ow = out.shape
        assert (b["xmax"] - b["xmin"]) * (b["ymax"] - b["ymin"]) < 0.1 * oh * ow, "box far larger than the mark"


@pytest.mark.parametrize("name,params,expected", [
    ("hflip", {}, lambda x, y, h, w: (w - 1 - x, y)),
    ("vflip", {}, lambda x, y, h, w: (x, h - 1 - y)),
    ("rotate", {"angle": 270.0}, lambda x, y, h, w: (h - 1 - y, x)),      # 270 CCW = 90 clockwise
    ("rotate", {"angle": 90.0}, lambda x, y, h, w: (y, w - 1 - x)),
    ("crop", {"left": 0.1, "top": 0.2, "right": 0.9, "bottom": 1.0}, lambda x, y, h, w: (x - 4, y - 8)),
])
def test_marked_pixel_lands_exactly_where_its_box_goes(name, params, expected):
    h, w = 40, 40
    img = np.zeros((h, w), np.uint8)
    x, y = 9, 14
    img[y, x] = 200
    out, boxes, _ = OPS[name].run(img, rng(0), params, [{"label": "m", "xmin": x, "ymin": y, "xmax": x + 1, "ymax": y + 1}])
    ex, ey = expected(x, y, h, w)
    assert out[ey, ex] == 200 and int((out > 0).sum()) == 1
    assert boxes == [{"label": "m", "xmin": ex, "ymin": ey, "xmax": ex + 1, "ymax": ey + 1}]


def test_boxes_are_clipped_and_dropped_outside():
    img = np.zeros((50, 50), np.uint8)
    boxes = [{"label": "a", "xmin": 0, "ymin": 0, "xmax": 30, "ymax": 10},
             {"label": "b", "xmin": 40, "ymin": 40, "xmax": 49, "ymax": 49}]
    _, moved, _ = OPS["crop"].run(img, rng(0), {"left": 0.2, "top": 0.0, "right": 0.6, "bottom": 0.6}, boxes)
    assert moved == [{"label": "a", "xmin": 0.0, "ymin": 0.0, "xmax": 20.0, "ymax": 10.0}]


# --- the original study's seven, against Pillow ------------------------------------------

def _study_box(size):
    w, h = size
    return tuple(round((v / 1000) * n) for v, n in zip((2, 5, 500, 1000), (w, h, w, h)))


PILLOW_REFERENCE = {
    "rotate 45": lambda im: im.rotate(45),
    "rotate 270": lambda im: im.rotate(270),
    "horizontal flip": lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    "vertical flip": lambda im: im.transpose(Image.Transpose.FLIP_TOP_BOTTOM),
    "crop (2, 5, 500, 1000)": lambda im: im.crop(_study_box(im.size)),
    "zoom (crop + resize)": lambda im: im.crop(_study_box(im.size)).resize(im.size),
    "shear 30 degrees": lambda im: im.transform(
        im.size, Image.Transform.AFFINE,
        (1, -math.tan(math.radians(30)), math.tan(math.radians(30)) * im.size[1] / 2, 0, 1, 0)),
}


@pytest.fixture(scope="module")
def study_images() -> dict:
    base = Image.fromarray(to_uint8(render_phantom("Osteophytes", 128, 2).image))
    square = np.asarray(base.resize((1000, 1000)))          # the study's scale: box (2, 5, 500, 1000) exactly
    odd = np.asarray(base.resize((131, 97)))               # non-square, odd sizes
    return {"1000x1000": square, "97x131": odd, "97x131-uint16": odd.astype(np.uint16) * 16 + 3}


@pytest.mark.parametrize("which", ["1000x1000", "97x131", "97x131-uint16"])
@pytest.mark.parametrize("label,op,params", STUDY_OPERATIONS, ids=[s[0] for s in STUDY_OPERATIONS])
def test_study_operation_equals_pillow(label, op, params, which, study_images):
    img = study_images[which]
    out, _, _ = OPS[op].run(img, rng(0), params)
    if img.dtype == np.uint16 and op in ("rotate", "shear"):
        # affine warps of 16-bit data run in Pillow's 32-bit mode, which samples the same pixels as
        # the 8-bit mode (Pillow's own 16-bit mode treats border pixels differently)
        ref = np.asarray(PILLOW_REFERENCE[label](Image.fromarray(img.astype(np.int32)))).astype(np.uint16)
        ref8 = np.asarray(PILLOW_REFERENCE[label](Image.fromarray((img >> 4).astype(np.uint8))))
        assert np.array_equal(ref >> 4, ref8)
    else:
        ref = np.asarray(PILLOW_REFERENCE[label](Image.fromarray(img)))
    if img.dtype == np.uint16:   # 12-bit data: bicubic overshoot is clipped to the bit depth
        ref = np.minimum(ref, value_max(img))
    assert out.dtype == img.dtype and out.shape == ref.shape
    assert np.array_equal(out, ref)


def test_study_crop_box_is_proportional_and_documented():
    assert OPS["crop"].run(np.zeros((1000, 1000), np.uint8), rng(0))[2]["box"] == [2, 5, 500, 1000]
    assert OPS["crop"].run(np.zeros((200, 100), np.uint8), rng(0))[2]["box"] == [0, 1, 50, 200]
    for name in ("crop", "zoom"):
        assert "(2, 5, 500, 1000)" in OPS[name].help and "1000" in OPS[name].help and "clipped" in OPS[name].help
    assert "DEGREES" in OPS["shear"].help and "radians" in OPS["shear"].help
    assert OPS["shear"].param("angle").unit == "degrees"


# --- batches -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    return np.stack([to_uint8(render_phantom("No finding", 64, s).image) for s in range(6)])


def _per_image(pipeline, batch, seed):
    children = rng(seed).spawn(len(batch))
    return np.stack([pipeline.apply(batch[i], children[i]).image for i in range(len(batch))])


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_numpy_and_torch_cpu_batches_equal_per_image(preset, batch):
    import torch

    pipeline = PRESETS[preset]()
    if pipeline.mode == "one_of":   # crop changes the size, so a batch runs the other six
        pipeline = Pipeline(tuple(s for s in pipeline.steps if s.op != "crop"), "one_of")
    ref = _per_image(pipeline, batch, 4)
    out, plans = pipeline.apply_batch(batch, rng(4))
    assert np.array_equal(out, ref) and len(plans) == len(batch)
    t, _ = pipeline.apply_batch(torch.from_numpy(batch), rng(4))
    assert isinstance(t, torch.Tensor) and np.array_equal(t.numpy(), ref)
    b16 = batch.astype(np.uint16) * 16
    out16, _ = pipeline.apply_batch(torch.from_numpy(b16), rng(4))
    assert out16.dtype == torch.uint16 and np.array_equal(out16.numpy(), _per_image(pipeline, b16, 4))


def test_batch_zoom_uses_the_threaded_port_of_pillows_filter(batch):
    zoom = Pipeline((Step("zoom", {"left": 0.1, "top": 0.05, "right": 0.6, "bottom": 0.9}),))
    out, _ = zoom.apply_batch(batch, rng(0))
    ref = _per_image(zoom, batch, 0)                       # Pillow, image by image
    diff = np.abs(out.astype(int) - ref.astype(int))
    assert diff.max() <= 2 and (diff == 0).mean() > 0.98
    b16 = batch.astype(np.uint16) * 16                     # 16-bit batches stay on Pillow: exact
    assert np.array_equal(zoom.apply_batch(b16, rng(0))[0], _per_image(zoom, b16, 0))


def test_deterministic_pipelines_plan_once(batch):
    study7 = [Pipeline((Step(op, params),)) for _, op, params in STUDY_OPERATIONS]
    assert all(p.deterministic for p in study7)
    assert not PRESETS["spine-safe"]().deterministic and not Pipeline((Step("hflip", {}, 0.5),)).deterministic
    out, plans = study7[0].apply_batch(batch, rng(0))
    assert all(p is plans[0] for p in plans) and np.array_equal(out, _per_image(study7[0], batch, 0))


def test_batch_crop_changes_size_only_when_it_runs_on_every_image(batch):
    always = Pipeline((Step("crop", {}, 1.0), Step("hflip", {}, 0.5)))
    out, _ = always.apply_batch(batch, rng(0))
    assert out.shape == (6, 64, 32)
    sometimes = Pipeline((Step("crop", {}, 0.5),))
    with pytest.raises(ValueError, match=r"step 1 \(crop\) changes the image size"):
        sometimes.apply_batch(batch, rng(0))


EXACT_ON_DEVICE = {"hflip", "vflip", "crop", "rotate", "shear", "gamma", "brightness_contrast", "gaussian_noise",
                   "random_erasing", "clahe"}


@pytest.mark.parametrize("name", ALL_OPS)
def test_torch_device_kernels_match_numpy(name, batch):
    """The GPU kernels, run on the CPU: exact where documented, else within a grey level or two."""
    import torch

    step = Step(name, {} if name in ("rotate", "shear") else RANDOM_PARAMS.get(name, {}))  # shared geometry
    pipeline = Pipeline((step,))
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device, data in [(d, x) for d in devices for x in (batch, batch.astype(np.uint16) * 16)]:
        ref, plans = pipeline.apply_batch(data, rng(5))
        if name == "zoom" and data.dtype == np.uint8:   # the CPU batch uses torch's uint8 port of Pillow
            ref = _per_image(pipeline, data, 5)
        dev = run_torch(pipeline, torch.from_numpy(data).to(device), plans, device_kernels=True).cpu().numpy()
        assert dev.dtype == data.dtype and dev.shape == ref.shape
        diff = np.abs(dev.astype(np.int64) - ref.astype(np.int64)) / (255 if data.dtype == np.uint8 else 16)
        if name in EXACT_ON_DEVICE:
            assert diff.max() <= 1, name
        else:
            assert diff.mean() < 1.0 and (diff <= 1).mean() > 0.97, (name, diff.mean())


@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="needs a CUDA GPU")
def test_cuda_batch_stays_on_device_and_matches_cpu(batch):
    import torch

    pipeline = PRESETS["spine-safe"]()
    ref, plans = pipeline.apply_batch(batch, rng(1))
    out, _ = pipeline.apply_batch(torch.from_numpy(batch).cuda(), rng(1))
    assert out.is_cuda and out.dtype == torch.uint8
    same_kernels = run_torch(pipeline, torch.from_numpy(batch), plans, device_kernels=True).numpy()
    diff = np.abs(out.cpu().numpy().astype(int) - same_kernels.astype(int))
    assert (diff <= 1).mean() > 0.999, "the torch kernels give other results on the GPU than on the CPU"
    vs_numpy = np.abs(out.cpu().numpy().astype(int) - ref.astype(int))
    assert vs_numpy.mean() < 2.0 and (vs_numpy <= 2).mean() > 0.95   # chained bilinear warps, edges differ most


# --- pipelines ---------------------------------------------------------------------------

def test_loading_bad_pipelines_raises_clear_errors():
    with pytest.raises(ValueError, match=r"step 1: unknown operation 'rotat'; known operations: rotate, hflip"):
        Pipeline.from_json('{"steps": [{"op": "rotat"}]}')
    with pytest.raises(ValueError) as e:
        Pipeline.from_json('{"steps": [{"op": "rotate", "params": {"angle": 400}}]}', "my.json")
    assert str(e.value) == ("my.json: step 1 (rotate): angle=400 is outside the range [-360, 360] degrees; "
                            "choose a value in that range.")
    with pytest.raises(ValueError, match=r"probability=1.5 is outside the range \[0, 1\]"):
        Pipeline.from_json('{"steps": [{"op": "hflip", "probability": 1.5}]}')
    with pytest.raises(ValueError, match="not valid JSON"):
        Pipeline.from_json("{steps")
    with pytest.raises(ValueError, match=r"right=0.1 must exceed left=0.5"):
        Step("crop", {"left": 0.5, "right": 0.1})
    with pytest.raises(ValueError, match=r"gamma=\[2.0, 1.0\]: the low end is above the high end"):
        Step("gamma", {"gamma": [2.0, 1.0]})


def test_python_snippet_rebuilds_the_pipeline():
    pipeline = PRESETS["spine-safe"]()
    code = pipeline.to_python() + "\nprint(pipeline.to_json(indent=None))\n"
    out = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert Pipeline.from_json(out.stdout.strip().splitlines()[-1]) == pipeline


def test_presets():
    safe = PRESETS["spine-safe"]()
    ops = [s.op for s in safe.steps]
    assert "vflip" not in ops and safe.mode == "chain"
    rot = safe.steps[ops.index("rotate")].params
    assert rot["angle"] == 0 and rot["jitter"] <= 15
    gamma = safe.steps[ops.index("gamma")].params["gamma"]
    assert 0.7 <= gamma[0] and gamma[1] <= 1.5
    assert safe.steps[ops.index("brightness_contrast")].params["brightness"] <= 0.1

    study = PRESETS["original-study"]()
    assert study.mode == "one_of" and [(s.op, s.params) for s in study.steps] == \
        [(op, get_op(op).validate(p)) for _, op, p in STUDY_OPERATIONS]
    img = np.zeros((40, 40), np.uint8)
    chosen = {study.apply(img, rng(k)).applied[0]["op"] for k in range(60)}
    assert all(len(study.apply(img, rng(k)).applied) == 1 for k in range(10))
    assert chosen == {"rotate", "hflip", "vflip", "crop", "zoom", "shear"}


def test_chain_probability_zero_and_one():
    img = np.arange(64, dtype=np.uint8).reshape(8, 8)
    never = Pipeline((Step("hflip", {}, 0.0),)).apply(img, rng(0))
    always = Pipeline((Step("hflip", {}, 1.0),)).apply(img, rng(0))
    assert np.array_equal(never.image, img) and never.applied == []
    assert np.array_equal(always.image, img[:, ::-1]) and always.applied[0]["op"] == "hflip"


def test_bad_images_are_refused():
    with pytest.raises(ValueError, match="uint8 or uint16"):
        PRESETS["spine-safe"]().apply(np.zeros((8, 8), np.float32), rng(0))


# --- augmenting a dataset ----------------------------------------------------------------

def test_augment_dataset_writes_a_valid_set_and_logs_a_run(small_phantom, tmp_path):
    from core import tracking

    ds = small_phantom
    counts = ds.class_counts("train")
    small = sorted((c for c in ds.classes if counts[c] > 0), key=counts.get)[:2]
    target = max(counts[c] for c in small) + 5
    config = AugmentConfig(PRESETS["spine-safe"](), tuple(small), target_per_class=target, seed=3)
    seen = []
    result = augment_dataset(ds, config, tmp_path / "aug", on_progress=lambda d, t, m: seen.append((d, t)))
    new = load_dataset(tmp_path / "aug")
    m = new.manifest
    aug = m[m["source"] == f"classic:{config.pipeline.hash}"]
    assert result.added == {c: target - counts[c] for c in small}
    assert new.class_counts("train") == {c: (target if c in small else counts[c]) for c in ds.classes}
    assert len(m) == len(ds.manifest) + len(aug) and set(aug["split"]) == {"train"}
    assert set(aug["study_id"]) <= set(ds.manifest.loc[ds.manifest["label"].isin(small), "study_id"])
    assert new.meta["parent"]["content_hash"] == ds.content_hash and new.meta["augment"]["source"].startswith("classic:")
    assert verify_dataset(new) == []
    for row in aug.itertuples():
        assert all(0 <= b["xmin"] < b["xmax"] <= row.width and 0 <= b["ymin"] < b["ymax"] <= row.height for b in row.boxes)
    assert seen[-1][0] == seen[-1][1]

    run = tracking.client().get_run(result.run_id)
    assert run.data.tags["medaug.kind"] == "augment" and run.data.tags["medaug.dataset_hash"] == ds.content_hash
    assert run.data.params["pipeline.hash"] == config.pipeline.hash and run.data.params["step1.op"] == "rotate"
    assert run.data.metrics["images_added"] == len(aug)
    files = {a.path for a in tracking.client().list_artifacts(result.run_id)}
    assert {"samples.png", "pipeline.json"} <= files

    with zipfile.ZipFile(io.BytesIO(augmented_zip(new))) as z:
        names = set(z.namelist())
    assert set(aug["path"]) | {"augmented.csv", "pipeline.json"} == names


def test_augment_copies_mode_skips_a_bad_file_and_refuses_unknown_classes(small_phantom, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(small_phantom.root, src)
    ds = load_dataset(src)
    label = "Surgical implant"
    train = ds.manifest[(ds.manifest["split"] == "train") & (ds.manifest["label"] == label)]
    (src / train.iloc[0]["path"]).unlink()
    (src / train.iloc[0]["path"]).write_bytes(b"not a png")
    config = AugmentConfig(Pipeline((Step("hflip"),)), (label,), copies=2, include_source=False)
    jobs, _ = plan_jobs(ds, config)
    assert len(jobs) == 2 * len(train)
    result = augment_dataset(ds, config, tmp_path / "out", track=False)
    assert list(result.skipped) == [train.iloc[0]["image_id"]] and "not a readable image" in result.skipped[train.iloc[0]["image_id"]]
    assert result.added == {label: 2 * (len(train) - 1)} and len(result.dataset.manifest) == 2 * (len(train) - 1)
    with pytest.raises(ValueError, match="'Fracture' not in"):
        plan_jobs(ds, AugmentConfig(Pipeline((Step("hflip"),)), ("Fracture",)))
    with pytest.raises(ValueError, match="already exists"):
        augment_dataset(ds, config, tmp_path / "out", track=False)


def test_augment_command_prints_a_log_and_a_json_summary(small_phantom, tmp_path):
    from core.cli import main

    pipe = tmp_path / "p.json"
    pipe.write_text(Pipeline((Step("rotate", {"angle": 0, "jitter": 10}), Step("gamma"))).to_json())
    buf = io.StringIO()
    with redirect_stdout(buf):
        code = main(["augment", "--data", str(small_phantom.root), "--pipeline", str(pipe), "--classes",
                     "Vertebral collapse", "--target-per-class", "30", "--out", str(tmp_path / "o")])
    lines = buf.getvalue().strip().splitlines()
    summary = json.loads(lines[-1])
    assert code == 0 and summary["ok"] and summary["train_counts"]["Vertebral collapse"] == 30
    assert summary["source"] == f"classic:{summary['pipeline_hash']}" and summary["run_id"]
    assert any("Vertebral collapse" in line for line in lines[:-1])

    pipe.write_text('{"steps": [{"op": "rotate", "params": {"angle": 999}}]}')
    with redirect_stdout(io.StringIO()) as out:
        code = main(["augment", "--data", str(small_phantom.root), "--pipeline", str(pipe), "--out", str(tmp_path / "x")])
    failure = json.loads(out.getvalue().strip().splitlines()[-1])
    assert code == 2 and "angle=999 is outside the range [-360, 360] degrees" in failure["error"]
