#!/usr/bin/env python3
"""Cold start: server start to the first rendered Home page (class chart visible, script done) in
headless Chromium, with the default phantom already on disk. Home's class chart is plain HTML
(``core.charts.class_balance_html``, selector ``.medaug-balance``): plotly.js, 4.7 MB, cost about 3 s
of browser time here, so the first page leaves it to the pages that need an interactive figure.

Baseline, measured in the same run: a bare Streamlit script (one line of text) started and rendered
the same way. The two alternate, one bare start then one app start per repeat, so machine noise hits
both alike; each figure is the median of its runs. Target (issue 17): the app within 2x the bare
script. The first line names the machine (``core.device.machine_line``: this process imports torch
for it, the measured servers do not); the last line reads
``startup: seconds=<app median> baseline=<bare median> target=2x``.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from core.data.datasets import DEFAULT_PHANTOM, build_phantom_dataset  # noqa: E402
from tests.browser import HOME_READY, chromium_page, serve_app, wait_rendered  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    from core.device import machine_line   # imports torch: here only, never in the servers measured

    print(machine_line(), flush=True)

    def start_to_render(env, script, selector, page):
        t0 = time.perf_counter()
        with serve_app(env, script=script) as (url, _):
            page.goto(url)
            wait_rendered(page, selector)
            return time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        ds = build_phantom_dataset(Path(tmp) / "phantom-default", **DEFAULT_PHANTOM)
        env = {"MEDAUG_HOME": str(Path(tmp) / "ws"), "MEDAUG_DATASET": str(ds.root),
               "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"}
        bare = ROOT / f".bench_bare_{os.getpid()}.py"
        bare.write_text("import streamlit as st\nst.title('hello')\n")
        try:
            ours, base = [], []
            with chromium_page() as page:
                for _ in range(a.repeats):  # interleaved, so machine noise hits both alike
                    base.append(start_to_render(env, bare.name, "h1", page))
                    ours.append(start_to_render(env, "app.py", HOME_READY, page))
        finally:
            bare.unlink()

    med, med_base = statistics.median(ours), statistics.median(base)
    print(f"app.py Home (chart visible): runs {[round(t, 2) for t in ours]} s, median {med:.2f} s")
    print(f"baseline bare streamlit script: runs {[round(t, 2) for t in base]} s, median {med_base:.2f} s; "
          f"ratio {med / med_base:.2f}x")
    print(f"startup: seconds={med:.2f} baseline={med_base:.2f} target=2x")


if __name__ == "__main__":  # the pool's spawned workers re-import this file
    main()
