"""Pipelines: an ordered list of (operation, params, probability) steps from the registry.

A pipeline serialises to JSON (``medaug-pipeline/1``) and to a short Python snippet. Loading
JSON checks every step against :data:`core.augment.ops.OPS` and raises ValueError naming the
step, the parameter and its valid range.

Two modes:
- ``chain``: every step in order, each run with its probability (the usual pipeline);
- ``one_of``: exactly one step per image, drawn with the probabilities as weights. The
  original study made one augmented copy per operation, so its preset uses this mode.

Randomness: :meth:`Pipeline.plan` draws every applied parameter from the ``numpy`` Generator
passed in, before any pixel is touched; applying a plan is then deterministic. A batch gives
image ``i`` the generator ``rng.spawn(n)[i]``, so ``apply_batch`` equals ``apply`` image by image.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from core.augment.batch import run_numpy
from core.augment.ops import STUDY_OPERATIONS, check_image, get_op, transform_boxes
from core.augment.torch_batch import run_torch

FORMAT = "medaug-pipeline/1"
MODES = ("chain", "one_of")


@dataclass(frozen=True)
class Step:
    """One step: a registry operation, its full (validated, defaults filled) params, a probability."""

    op: str                                      # registry name, e.g. "rotate"
    params: dict = field(default_factory=dict)   # parameter values; missing ones take the registry defaults
    probability: float = 1.0                     # chance to run (chain) or weight (one_of), in [0, 1]

    def __post_init__(self):
        op = get_op(self.op)
        object.__setattr__(self, "params", op.validate(self.params))
        p = self.probability
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"{self.op}: probability={p!r} is outside the range [0, 1].")
        object.__setattr__(self, "probability", float(p))

    def to_dict(self) -> dict:
        params = {k: list(v) if isinstance(v, tuple) else v for k, v in self.params.items()}
        return {"op": self.op, "params": params, "probability": self.probability}


@dataclass
class Augmented:
    """One augmented image with its moved boxes and what was applied (step number from 1, op, params)."""

    image: np.ndarray
    boxes: list[dict]
    applied: list[dict]


@dataclass(frozen=True)
class Pipeline:
    """An ordered list of steps. Frozen; build a new one to change it."""

    steps: tuple[Step, ...] = ()   # run in this order
    mode: str = "chain"            # "chain" or "one_of" (see the module docstring)
    name: str = ""                 # free text, e.g. the preset name; not part of the hash

    def __post_init__(self):
        object.__setattr__(self, "steps", tuple(self.steps))
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r} must be one of {', '.join(MODES)}.")
        for i, s in enumerate(self.steps, start=1):
            if not isinstance(s, Step):
                raise ValueError(f"step {i}: expected a Step, got {type(s).__name__}.")

    # --- serialisation ---------------------------------------------------------------

    def to_dict(self) -> dict:
        return {"format": FORMAT, "name": self.name, "mode": self.mode, "steps": [s.to_dict() for s in self.steps]}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict, where: str = "pipeline") -> Pipeline:
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a JSON object with 'steps', got {type(data).__name__}.")
        if data.get("format", FORMAT) != FORMAT:
            raise ValueError(f"{where}: format {data.get('format')!r} is not {FORMAT!r}.")
        unknown = sorted(set(data) - {"format", "name", "mode", "steps"})
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; a pipeline has format, name, mode, steps.")
        raw_steps = data.get("steps")
        if not isinstance(raw_steps, list):
            raise ValueError(f"{where}: 'steps' must be a list of {{op, params, probability}} objects.")
        steps = []
        for i, raw in enumerate(raw_steps, start=1):
            if not isinstance(raw, dict) or "op" not in raw:
                raise ValueError(f"{where}: step {i} must be an object with 'op', 'params' and 'probability'.")
            extra = sorted(set(raw) - {"op", "params", "probability"})
            if extra:
                raise ValueError(f"{where}: step {i}: unknown key(s) {', '.join(extra)}.")
            at = f"{where}: step {i} ({raw['op']}): "
            op = get_op(raw["op"], f"{where}: step {i}: ")
            params = op.validate(raw.get("params") or {}, at)
            p = raw.get("probability", 1.0)
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"{at}probability={p!r} is outside the range [0, 1].")
            steps.append(Step(op.name, params, float(p)))
        mode = data.get("mode", "chain")
        if mode not in MODES:
            raise ValueError(f"{where}: mode={mode!r} must be one of {', '.join(MODES)}.")
        return cls(tuple(steps), mode, str(data.get("name", "")))

    @classmethod
    def from_json(cls, text: str, where: str = "pipeline") -> Pipeline:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e}); export a pipeline from the Augment page.") from e
        return cls.from_dict(data, where)

    @property
    def hash(self) -> str:
        """12 hex digits identifying what the pipeline does (mode and steps, not its name)."""
        canon = json.dumps({"mode": self.mode, "steps": [s.to_dict() for s in self.steps]}, sort_keys=True)
        return hashlib.sha256(canon.encode()).hexdigest()[:12]

    def to_python(self) -> str:
        """A short, runnable Python snippet that rebuilds this pipeline."""
        lines = ["import numpy as np", "", "from core.augment import Pipeline, Step", "",
                 f"pipeline = Pipeline(mode={self.mode!r}, name={self.name!r}, steps=("]
        for s in self.steps:
            lines.append(f"    Step({s.op!r}, {s.params!r}, probability={s.probability!r}),")
        lines += ["))",
                  "# image: a 2-D uint8 or uint16 array; boxes: [{'label', 'xmin', 'ymin', 'xmax', 'ymax'}]",
                  "# out = pipeline.apply(image, np.random.default_rng(0), boxes)",
                  "# out.image, out.boxes, out.applied", ""]
        return "\n".join(lines)

    def mlflow_params(self) -> dict[str, str]:
        """Flat params for tracking: the hash, the mode and every step's op, probability and values."""
        out = {"pipeline.hash": self.hash, "pipeline.mode": self.mode, "pipeline.name": self.name,
               "pipeline.steps": str(len(self.steps))}
        for i, s in enumerate(self.steps, start=1):
            out[f"step{i}.op"] = s.op
            out[f"step{i}.probability"] = str(s.probability)
            for k, v in s.to_dict()["params"].items():
                out[f"step{i}.{k}"] = json.dumps(v) if isinstance(v, list) else str(v)
        return out

    # --- sampling and applying ---------------------------------------------------------

    @property
    def deterministic(self) -> bool:
        """True when every image gets the same steps with the same values (chain mode, all
        probabilities 1, no random operation), whatever the generator."""
        return self.mode == "chain" and all(
            s.probability >= 1.0 and not get_op(s.op).is_random(s.params) for s in self.steps)

    def plan(self, rng: np.random.Generator, shape: tuple[int, int]) -> dict[int, dict]:
        """Draw, for one image of ``shape``, which steps run and their applied params:
        ``{step index (0-based): applied}``. Uses only ``rng`` and the shape."""
        chosen: dict[int, dict] = {}
        if self.mode == "one_of":
            weights = np.array([s.probability for s in self.steps], dtype=float)
            if weights.sum() <= 0:
                return chosen
            i = int(rng.choice(len(self.steps), p=weights / weights.sum()))
            chosen[i] = get_op(self.steps[i].op).sample(rng, self.steps[i].params, shape)
            return chosen
        for i, step in enumerate(self.steps):
            if rng.random() < step.probability:
                op = get_op(step.op)
                applied = op.sample(rng, step.params, shape)
                chosen[i] = applied
                shape = op.output_shape(applied, shape)
        return chosen

    def apply_plan(self, image: np.ndarray, plan: dict[int, dict], boxes: list[dict] | None = None) -> Augmented:
        boxes = list(boxes or [])
        applied = []
        for i in sorted(plan):
            op = get_op(self.steps[i].op)
            if op.geometric and boxes:
                boxes = transform_boxes(boxes, op.geometry(plan[i], image.shape))
            image = op.apply(image, plan[i])
            applied.append({"step": i + 1, "op": op.name, "params": plan[i]})
        return Augmented(image, boxes, applied)

    def apply(self, image: np.ndarray, rng: np.random.Generator, boxes: list[dict] | None = None) -> Augmented:
        """Augment one 2-D uint8/uint16 image (and its boxes, in its pixel coordinates)."""
        check_image(image)
        return self.apply_plan(image, self.plan(rng, image.shape), boxes)

    def apply_batch(self, batch, rng: np.random.Generator, workers: int | None = None):
        """Augment an (N, H, W) uint8/uint16 batch: a NumPy array or a torch tensor on the CPU or
        a GPU (returned on the same device). Returns ``(batch, plans)``; on the CPU image ``i``
        equals ``apply(batch[i], rng.spawn(N)[i])``, except that a uint8 zoom shared by the batch
        uses torch's multi-threaded port of Pillow's filter (at most 2 grey levels apart). A step
        that changes the image size (crop) must run on every image of the batch."""
        n = int(batch.shape[0])
        if len(batch.shape) != 3 or n == 0:
            raise ValueError(f"batch: expected shape (N, H, W) with N >= 1, got {tuple(batch.shape)}.")
        shape = (int(batch.shape[1]), int(batch.shape[2]))
        if self.deterministic:  # every image gets the same plan: draw it once
            plans = [self.plan(rng, shape)] * n
        else:
            plans = [self.plan(child, shape) for child in rng.spawn(n)]
        if isinstance(batch, np.ndarray):
            check_image(batch[0], "batch")
            return run_numpy(self.steps, batch, plans, workers), plans
        return run_torch(self, batch, plans, workers), plans


def study_pipeline() -> Pipeline:
    """The original study's seven operations, one per augmented image (``one_of``)."""
    return Pipeline(tuple(Step(op, params, 1.0) for _, op, params in STUDY_OPERATIONS), "one_of", "original-study")


def spine_safe_pipeline() -> Pipeline:
    """Small rotations and shifts, horizontal flips, bounded intensity changes; no vertical flip."""
    return Pipeline((
        Step("rotate", {"angle": 0.0, "jitter": 10.0, "interpolation": "bilinear"}, 0.7),
        Step("translate_scale", {"translate": 0.05, "scale": (0.9, 1.1)}, 0.5),
        Step("hflip", {}, 0.5),
        Step("gamma", {"gamma": (0.8, 1.25)}, 0.5),
        Step("brightness_contrast", {"brightness": 0.05, "contrast": 0.1}, 0.5),
        Step("gaussian_noise", {"sigma": (0.0, 0.02)}, 0.3),
    ), "chain", "spine-safe")


PRESETS = {"spine-safe": spine_safe_pipeline, "original-study": study_pipeline}


def load_pipeline(spec: str) -> Pipeline:
    """A preset name (``spine-safe``, ``original-study``) or a path to a pipeline JSON file."""
    if spec in PRESETS:
        return PRESETS[spec]()
    from pathlib import Path

    path = Path(spec).expanduser()
    if not path.is_file():
        raise ValueError(f"{spec}: no such pipeline file and not a preset ({', '.join(PRESETS)}); "
                         f"export one from the Augment page.")
    return Pipeline.from_json(path.read_text(), str(path))

