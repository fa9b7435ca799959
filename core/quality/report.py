"""A quality report folder read back (the job's output folder, or a quality run's MLflow artifacts).

Only pandas and json: pages read reports without importing torch.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

REPORT_FILES = ("report.json", "sets.csv", "per_image.csv", "memorization.csv", "epochs.csv", "pairs.csv")
PAIRS_DIR = "pairs"


@dataclass
class Report:
    """A report folder read back (the job's output, or a quality run's MLflow artifacts)."""
    folder: Path
    summary: dict
    sets: pd.DataFrame
    per_image: pd.DataFrame
    memorization: pd.DataFrame
    epochs: pd.DataFrame
    pairs: pd.DataFrame


def load_report(folder: str | Path) -> Report:
    folder = Path(folder)
    if not (folder / "report.json").is_file():
        raise ValueError(f"{folder}: no report.json; run `python -m core quality ... --out {folder}` first.")

    def table(name: str) -> pd.DataFrame:
        try:
            return pd.read_csv(folder / name)
        except (FileNotFoundError, pd.errors.EmptyDataError):
            return pd.DataFrame()

    return Report(folder, json.loads((folder / "report.json").read_text()), table("sets.csv"), table("per_image.csv"),
                  table("memorization.csv"), table("epochs.csv"), table("pairs.csv"))


# --- what can be scored: GAN runs and synthetic sets in the tracking store and the workspace ----------

def gan_runs(max_results: int = 100) -> list[dict]:
    """Finished train-gan and train-diffusion runs whose output folder still holds a checkpoint, newest first,
    as {"label", "run_id", "out", "grids"}: the MLflow runs the GAN and Diffusion pages list, joined to
    their folders."""
    from core import tracking

    out = []
    found = [r for kind in ("train-gan", "train-diffusion") for r in tracking.search_runs(kind, max_results=max_results)]
    found.sort(key=lambda r: r.info.start_time or 0, reverse=True)
    for r in found[:max_results]:
        folder = Path(r.data.tags.get("medaug.out") or r.data.params.get("out") or "")
        if r.info.status != "FINISHED" or not (folder / "checkpoint.pt").is_file():
            continue
        grids = len(list((folder / "grids").glob("epoch_*.png")))
        out.append({"label": f"{r.info.run_name} · {r.info.run_id[:8]}", "run_id": r.info.run_id, "out": str(folder),
                    "grids": grids})
    return out


def synthetic_sets() -> list[dict]:
    """Synthetic dataset folders in the workspace (datasets/ and the balance jobs' outputs) as
    {"label", "path", "images"}."""
    from core.workspace import workspace_dir

    found = []
    for meta in [*workspace_dir("datasets").glob("*/dataset.json"), *workspace_dir("jobs").glob("*/synthetic/dataset.json")]:
        try:
            info = json.loads(meta.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if info.get("kind") != "synthetic":
            continue
        gens = info.get("generator") or [{}]
        who = gens[-1].get("class") or "all classes"
        found.append({"label": f"{meta.parent.name} · {gens[-1].get('variant', '?')} {who} · {info.get('images', '?')} images",
                      "path": str(meta.parent), "images": info.get("images")})
    return found


def past_reports(max_results: int = 50) -> list[dict]:
    """Quality runs in the tracking store, newest first: {"label", "run_id", "out", "status"}."""
    from core import tracking

    return [{"label": f"{r.info.run_name} · {r.data.tags.get('medaug.quality.sets', '')[:80]} · {r.info.run_id[:8]}",
             "run_id": r.info.run_id, "out": r.data.tags.get("medaug.out", ""), "status": r.info.status}
            for r in tracking.search_runs("quality", max_results=max_results)]


def fetch_report(run_id: str, out: str | None = None) -> Report:
    """A quality run's report: its folder if it still exists, else its MLflow artifacts."""
    if out and (Path(out) / "report.json").is_file():
        return load_report(out)
    from core import tracking

    return load_report(tracking.download_artifact(run_id, "quality"))
