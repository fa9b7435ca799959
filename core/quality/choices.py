"""What the Quality page offers and shows, as plain data: the quality reports that can be opened
(finished quality jobs and quality runs in the tracking store, :func:`report_choices`), one of them
read back (:func:`load_choice`), and the warnings of a report's sets (:func:`set_warnings`).

Only pandas and json, like :mod:`core.quality.report`: the page reads reports without torch.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import pandas as pd

from core.quality import report as qr


@dataclass(frozen=True)
class ReportChoice:
    """One quality report to open: a finished quality job (``job_id``, its folder in ``out``) or a
    quality run in the tracking store (``run_id``; its folder ``out`` is read while it exists, else
    the run's artifacts)."""
    label: str
    job_id: str = ""
    run_id: str = ""
    out: str = ""

    @property
    def kind(self) -> str:
        return "job" if self.job_id else "run"


def report_choices(max_runs: int = 50) -> list[ReportChoice]:
    """The reports that can be opened, newest first: finished quality jobs with a report.json, then
    the FINISHED quality runs of the tracking store that are not one of those jobs."""
    from core import jobs

    out: list[ReportChoice] = []
    seen = set()
    for j in jobs.list_jobs():
        if j.command == "quality" and j.state == "finished" and (j.dir / "report.json").is_file():
            run_id = j.summary().get("run_id") or ""
            seen.add(run_id)
            out.append(ReportChoice(f"{j.label} — job {j.id}", job_id=j.id, run_id=run_id, out=str(j.dir)))
    for r in qr.past_reports(max_results=max_runs):
        if r["run_id"] not in seen and r["status"] == "FINISHED":
            out.append(ReportChoice(f"{r['label']} — MLflow run", run_id=r["run_id"], out=r["out"]))
    return out


def choice_of_job(choices: list[ReportChoice], job_id: str) -> ReportChoice | None:
    """The report of quality job ``job_id`` among ``choices`` (None until that job has finished)."""
    return next((c for c in choices if c.job_id == job_id), None)


def load_choice(choice: ReportChoice) -> qr.Report:
    """The report a choice names: the job's folder, or the run's folder (else its MLflow artifacts).
    Raises ValueError (or OSError) when it cannot be read."""
    if choice.job_id:
        return qr.load_report(choice.out)
    return qr.fetch_report(choice.run_id, choice.out)


# --- the warnings of a report's sets ------------------------------------------------------------

@dataclass(frozen=True)
class SmallSets:
    """Sets with too few images for a stable FID (fewer than about 2,000, or not more than the
    feature dimensions): their FID is biased upwards, so only sets of one size compare."""
    sets: tuple[str, ...]
    n_min: int             # synthetic images in the smallest of them
    n_max: int             # ... and in the largest
    feature_dim: int       # the feature dimensions (the largest among them)


@dataclass(frozen=True)
class SetWarnings:
    small: SmallSets | None          # None: every set is large enough for FID
    notes: tuple[str, ...]           # the other warnings (collapse, intervals, ...), one text per set, sorted


_LEGACY_SPLIT = re.compile(r"\s+(?=(?:FID|collapse|intervals): )")


def _legacy_notes(text: str) -> str:
    """A report written before ``other_warnings`` existed: its joined warning text without the FID parts."""
    return " ".join(p for p in _LEGACY_SPLIT.split(text.strip()) if p and not p.startswith("FID:"))


def set_warnings(sets: pd.DataFrame) -> SetWarnings:
    """What a report's set table warns about, from its ``fid_unstable`` and ``other_warnings``
    columns (core.quality.evaluate); reports written before those columns are read from the
    ``warnings`` text."""
    if sets.empty or not {"warnings", "fid_unstable"} & set(sets.columns):
        return SetWarnings(None, ())
    text = sets["warnings"].fillna("").astype(str) if "warnings" in sets else pd.Series("", index=sets.index)
    if "fid_unstable" in sets:
        unstable = sets["fid_unstable"].map(lambda v: str(v).strip().lower() in ("true", "1", "1.0"))
    else:
        unstable = text.str.contains("FID:", regex=False)
    if "other_warnings" in sets:
        others = sets["other_warnings"].fillna("").astype(str).str.strip()
    else:
        others = text.map(_legacy_notes)
    small = None
    if unstable.any():
        rows = sets[unstable.to_numpy()]
        n = rows["n_synthetic"]
        small = SmallSets(tuple(str(s) for s in rows.get("set", pd.Series(dtype=str))), int(n.min()), int(n.max()),
                          int(rows["feature_dim"].max()))
    return SetWarnings(small, tuple(sorted(set(others) - {""})))
