"""The balancing planner: how many synthetic images each class needs to reach a target.

Counts come from the training split only (synthetic images never enter val or test).
"""
from __future__ import annotations

import pandas as pd

PLAN_COLUMNS = ("class", "real", "synthetic", "after", "synthetic_per_real")


def resolve_target(counts: dict[str, int], target: int | str) -> int:
    """``"max"`` (the largest class), ``"median"``, or a whole number of images per class."""
    present = sorted(c for c in counts.values() if c > 0)
    if not present:
        raise ValueError("the training split has no images, so there is nothing to balance.")
    if target == "max":
        return present[-1]
    if target == "median":
        return present[len(present) // 2]
    try:
        value = int(target)
    except (TypeError, ValueError):
        raise ValueError(f"target={target!r}: use 'max', 'median' or a whole number of images per class.") from None
    if not 1 <= value <= 1_000_000:
        raise ValueError(f"target={value}: choose between 1 and 1000000 images per class.")
    return value


def class_balance_plan(counts: dict[str, int], target: int | str = "max", classes: list[str] | None = None,
                       max_synthetic_per_real: float | None = None) -> pd.DataFrame:
    """One row per class: real images, synthetic images to add, the count after, and the
    synthetic-to-real ratio. Only ``classes`` (default: all) are topped up; a class already at
    or above the target gets none. ``max_synthetic_per_real`` caps the synthetic count of
    tiny classes (a GAN trained on 5 images should not supply 500)."""
    goal = resolve_target(counts, target)
    unknown = sorted(set(classes or []) - set(counts))
    if unknown:
        raise ValueError(f"classes {unknown} are not in the dataset; choose from {sorted(counts)}.")
    if max_synthetic_per_real is not None and max_synthetic_per_real < 0:
        raise ValueError(f"max_synthetic_per_real={max_synthetic_per_real}: must be 0 or more.")
    rows = []
    for name, real in counts.items():
        need = max(0, goal - real) if classes is None or name in classes else 0
        if max_synthetic_per_real is not None:
            need = min(need, int(real * max_synthetic_per_real))
        rows.append({"class": name, "real": real, "synthetic": need, "after": real + need,
                     "synthetic_per_real": round(need / real, 2) if real else float("nan")})
    plan = pd.DataFrame(rows, columns=list(PLAN_COLUMNS))
    plan.attrs["target"] = goal
    return plan


def parse_checkpoints(items: list[str]) -> dict[str, str]:
    """``["Vertebral collapse=/runs/vc/checkpoint.pt", "*=/runs/cond/checkpoint.pt"]`` -> mapping.
    ``*`` names a class-conditional checkpoint used for every class without its own."""
    out = {}
    for item in items or []:
        name, sep, path = item.rpartition("=")
        if not sep or not name or not path:
            raise ValueError(f"--checkpoint {item!r}: write CLASS=PATH (or *=PATH for a conditional model).")
        out[name] = path
    return out


def generate_plan(plan: pd.DataFrame, checkpoints: dict[str, str], out, seed: int = 0, device: str = "cpu",
                  on_progress=None):
    """Generate every class's synthetic images of ``plan`` into one synthetic set at ``out``."""
    from core.device import resolve_device
    from core.generators import checkpoint_family
    from core.synthetic import write_synthetic_set

    todo = plan[plan["synthetic"] > 0]
    missing = [c for c in todo["class"] if c not in checkpoints and "*" not in checkpoints]
    if missing:
        raise ValueError(f"no generator checkpoint for {missing}; train one per class or give a conditional "
                         f"model as --checkpoint '*=PATH'.")
    if len(todo):   # every checkpoint readable and the device here, before the first image is written
        resolve_device(device)
        for path in sorted({checkpoints[c] if c in checkpoints else checkpoints["*"] for c in todo["class"]}):
            checkpoint_family(path)   # a GAN or a diffusion checkpoint (a clear error otherwise)
    ds = None
    for i, row in enumerate(todo.itertuples()):
        own = row[1] in checkpoints
        ds = write_synthetic_set(checkpoints[row[1]] if own else checkpoints["*"], int(row.synthetic), out,
                                 class_name=None if own else row[1], seed=seed + i, append=i > 0,
                                 device=device, on_progress=on_progress)
    return ds


BALANCE_FIELDS = ("data", "target", "classes", "cap", "checkpoints", "out", "seed", "device")


def validate(fields: dict):
    """(fields with defaults, dataset, plan, checkpoints) of a balance job once its values, the
    dataset, the classes and the plan are checked. ``checkpoints`` is a mapping class -> path (or
    ``CLASS=PATH`` words). The command runs it first; :func:`core.jobs.submit` before queueing."""
    from core.data.datasets import load_dataset
    from core.device import resolve_device

    unknown = sorted(set(fields) - set(BALANCE_FIELDS))
    if unknown:
        raise ValueError(f"unknown balance field(s) {unknown}; known: {', '.join(BALANCE_FIELDS)}.")
    fields = {"target": "max", "seed": 0, "device": "cpu", **{k: v for k, v in fields.items() if v is not None}}
    if not fields.get("data"):
        raise ValueError("balance needs --data (or \"data\" in --config).")
    checkpoints = fields.get("checkpoints") or {}
    if not isinstance(checkpoints, dict):
        checkpoints = parse_checkpoints(list(checkpoints))
    if checkpoints and not fields.get("out"):
        raise ValueError("--out is needed to generate the plan's images (or drop --checkpoint to plan only).")
    resolve_device(fields["device"])
    ds = load_dataset(fields["data"])
    plan = class_balance_plan(ds.class_counts("train"), fields["target"], fields.get("classes") or None,
                              fields.get("cap"))
    return fields, ds, plan, checkpoints


def _cmd_balance(args) -> dict:
    from core.cli import job_fields, log, progress_printer

    fields, ds, plan, checkpoints = validate(job_fields(args, "balance", required=(),
                                                        rename={"checkpoint": "checkpoints"}))
    log(f"Balancing plan for the train split of {ds.id} (target {plan.attrs['target']} per class):")
    log(plan.to_string(index=False))
    summary = {"target": plan.attrs["target"], "plan": plan.to_dict("records"),
               "synthetic_total": int(plan["synthetic"].sum())}
    if checkpoints:
        out = generate_plan(plan, checkpoints, fields["out"], fields["seed"], fields["device"], progress_printer(0.25))
        if out is None:
            log("Nothing to generate: every class is at or above the target.")
        else:
            log(f"Wrote {len(out.manifest)} synthetic images to {out.root}")
            summary.update(out=str(out.root), generated=out.class_counts())
    return summary


def register(sub) -> None:
    s = sub.add_parser("balance", help="plan (and generate) synthetic images to balance the training classes")
    s.add_argument("--data", help="dataset folder (its train split is counted)")
    s.add_argument("--config", help="JSON file with any of these fields (flags given here win); checkpoints as "
                                    "an object class -> path")
    s.add_argument("--target", default=None, help="'max' (largest class, default), 'median', or images per class")
    s.add_argument("--classes", nargs="*", help="only top up these classes (default: all)")
    s.add_argument("--cap", type=float, default=None, help="at most this many synthetic images per real one")
    s.add_argument("--checkpoint", action="append", metavar="CLASS=PATH",
                   help="GAN checkpoint per class (repeat), or '*=PATH' for a conditional model; "
                        "without it the command only plans")
    s.add_argument("--out", help="synthetic set folder to write")
    s.add_argument("--seed", type=int, default=None, help="noise seed of the first class (default 0)")
    s.add_argument("--device", default=None, help="cpu (default), cuda or auto")
    s.set_defaults(func=_cmd_balance)
