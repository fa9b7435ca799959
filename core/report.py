"""Self-contained HTML reports of runs: one file that opens offline in any browser.

A report covers one run, a study (a parent run and its children) or any set of runs:
- the runs (kind, status, dates, dataset id and content hash, code version),
- final and best metric values, and every metric's curves overlaid as interactive plotly
  charts (plotly.js is embedded once, inline, so nothing is fetched from the network),
- the params side by side with the differing ones highlighted, and each run's full config
  and tags,
- sample images: per-epoch grids (a few epochs per run) and other image artifacts, as
  base64 PNG/JPEG.

``python -m core report --run RUN_ID [--run RUN_ID ...] --out FILE.html``.
"""
from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

from core.files import write_text_atomic

MAX_CHARTS = 24                      # metric charts per report (the rest are listed by name)
MAX_IMAGE_BYTES = 4 * 1024 * 1024    # larger image artifacts are named, not embedded
_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
         ".gif": "image/gif"}

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1f2328;background:#fff}
main{max-width:1280px;margin:0 auto;padding:24px 32px 64px}
h1{margin:0 0 4px;font-size:28px} h2{margin-top:40px;border-bottom:1px solid #d0d7de;padding-bottom:6px}
h3{margin:22px 0 8px;font-size:17px}
.meta{color:#59636e;font-size:14px} code{background:#f6f8fa;padding:1px 5px;border-radius:4px;font-size:90%}
table{border-collapse:collapse;font-size:13px;margin:8px 0;max-width:100%}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}
td.id{font-family:ui-monospace,monospace;font-size:11px;word-break:break-all;min-width:110px}
th{background:#f6f8fa} td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.diff td{background:#fff4d6} tr.diff th{background:#ffe7a3}
.note{color:#59636e;font-size:13px}
.grid{display:flex;flex-wrap:wrap;gap:16px} figure{margin:0;text-align:center}
figure img{width:260px;image-rendering:pixelated;border:1px solid #d0d7de}
figcaption{font-size:12px;color:#59636e;margin-top:4px}
.chart{border:1px solid #eaeef2;border-radius:6px;margin:10px 0}
details{margin:6px 0} summary{cursor:pointer;font-weight:600}
pre{background:#f6f8fa;padding:10px;border-radius:6px;overflow:auto;font-size:12px}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;background:#ddf4ff;font-size:12px}
"""


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def _num(v) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return _e(v)
    if math.isnan(f):
        return ""
    return f"{f:.6g}"


def _table(header: list[str], rows: Iterable[list], classes: Iterable[str] | None = None,
           numeric: set[int] | None = None, ids: set[int] | None = None) -> str:
    numeric, ids = numeric or set(), ids or set()
    classes = list(classes) if classes is not None else None
    out = ["<table><thead><tr>", *(f"<th>{_e(h)}</th>" for h in header), "</tr></thead><tbody>"]
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        cells = "".join(f'<td class="num">{_num(v)}</td>' if j in numeric else
                        f'<td class="id">{_e(v)}</td>' if j in ids else
                        (f"<th>{_e(v)}</th>" if j == 0 else f"<td>{_e(v)}</td>") for j, v in enumerate(row))
        out.append(f"<tr{cls}>{cells}</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _img(data: bytes, suffix: str, caption: str) -> str:
    b64 = base64.b64encode(data).decode("ascii")
    return (f'<figure><img alt="{_e(caption)}" src="data:{_MIME.get(suffix.lower(), "image/png")};base64,{b64}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def pick_epochs(epochs: list[int], n: int) -> list[int]:
    """At most ``n`` epochs spread over the series, always the first and the last."""
    if len(epochs) <= n:
        return epochs
    if n <= 1:
        return epochs[-1:]
    idx = sorted({round(i * (len(epochs) - 1) / (n - 1)) for i in range(n)})
    return [epochs[i] for i in idx]


def resolve_runs(run_ids: Iterable[str], include_children: bool = True):
    """The report's runs (a :func:`core.runs.get_runs` table): the ids given, each followed by its
    children when ``include_children`` (so a study's parent id reports the whole study)."""
    from core import runs as R

    ids = list(dict.fromkeys(run_ids))
    if not ids:
        raise ValueError("Name at least one run: --run RUN_ID (copy ids from the Runs page or the MLflow UI).")
    R.get_runs(ids)  # unknown ids fail here, with their name
    if include_children:
        full: list[str] = []
        for rid in ids:
            full += [r for r in [rid, *R.children_of(rid)] if r not in full]
        ids = full
    return R.get_runs(ids)


def build_report(run_ids: Iterable[str], *, title: str | None = None, include_children: bool = True,
                 grids_per_run: int = 6, on_progress: Callable[[int, int, str], None] | None = None) -> str:
    """The HTML text of a self-contained report of the runs (see the module docstring)."""
    import pandas as pd

    from core import charts, tracking
    from core import runs as R

    if grids_per_run < 1:
        raise ValueError(f"grids per run must be at least 1 (got {grids_per_run}).")
    progress = on_progress or (lambda done, total, msg: None)
    table = resolve_runs(run_ids, include_children)
    n = len(table)
    labels = R.run_labels(table)
    progress(0, n + 3, "reading metrics")
    history = R.histories(table["run_id"])
    curves = R.curves(table)
    if not curves.empty:   # a reader study logs one value per metric: its tables say it all, a curve says nothing
        curves = curves[~curves["run_id"].isin(table.loc[table["kind"] == "reader-study", "run_id"])]
    summary = R.metrics_summary(table, history)
    parents = set(table["parent_run_id"]) & set(table["run_id"])
    if title is None:
        if len(parents) == 1 and n > 1:
            p = table[table["run_id"].isin(parents)].iloc[0]
            title = f"Study {p['name']}"
        elif n == 1:
            title = f"Run {table.iloc[0]['name']}"
        else:
            title = f"{n} runs compared"
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = [f"<h1>{_e(title)}</h1>",
            (f'<p class="meta">MedAug Studio report · generated {now} · tracking store '
             f"<code>{_e(tracking.tracking_uri())}</code> · report made by code "
             f"<code>{_e(tracking.code_version())}</code></p>")]

    # a study opens with its answer in words
    for _, p in table[table["run_id"].isin(parents) & (table["kind"] == "study")].iterrows():
        body.extend(_study_answer(p["run_id"]))
    for _, r in table[table["kind"] == "reader-study"].iterrows():
        body.extend(_reader_study_section(r["run_id"], labels[r["run_id"]]))

    # runs
    body.append("<h2>Runs</h2>")
    rows = []
    for _, r in table.iterrows():
        parent = labels.get(r["parent_run_id"], r["parent_run_id"]) if r["parent_run_id"] else ""
        rows.append([labels[r["run_id"]], r["run_id"], r["kind"], r["status"], r["experiment"],
                     r["start_time"].strftime("%Y-%m-%d %H:%M:%S UTC") if r["start_time"] == r["start_time"] else "",
                     r["duration_s"], parent, r["dataset_id"], r["dataset_hash"], r["code_version"]])
    body.append(_table(["run", "run id", "kind", "status", "experiment", "started", "duration (s)", "parent",
                        "dataset", "dataset content hash", "code version"], rows, numeric={6}, ids={1, 9, 10}))
    datasets = sorted({(d, h) for d, h in zip(table["dataset_id"], table["dataset_hash"]) if d or h})
    versions = sorted(v for v in set(table["code_version"]) if v)
    body.append(f'<p class="note">Datasets: {", ".join(f"<code>{_e(d)}</code> ({_e(h)})" for d, h in datasets) or "none tagged"}'
                f' · code versions: {", ".join(f"<code>{_e(v)}</code>" for v in versions) or "none tagged"}'
                + (" · <b>runs differ in dataset or code version</b>" if len(datasets) > 1 or len(versions) > 1
                   else "") + "</p>")

    # metrics
    body.append("<h2>Metrics: final and best</h2>")
    if summary.empty:
        body.append('<p class="note">No metrics were logged.</p>')
    else:
        body.append('<p class="note">final: the value at the last step; best: the minimum or maximum over all '
                    "steps, by the metric's name (empty when the name does not say which is better).</p>")
        rows = [[r["metric"], r["run"], r["final"], r["final_step"], r["goal"], r["best"],
                 "" if pd.isna(r["best_step"]) else int(r["best_step"]),
                 r["points"]] for _, r in summary.sort_values(["metric"], kind="stable").iterrows()]
        body.append(_table(["metric", "run", "final", "at step", "goal", "best", "at step", "points"], rows,
                           numeric={2, 5}))

    # curves
    keys = sorted(k for k in curves["key"].unique() if k != "epoch") if not curves.empty else []
    if keys:
        body.append("<h2>Curves</h2>")
        by_epoch = _has_epochs(table, curves)
        x = "epoch" if by_epoch else "step"
        body.append(f'<p class="note">x axis: {x}{" (steps converted with each run&#39;s steps per epoch)" if by_epoch else ""}. '
                    "Charts are interactive: hover, zoom, click a legend entry to hide a run.</p>")
        first = True
        for key in keys[:MAX_CHARTS]:
            fig = charts.run_curves_figure(curves, key, x=x)
            body.append('<div class="chart">' + fig.to_html(full_html=False, include_plotlyjs=first,
                                                            config={"displaylogo": False, "responsive": True},
                                                            default_width="100%") + "</div>")
            first = False
        if len(keys) > MAX_CHARTS:
            body.append(f'<p class="note">{len(keys) - MAX_CHARTS} more metrics not charted: '
                        f"{_e(', '.join(keys[MAX_CHARTS:]))}.</p>")
    progress(1, n + 3, "params")

    # params
    body.append("<h2>Params</h2>")
    members = table[~table["run_id"].isin(parents)]  # a study's own config is under Configs
    params = R.params_table(members if len(members) else table)
    if parents and len(members):
        body.append('<p class="note">Params of the study\'s member runs; the study\'s own config is under '
                    "Configs and tags.</p>")
    if params.empty:
        body.append('<p class="note">No params were logged.</p>')
    else:
        diff = R.differing(params)
        if params.shape[1] > 1:
            body.append(f'<p class="note">{int(diff.sum())} of {len(params)} params differ between the runs '
                        "(highlighted, listed first).</p>")
        body.append(_table(["param", *params.columns], [[k, *params.loc[k].tolist()] for k in params.index],
                           classes=["diff" if d else "" for d in diff]))

    # images
    image_parts = []
    for i, (_, r) in enumerate(table.iterrows()):
        progress(2 + i, n + 3, f"images of {r['name']}")
        image_parts.append(_run_images(r["run_id"], labels[r["run_id"]], grids_per_run))
    if any(image_parts):
        body.append("<h2>Sample images</h2>")
        body.extend(p for p in image_parts if p)

    # configs
    body.append("<h2>Configs and tags</h2>")
    for _, r in table.iterrows():
        tags = {k: v for k, v in sorted(r["tags"].items()) if k != "mlflow.log-model.history"}
        body.append(f"<details><summary>{_e(labels[r['run_id']])} · {_e(r['kind'])}</summary>"
                    f"<h3>Params</h3><pre>{_e(json.dumps(dict(sorted(r['params'].items())), indent=1))}</pre>"
                    f"<h3>Tags</h3><pre>{_e(json.dumps(tags, indent=1))}</pre></details>")
    progress(n + 3, n + 3, "done")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>'
            f"<body><main>{''.join(body)}</main></body></html>")


def _study_answer(run_id: str) -> list[str]:
    """The study's verdict sentences (core.study.verdict) as HTML, or nothing when it has no cells."""
    from core.study.verdict import study_answer

    try:
        answer = study_answer(run_id)
    except Exception as e:  # noqa: BLE001 -- a report still shows the runs when the table cannot be built
        return [f'<p class="note">The study\'s answer could not be computed: {_e(str(e))}</p>']
    if answer["cells"].empty:
        return []
    items = "".join(f"<li>{_e(line)}</li>" for line in answer["verdict"])
    return ["<h2>The study's answer</h2>", f'<ul class="verdict">{items}</ul>',
            '<p class="note">Δ against real only, paired image by image on the shared test split; 95% bootstrap '
            "CIs; p from a sign-flip randomization test, Holm-adjusted across the table.</p>"]


def _reader_study_section(run_id: str, label: str) -> list[str]:
    """A reader-study run's verdicts and its per-reader and per-generator tables (from its artifacts)."""
    from core.reader_study import display_table, fetch_tables

    try:
        tables = fetch_tables(run_id)
    except Exception as e:  # noqa: BLE001 -- a report still shows the runs when the tables are gone
        return [f'<p class="note">Reader study {_e(label)}: its tables could not be read: {_e(str(e))}</p>']
    readers, generators = tables["readers"], tables["generators"]
    items = "".join(f"<li><b>{_e(r)}</b> {_e(v)}</li>" for r, v in zip(readers["reader"], readers["verdict"]))
    out = [f"<h2>Reader study: real or synthetic? ({_e(label)})</h2>", f'<ul class="verdict">{items}</ul>']
    for title, t in (("Per reader", readers), ("Per generator (its images and its real partners)", generators)):
        shown = display_table(t)
        out += [f"<h3>{title}</h3>", _table(list(shown.columns), shown.values.tolist())]
    out.append('<p class="note">Accuracy: real and synthetic images told apart; chance is 50% for a study that is '
               "half real. 95% Wilson intervals; p: exact two-sided binomial test against 50%. Sensitivity: synthetic "
               "images called synthetic; specificity: real images called real; class agreement: the class the reader "
               "saw on a synthetic image equals the class its generator was asked for. A generator's real partners are "
               "real images of the same classes drawn for it. The key of which image was "
               "which is the run's artifact reader-study/key.json.</p>")
    return out


def _has_epochs(table, curves) -> bool:
    """True when every run's steps map to epochs other than by identity (a steps_per_epoch
    param or a logged epoch metric)."""
    with_epoch = set(curves.loc[curves["key"] == "epoch", "run_id"])
    plotted = set(curves["run_id"])
    return all(rid in with_epoch or "steps_per_epoch" in p
               for rid, p in zip(table["run_id"], table["params"]) if rid in plotted)


def _run_images(run_id: str, label: str, grids_per_run: int) -> str:
    from core import runs as R

    paths = R.list_artifacts_tree(run_id)
    series = R.epoch_images(run_id, paths)
    others = R.other_images(paths)
    if not series and not others:
        return ""
    figs = []
    for folder, s in series.items():
        by_epoch = dict(s)
        for e in pick_epochs(list(by_epoch), grids_per_run):
            figs.append(_image_figure(run_id, by_epoch[e], f"{folder or 'images'} · epoch {e}"))
    figs += [_image_figure(run_id, p, p) for p in others[:12]]
    return f"<h3>{_e(label)}</h3><div class='grid'>{''.join(figs)}</div>"


def _image_figure(run_id: str, path: str, caption: str) -> str:
    from core import runs as R

    data = R.artifact_bytes(run_id, path)
    if len(data) > MAX_IMAGE_BYTES:
        return f'<p class="note">{_e(path)}: {len(data) / 2**20:.1f} MB, too large to embed.</p>'
    return _img(data, Path(path).suffix, caption)


def write_report(run_ids: Iterable[str], out: str | Path, **kwargs) -> dict:
    """Write :func:`build_report` to ``out`` (an .html file); returns a summary."""
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"--out {out}: a report is an HTML file; name it with .html.")
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give a file name ending in .html.")
    text = build_report(run_ids, **kwargs)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, text)
    return {"out": str(out), "bytes": len(text.encode("utf-8")), "charts": text.count('class="chart"'),
            "images": text.count("<figure>")}


def _report_command(args) -> dict:
    from core.cli import log
    from core.tracking import check_store

    check_store()
    summary = write_report(args.run, args.out, title=args.title, include_children=not args.no_children,
                           grids_per_run=args.grids, on_progress=lambda d, t, m: log(f"  [{d}/{t}] {m}"))
    log(f"report: {summary['out']} ({summary['bytes'] / 2**20:.1f} MB, {summary['charts']} charts, "
        f"{summary['images']} images)")
    return summary


def register(sub) -> None:
    s = sub.add_parser("report", help="write a self-contained HTML report of runs or a study (opens offline)",
                       description="Write one HTML file with the runs' metrics (interactive charts, plotly.js "
                                   "inline), params diff, sample grids, configs, dataset hashes and code versions.")
    s.add_argument("--run", action="append", required=True, metavar="RUN_ID",
                   help="a run id; repeat for several runs; a study's parent id brings its children")
    s.add_argument("--out", required=True, help="the HTML file to write")
    s.add_argument("--title", default=None, help="report title (default from the runs)")
    s.add_argument("--no-children", action="store_true", help="do not add the children of a parent run")
    s.add_argument("--grids", type=int, default=6, help="sample grids per run and series (default 6)")
    s.set_defaults(func=_report_command)
