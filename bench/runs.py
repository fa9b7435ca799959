#!/usr/bin/env python3
"""Runs page at scale: a temporary MLflow store filled with 500 runs through core.tracking
(about 25 of them studies with children), then the time to list them.

Measured, medians over repeats, in one process:
- core: ``core.runs.list_runs`` + filter + group + the displayed table (what the page does);
- page: a whole AppTest run of the Runs page (Streamlit's caches cleared before each repeat, so
  every repeat reads the store again), which is the figure and the target (< 2 s);
- baseline: a plain ``mlflow.search_runs`` of the same runs (a pandas frame, nothing grouped).

Printed apart: a fresh process that imports mlflow and lists (what the first visit of the
page in a newly started server costs).
Last line: ``runs: seconds=<page median> target=2``.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def fill(n: int, experiment: str, ds) -> float:
    from core import tracking

    t0 = time.perf_counter()
    parent = None
    for i in range(n):
        kind = ("train-gan", "classifier", "augment", "quality")[i % 4]
        if i % 20 == 0:
            kind, parent = "study", None
        cfg = {"variant": ("dcgan", "wgan", "wgan-gp")[i % 3], "lr": 10 ** -(3 + i % 3), "batch": 16 * (1 + i % 4),
               "seed": i, "epochs": 5, "resolution": 64, "net": ("resnet18", "vgg16", "small_cnn")[i % 3]}
        with tracking.start_run(kind, cfg, run_name=f"{kind}-{i:03d}", dataset=ds, experiment=experiment,
                                parent_run_id=parent if kind != "study" and i % 20 < 5 else None,
                                tags={"team": ("spine", "gan")[i % 2]}) as run:
            for step in range(1, 6):
                run.log_metrics({"loss": 1.0 / step + i * 1e-3, "val_accuracy": 0.5 + 0.05 * step}, step)
            if kind == "study":
                parent = run.run_id
        if (i + 1) % 100 == 0:
            print(f"  filled {i + 1}/{n} runs ({time.perf_counter() - t0:.0f} s)", flush=True)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=500)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    from core.device import machine_line

    print(machine_line(), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MEDAUG_HOME"] = str(Path(tmp) / "ws")
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
        from core.data.datasets import build_phantom_dataset

        ds = build_phantom_dataset(Path(tmp) / "phantom", n=40, size=64, seed=0, workers=1)
        os.environ["MEDAUG_DATASET"] = str(ds.root)
        exp = "bench-runs"
        print(f"filling a temporary store with {a.runs} runs through core.tracking…", flush=True)
        fill_s = fill(a.runs, exp, ds)
        print(f"filled in {fill_s:.1f} s ({fill_s / a.runs * 1000:.0f} ms per run)")

        import mlflow
        import streamlit as st
        from streamlit.testing.v1 import AppTest

        from core import runs as R

        def core_listing():
            table = R.list_runs([exp])
            shown = R.filter_runs(table, R.RunFilter())
            return R.display_table(R.group_runs(shown))

        def baseline():
            return mlflow.search_runs(experiment_names=[exp], max_results=a.runs + 100)

        t0 = time.perf_counter()
        first = core_listing()
        print(f"first listing in this process (opens the store): {time.perf_counter() - t0:.3f} s")
        assert len(first) == a.runs, len(first)
        assert len(baseline()) == a.runs

        cold_code = ("import time; t0 = time.perf_counter(); from core import runs as R; "
                     f"n = len(R.list_runs([{exp!r}])); print(n, time.perf_counter() - t0)")
        cold = []
        for _ in range(3):
            out = subprocess.run([sys.executable, "-c", cold_code], cwd=ROOT, capture_output=True, text=True,
                                 check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            n, secs = out.stdout.split()[-2:]
            assert int(n) == a.runs
            cold.append(float(secs))
        print(f"fresh process (imports mlflow, then lists): median {statistics.median(cold):.3f} s  "
              f"{[round(x, 3) for x in cold]}  (the first Runs page visit of a new server pays this)")

        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()

        def page_run():
            st.cache_data.clear()
            at.switch_page("pages/runs.py").run()
            assert not at.exception, at.exception
            frames = [d for d in at.dataframe if (d.key or "").startswith("runs_table_")]
            assert frames and len(frames[0].value) == a.runs, "the page did not list every run"

        page_run()  # warm-up: imports the page's modules once
        core_t, base_t, page_t = [], [], []
        for _ in range(a.repeats):  # interleaved, so machine noise hits all three alike
            t0 = time.perf_counter()
            baseline()
            base_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            core_listing()
            core_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            page_run()
            page_t.append(time.perf_counter() - t0)

    med_core, med_base, med_page = (statistics.median(x) for x in (core_t, base_t, page_t))
    print(f"runs in the store: {a.runs}; repeats: {a.repeats}")
    print(f"baseline mlflow.search_runs: median {med_base:.3f} s  {[round(x, 3) for x in base_t]}")
    print(f"core listing (list+filter+group): median {med_core:.3f} s  {[round(x, 3) for x in core_t]}  "
          f"({med_core / med_base:.2f}x the baseline)")
    print(f"Runs page (AppTest run, caches cleared): median {med_page:.3f} s  {[round(x, 3) for x in page_t]}")
    print(f"runs: seconds={med_page:.3f} target=2")


if __name__ == "__main__":
    main()
