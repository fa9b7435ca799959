"""Plotly figures for the pages and for MLflow artifacts. Pages only place them.

plotly is imported inside each function so importing this module stays cheap. The Home page's class
chart is plain HTML (:func:`class_balance_html`): the first page a user opens then needs no 4.7 MB
plotly.js (about 3 s of a cold start in Chromium), and the Dataset page keeps the interactive figure.
"""
from __future__ import annotations

import pandas as pd

# Okabe-Ito-like, colour-blind-safe; class i gets colour i (the same in charts and box overlays)
PALETTE = ("#7f7f7f", "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7",
           "#332288", "#88CCEE", "#44AA99", "#AA4499")
SPLIT_COLORS = {"train": "#0072B2", "val": "#E69F00", "test": "#009E73"}


def class_color(label: str, classes: list[str]) -> str:
    i = classes.index(label) if label in classes else len(classes)
    return PALETTE[i % len(PALETTE)]


def class_balance_figure(split_table: pd.DataFrame, title: str = "Images per class"):
    """Horizontal stacked bars: images per class (rows of ``split_table``) by split (columns),
    largest class on top, with the imbalance ratio in the title."""
    import plotly.graph_objects as go

    totals = split_table.sum(axis=1)
    order = totals.sort_values().index.tolist()  # plotly draws the first category at the bottom
    present = totals[totals > 0]
    ratio = present.max() / present.min() if len(present) else float("nan")
    fig = go.Figure()
    for split in split_table.columns:
        fig.add_bar(y=order, x=split_table.loc[order, split], name=split, orientation="h",
                    marker_color=SPLIT_COLORS.get(split), hovertemplate="%{y}: %{x} " + split + "<extra></extra>")
    fig.add_scatter(y=order, x=totals[order], mode="text", text=[f"  {int(v)}" for v in totals[order]],
                    textposition="middle right", showlegend=False, hoverinfo="skip")
    fig.update_layout(barmode="stack", title=f"{title} — imbalance ratio {ratio:.1f}:1",
                      xaxis_title="images", yaxis_title=None, legend=dict(title="split", traceorder="normal"),
                      height=120 + 34 * len(order), margin=dict(l=10, r=40, t=60, b=40),
                      xaxis=dict(range=[0, float(totals.max()) * 1.15 if len(totals) else 1]))
    return fig


def class_balance_html(split_table: pd.DataFrame, title: str = "Images per class") -> str:
    """The same chart as :func:`class_balance_figure` in plain HTML and CSS (no script): a stacked bar
    per class, largest first, segments by split with their counts on hover, the total at the end, and
    the imbalance ratio in the title."""
    from html import escape

    totals = split_table.sum(axis=1)
    order = totals.sort_values(ascending=False).index.tolist()
    present = totals[totals > 0]
    ratio = present.max() / present.min() if len(present) else float("nan")
    top = float(totals.max()) if len(totals) and totals.max() > 0 else 1.0
    legend = " ".join(f'<span style="white-space:nowrap"><span style="display:inline-block;width:.8em;height:.8em;'
                      f'background:{SPLIT_COLORS.get(split, "#999")};margin-right:.25em"></span>{escape(str(split))}'
                      f'</span>' for split in split_table.columns)
    rows = []
    for label in order:
        segments = "".join(
            f'<div title="{escape(str(label))}: {int(n)} {escape(str(split))}" style="flex:none;height:100%;'
            f'width:{100 * n / top * 0.85:.3f}%;background:{SPLIT_COLORS.get(split, "#999")}"></div>'
            for split, n in split_table.loc[label].items() if n > 0)
        rows.append(f'<div style="display:flex;align-items:center;gap:.5rem;margin:.2rem 0">'
                    f'<div style="flex:0 0 38%;text-align:right;font-size:.85rem;overflow:hidden;text-overflow:ellipsis;'
                    f'white-space:nowrap" title="{escape(str(label))}">{escape(str(label))}</div>'
                    f'<div style="flex:1;display:flex;align-items:center;height:1.1rem">{segments}'
                    f'<span style="font-size:.8rem;padding-left:.3rem">{int(totals[label])}</span></div></div>')
    return (f'<div class="medaug-balance" role="img" aria-label="{escape(title)}">'
            f'<div style="font-weight:600;margin-bottom:.3em">{escape(title)} — imbalance ratio {ratio:.1f}:1</div>'
            f'<div style="font-size:.8em;margin-bottom:.4em">split: {legend}</div>{"".join(rows)}</div>')


def balance_plan_figure(plan: pd.DataFrame):
    """Before/after bars of a balancing plan: real images, plus the synthetic ones on top."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_bar(x=plan["class"], y=plan["real"], name="real (train)", marker_color=SPLIT_COLORS["train"])
    fig.add_bar(x=plan["class"], y=plan["synthetic"], name="synthetic to add", marker_color="#CC79A7",
                marker_pattern_shape="/")
    target = plan.attrs.get("target")
    if target:
        fig.add_hline(y=target, line_dash="dot", line_color="#555", annotation_text=f"target {target}")
    fig.update_layout(barmode="stack", title="Training images per class: before and after balancing",
                      yaxis_title="images", legend=dict(orientation="h", y=1.1), height=380,
                      margin=dict(l=10, r=10, t=70, b=10))
    return fig


GAN_LOSS_KEYS = ("loss_d", "loss_g", "wasserstein", "gp")
GAN_OUTPUT_KEYS = ("d_real", "d_fake", "d_fake_g")
_GAN_NAMES = {"loss_d": "D loss", "loss_g": "G loss", "wasserstein": "Wasserstein estimate",
              "gp": "gradient penalty", "d_real": "D(x)", "d_fake": "D(G(z)) before D step",
              "d_fake_g": "D(G(z)) at G step"}


FIDELITY_KEY = "fidelity_kid"   # the fidelity check's KID (mean over classes); per class: fidelity_kid/<class>


def gan_curves_figure(history: pd.DataFrame, steps_per_epoch: int | None = None):
    """A GAN run's curves from a long (key, step, value) table: the losses and the Wasserstein
    estimate on top, D's outputs below, and, when the run checked its fidelity, a third panel with
    the KID curve (thick: mean over classes; thin: each class) and its best checkpoint marked.
    x is the generator step (or epoch)."""
    from plotly.subplots import make_subplots

    fidelity = history[history["key"].astype(str).str.startswith(FIDELITY_KEY)]
    titles = ["Losses", "Discriminator / critic outputs"]
    if not fidelity.empty:
        titles.append("Fidelity: KID on domain features vs the real train split (lower is better)")
    rows = len(titles)
    fig = make_subplots(rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.08, subplot_titles=titles)

    def xs(steps):
        return steps / steps_per_epoch if steps_per_epoch else steps

    for row, keys in ((1, GAN_LOSS_KEYS), (2, GAN_OUTPUT_KEYS)):
        for key in keys:
            h = history[history["key"] == key]
            if h.empty:
                continue
            fig.add_scatter(x=xs(h["step"]), y=h["value"], mode="lines", name=_GAN_NAMES[key], row=row, col=1,
                            line=dict(width=3 if key == "wasserstein" else 1.6))
    _add_fidelity_traces(fig, fidelity, 3, xs)
    fig.update_xaxes(title_text="epoch" if steps_per_epoch else "generator step", row=rows, col=1)
    fig.update_layout(height=260 * rows, margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.15))
    return fig


def _add_fidelity_traces(fig, fidelity: pd.DataFrame, row: int, xs=lambda steps: steps) -> None:
    """The fidelity check's KID curves into ``row`` of ``fig``: thin per class, thick for the mean over
    classes, a star on the best checkpoint (nothing when ``fidelity`` is empty)."""
    if fidelity.empty:
        return
    for key in sorted(set(fidelity["key"]) - {FIDELITY_KEY}):   # per class, thin
        h = fidelity[fidelity["key"] == key].sort_values("step")
        fig.add_scatter(x=xs(h["step"]), y=h["value"], mode="lines", name=f"KID {key.split('/', 1)[-1]}",
                        row=row, col=1, line=dict(width=1), opacity=0.5, legendgroup="kid_classes")
    h = fidelity[fidelity["key"] == FIDELITY_KEY].sort_values("step")
    if not h.empty:
        fig.add_scatter(x=xs(h["step"]), y=h["value"], mode="lines+markers", name="KID (mean over classes)",
                        row=row, col=1, line=dict(width=3, color="#000000"))
        best = h.loc[h["value"].idxmin()]
        fig.add_scatter(x=[xs(best["step"])], y=[best["value"]], mode="markers", name="best checkpoint",
                        row=row, col=1, marker=dict(symbol="star", size=14, color="#D55E00"))


def diffusion_curves_figure(history: pd.DataFrame, smooth: int = 10):
    """A diffusion run's curves from a long (key, step, value) table: the denoising loss (thin: as
    logged, every ``log_every`` steps; thick: its running mean over ``smooth`` points once there are more
    points than that), and, when the run checked its fidelity, a second panel with the KID curve and its
    best checkpoint marked. x is the training step."""
    from plotly.subplots import make_subplots

    fidelity = history[history["key"].astype(str).str.startswith(FIDELITY_KEY)]
    titles = ["Denoising loss (MSE of the predicted v or noise; lower is better)"]
    if not fidelity.empty:
        titles.append("Fidelity: KID on domain features vs the real train split (lower is better)")
    rows = len(titles)
    fig = make_subplots(rows=rows, cols=1, shared_xaxes=True, vertical_spacing=0.12, subplot_titles=titles)
    h = history[history["key"] == "loss"].sort_values("step")
    if not h.empty:
        long = len(h) > smooth
        fig.add_scatter(x=h["step"], y=h["value"], mode="lines" if long else "lines+markers", name="loss", row=1,
                        col=1, line=dict(width=1, color="#56B4E9") if long else dict(width=2.5, color="#0072B2"))
        if long:   # a short curve is clearer without a lagging mean over it
            mean = h["value"].rolling(smooth, min_periods=1).mean()
            fig.add_scatter(x=h["step"], y=mean, mode="lines", name=f"running mean ({smooth} points)", row=1,
                            col=1, line=dict(width=3, color="#0072B2"))
    _add_fidelity_traces(fig, fidelity, 2)
    fig.update_xaxes(rangemode="tozero")   # from step 0, so a short curve has whole-step ticks
    fig.update_xaxes(title_text="training step", row=rows, col=1)
    fig.update_layout(height=300 * rows, margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.2))
    return fig


# --- runs / reports -------------------------------------------------------------------------

RUN_PALETTE = tuple(c for c in PALETTE if c not in ("#7f7f7f", "#F0E442"))  # grey and yellow read poorly as lines


def run_color(i: int) -> str:
    """Colour of the i-th compared run."""
    return RUN_PALETTE[i % len(RUN_PALETTE)]


def run_curves_figure(curves: pd.DataFrame, key: str, x: str = "step", title: str | None = None):
    """One metric's curves of several runs overlaid, from core.runs.curves' long table
    (run, key, step, epoch, value); ``x`` is "step" or "epoch"."""
    import plotly.graph_objects as go

    if x not in ("step", "epoch"):
        raise ValueError(f"x must be 'step' or 'epoch', got {x!r}.")
    fig = go.Figure()
    order = {run: i for i, run in enumerate(dict.fromkeys(curves["run"]))}  # a run keeps its colour in every chart
    data = curves[curves["key"] == key]
    for run, g in data.groupby("run", sort=False):
        i = order[run]
        g = g.sort_values("step")
        fig.add_scatter(x=g[x], y=g["value"], mode="lines+markers" if len(g) < 30 else "lines", name=run,
                        line={"color": run_color(i), "width": 2}, marker={"size": 5},
                        hovertemplate=f"{run}<br>{x} %{{x:.4g}}<br>{key} %{{y:.5g}}<extra></extra>")
    fig.update_layout(title=title or key, xaxis_title=x, yaxis_title=key, height=380,
                      margin={"l": 10, "r": 10, "t": 50, "b": 10}, legend={"orientation": "h", "y": -0.2},
                      hovermode="closest")
    return fig


# --- quality (core.quality reports) -----------------------------------------------------------

QUALITY_METRIC_NAMES = {"ssim": "SSIM", "ms_ssim": "MS-SSIM", "psnr": "PSNR (dB)", "mse": "MSE", "rmse": "RMSE",
                        "nrmse": "NRMSE", "feature_distance": "feature distance"}


def set_color(i: int) -> str:
    """Colour of the i-th compared set (class colours keep their own meaning elsewhere)."""
    return PALETTE[(i + 1) % len(PALETTE)]


def quality_distribution_figure(per_image: pd.DataFrame, metric: str = "ssim", classes: list[str] | None = None,
                                kind: str = "violin"):
    """Per-image ``metric`` (against the nearest real training image) as violins (or boxes) per class,
    one colour per synthetic set, side by side."""
    import plotly.graph_objects as go

    name = QUALITY_METRIC_NAMES.get(metric, metric)
    data = per_image[pd.to_numeric(per_image[metric], errors="coerce").abs() < float("inf")]
    order = [c for c in (classes or []) if c in set(data["class"])] + sorted(set(data["class"]) - set(classes or []))
    fig = go.Figure()
    for i, (set_name, d) in enumerate(data.groupby("set", sort=False)):
        common = {"x": d["class"], "y": d[metric], "name": set_name, "legendgroup": set_name, "marker_color": set_color(i),
                      "hovertext": d["image_id"], "hovertemplate": "%{hovertext}<br>" + name + " %{y:.4g}<extra>%{x}</extra>"}
        if kind == "box":
            fig.add_box(boxpoints="all", jitter=0.4, pointpos=0, **common)
        else:
            fig.add_violin(box_visible=True, meanline_visible=True, points="all", jitter=0.3, pointpos=0,
                           scalemode="width", spanmode="hard", **common)
    mode = {"boxmode": "group"} if kind == "box" else {"violinmode": "group"}
    fig.update_layout(title=f"{name} of each synthetic image against its nearest real training image",
                      yaxis_title=name, xaxis={"categoryorder": "array", "categoryarray": order, "title": None},
                      legend={"orientation": "h", "y": -0.18}, height=430, margin={"l": 10, "r": 10, "t": 50, "b": 10}, **mode)
    return fig


def quality_sets_figure(sets: pd.DataFrame):
    """Set metrics with their 95% bootstrap intervals: FID (left) and precision / recall (right)."""
    from plotly.subplots import make_subplots

    extractor = ", ".join(sorted(set(sets["extractor"].astype(str)))) if "extractor" in sets else "?"
    fig = make_subplots(rows=1, cols=2, column_widths=[0.45, 0.55], horizontal_spacing=0.1,
                        subplot_titles=(f"FID ({extractor} features), lower is better",
                                        "Precision (fidelity) and recall (coverage), higher is better"))
    colors = [set_color(i) for i in range(len(sets))]
    names = sets["set"].astype(str).str.replace(" · ", "<br>", regex=False)   # short lines under the bars
    fig.add_bar(x=names, y=sets["fid"], marker_color=colors, showlegend=False, row=1, col=1,
                error_y={"type": "data", "symmetric": False, "array": (sets["fid_hi"] - sets["fid"]).clip(lower=0),
                             "arrayminus": (sets["fid"] - sets["fid_lo"]).clip(lower=0)},
                hovertemplate="%{x}<br>FID %{y:.4g}<extra></extra>")
    for metric, pattern in (("precision", ""), ("recall", "/")):
        fig.add_bar(x=names, y=sets[metric], name=metric, marker_color=colors, marker_pattern_shape=pattern,
                    row=1, col=2, error_y={"type": "data", "symmetric": False,
                                               "array": (sets[f"{metric}_hi"] - sets[metric]).clip(lower=0),
                                               "arrayminus": (sets[metric] - sets[f"{metric}_lo"]).clip(lower=0)},
                    hovertemplate="%{x}<br>" + metric + " %{y:.2f}<extra></extra>")
    fig.update_yaxes(range=[0, 1.05], row=1, col=2)
    fig.update_xaxes(tickangle=0)
    fig.update_layout(barmode="group", height=380, margin={"l": 10, "r": 10, "t": 50, "b": 10},
                      legend={"orientation": "h", "y": -0.2, "title": "hatched: recall"})
    return fig


def quality_epochs_figure(epochs: pd.DataFrame, title: str = "Fidelity over training"):
    """Set metrics of each epoch's fixed-noise samples: FID (left axis), precision, recall and mean
    SSIM to the nearest real image (right axis, 0-1)."""
    from plotly.subplots import make_subplots

    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_scatter(x=epochs["epoch"], y=epochs["fid"], name="FID", mode="lines+markers",
                    line={"color": "#D55E00", "width": 3}, secondary_y=False)
    for metric, color, dash in (("precision", "#0072B2", "solid"), ("recall", "#009E73", "dash"),
                                ("mean_ssim", "#7f7f7f", "dot")):
        if metric in epochs:
            fig.add_scatter(x=epochs["epoch"], y=epochs[metric], name=metric.replace("mean_ssim", "mean SSIM"),
                            mode="lines+markers", line={"color": color, "dash": dash}, secondary_y=True)
    fig.update_yaxes(title_text="FID (lower is better)", secondary_y=False)
    fig.update_yaxes(title_text="precision / recall / SSIM", range=[0, 1.05], secondary_y=True)
    fig.update_layout(title=title, xaxis_title="epoch", height=380, margin={"l": 10, "r": 10, "t": 50, "b": 10},
                      legend={"orientation": "h", "y": -0.2})
    return fig


def memorization_figure(memorization: pd.DataFrame, sets: pd.DataFrame):
    """Each synthetic image's distance to its nearest training image (same class), per set, with the
    near-copy threshold and the real-to-real median drawn as lines."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, (set_name, d) in enumerate(memorization.groupby("set", sort=False)):
        fig.add_histogram(x=d["distance"], name=set_name, marker_color=set_color(i), opacity=0.7, nbinsx=40)
    if len(sets):
        fig.add_vline(x=float(sets["memorization_threshold"].min()), line_dash="dash", line_color="#D55E00",
                      annotation_text="near-copy threshold", annotation_position="bottom left")
        fig.add_vline(x=float(sets["real_real_median"].median()), line_dash="dot", line_color="#555",
                      annotation_text="real-to-real median", annotation_position="top right")
    fig.update_layout(barmode="overlay", title="Distance to the nearest training image (feature space)",
                      xaxis_title="distance", yaxis_title="synthetic images", height=340,
                      margin={"l": 10, "r": 10, "t": 50, "b": 10}, legend={"orientation": "h", "y": -0.25})
    return fig


# --- classification / study ------------------------------------------------------------------------

def study_bar_figure(table: pd.DataFrame, metric: str = "macro_f1"):
    """Bars of the results table: one group per augmentation set, one bar per network, with
    95% CI whiskers, and a dotted line at each network's real-only mean."""
    import plotly.graph_objects as go

    fig = go.Figure()
    labels = list(dict.fromkeys(table["set_label"]))
    for i, (net, sub) in enumerate(table.groupby("network", sort=False)):
        sub = sub.set_index("set_label").reindex(labels)
        color = PALETTE[(i + 5) % len(PALETTE)]
        fig.add_bar(x=labels, y=sub["mean"], name=net, marker_color=color,
                    error_y={"type": "data", "symmetric": False, "array": (sub["ci_hi"] - sub["mean"]).tolist(),
                             "arrayminus": (sub["mean"] - sub["ci_lo"]).tolist(), "thickness": 1.4, "width": 4},
                    customdata=sub[["ci_lo", "ci_hi", "delta", "n_seeds"]].to_numpy(),
                    hovertemplate="%{x}<br>" + net + ": %{y:.3f} [%{customdata[0]:.3f}, %{customdata[1]:.3f}]"
                                  "<br>Δ vs real %{customdata[2]:+.3f} · %{customdata[3]} seed(s)<extra></extra>")
        base = sub.loc[labels[0], "mean"] if labels and labels[0] == "real only" else None
        if base is not None and pd.notna(base):
            fig.add_hline(y=base, line_dash="dot", line_color=color, opacity=0.8,
                          annotation_text=f"real only ({net})", annotation_position="top left")
    fig.update_layout(barmode="group", title=f"{metric} by augmentation set (95% CI)", yaxis_title=metric,
                      xaxis_tickangle=-30, height=440, margin={"l": 10, "r": 10, "t": 60, "b": 10},
                      legend={"orientation": "h", "y": 1.08, "x": 1, "xanchor": "right"})
    return fig


def delta_heatmap_figure(delta: pd.DataFrame, title: str = "Δ sensitivity against real only"):
    """Rows = augmentation sets, columns = classes, colour = change in sensitivity (diverging,
    centred on 0), with the value written in each cell."""
    import numpy as np
    import plotly.graph_objects as go

    z = delta.to_numpy(dtype=float)
    finite = np.isfinite(z)
    bound = float(max(0.05, np.abs(z[finite]).max())) if finite.any() else 1.0
    text = [[(f"{v:+.2f}" if np.isfinite(v) else "") for v in row] for row in z]
    # orange (worse) - white - green (better): the colours of the results table's tint
    scale = [[0.0, "#D55E00"], [0.5, "#F7F7F7"], [1.0, "#009E73"]]
    fig = go.Figure(go.Heatmap(z=z, x=list(delta.columns), y=list(delta.index), colorscale=scale, zmid=0,
                               zmin=-bound, zmax=bound, text=text, texttemplate="%{text}",
                               colorbar={"title": "Δ sens."},
                               hovertemplate="%{y}<br>%{x}: Δ sensitivity %{z:+.3f}<extra></extra>"))
    fig.update_layout(title=title, height=140 + 32 * len(delta), margin={"l": 10, "r": 10, "t": 50, "b": 10},
                      yaxis={"autorange": "reversed"}, xaxis={"side": "bottom", "tickangle": -25})
    return fig


CLASSIFIER_CURVES = (("train_loss", "train loss", 1), ("val_loss", "val loss", 1), ("train_acc", "train accuracy", 2),
                     ("val_acc", "val accuracy", 2), ("val_macro_f1", "val macro-F1", 2))


def classifier_curves_figure(history: pd.DataFrame, best_epoch: int | None = None, title: str | None = None):
    """A classifier's epoch curves from a long (key, step, value) table: losses on top,
    accuracy and macro-F1 below; a dotted line marks the epoch whose weights were tested."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.1,
                        subplot_titles=("Loss", "Accuracy and macro-F1"))
    for i, (key, name, row) in enumerate(CLASSIFIER_CURVES):
        h = history[history["key"] == key]
        if h.empty:
            continue
        fig.add_scatter(x=h["step"], y=h["value"], mode="lines+markers", name=name, row=row, col=1,
                        line={"color": PALETTE[(i % 4) + 5 if key.startswith("val") else (i % 4) + 1],
                              "dash": "solid" if key.startswith("val") else "dot"})
    if best_epoch:
        fig.add_vline(x=best_epoch, line_dash="dot", line_color="#555", annotation_text="tested")
    fig.update_xaxes(title_text="epoch", row=2, col=1)
    fig.update_layout(title=title, height=460, margin={"l": 10, "r": 10, "t": 60 if title else 30, "b": 10},
                      legend={"orientation": "h", "y": -0.15})
    return fig


def confusion_matrix_figure(matrix, classes: list[str], title: str = "Confusion matrix (test split)"):
    """Rows = true class, columns = predicted; colour = share of the true class, text = count and share
    ("–" for a class with no test images). The page and the run's confusion_matrix.html artifact."""
    import numpy as np
    import plotly.graph_objects as go

    cm = np.asarray(matrix, dtype=float)
    rows = cm.sum(axis=1, keepdims=True)
    share = cm / np.maximum(rows, 1)
    text = [[f"{int(cm[i, j])}<br>{share[i, j]:.0%}" if rows[i, 0] else "–" for j in range(len(classes))]
            for i in range(len(classes))]
    fig = go.Figure(go.Heatmap(z=share, x=classes, y=classes, colorscale="Blues", zmin=0, zmax=1,
                               text=text, texttemplate="%{text}", colorbar={"title": "row share"},
                               hovertemplate="true %{y}<br>predicted %{x}: %{text}<extra></extra>"))
    fig.update_layout(title=title, height=260 + 34 * len(classes), margin={"l": 10, "r": 10, "t": 50, "b": 10},
                      xaxis={"title": "predicted", "tickangle": -45, "automargin": True},
                      yaxis={"title": "true", "autorange": "reversed", "automargin": True})
    return fig


def reader_study_figure(readers: pd.DataFrame, generators: pd.DataFrame, pooled: str = "All readers (pooled)"):
    """Reader study: accuracy with its 95% CI per reader (left) and per generator (right: all readers
    pooled, or the one reader), against the 50% a coin flip scores."""
    from plotly.subplots import make_subplots

    gens = generators[generators["reader"] == pooled] if (generators["reader"] == pooled).any() else generators
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.3,
                        subplot_titles=("Per reader", "Per generator (its images + its real partners)"))
    for col, table, names in ((1, readers, readers["reader"]), (2, gens, gens["generator_name"])):
        names = [str(n) for n in names][::-1]
        t = table.iloc[::-1]
        beat = [bool(b) for b in t["beat_chance"]]
        fig.add_scatter(x=t["accuracy"], y=names, mode="markers", row=1, col=col, showlegend=False,
                        marker=dict(size=11, color=["#D55E00" if b else "#0072B2" for b in beat]),
                        error_x=dict(type="data", symmetric=False, array=t["accuracy_hi"] - t["accuracy"],
                                     arrayminus=t["accuracy"] - t["accuracy_lo"], thickness=2, width=6),
                        customdata=list(zip(t["n"], t["correct"], t["p_value"])),
                        hovertemplate="%{y}: %{x:.0%} (%{customdata[1]} of %{customdata[0]}), "
                                      "p = %{customdata[2]:.2g}<extra></extra>")
        fig.add_vline(x=0.5, line_dash="dash", line_color="#59636e", row=1, col=col)
        fig.update_xaxes(range=[0, 1.02], tickformat=".0%", title_text="accuracy, 95% CI", row=1, col=col)
    rows = max(len(readers), len(gens), 1)
    fig.update_layout(height=190 + 42 * rows, margin=dict(l=10, r=20, t=90, b=40),
                      title=dict(text="Real or synthetic: accuracy with 95% CI · dashed: chance (50%) · "
                                      "orange: better than chance (p < 0.05)", font=dict(size=14)))
    fig.update_annotations(font_size=13)
    return fig


# --- a study's cells by state (the Classify page's live view of a study job) -------------------
# Okabe-Ito colours (colour-blind-safe), each state also drawn differently: pending hollow, running
# striped, finished solid, failed with a cross, so the board reads without colour too
CELL_STATE_STYLES = {
    "pending": "background:#EDEFF2;border:1px solid #8A949E",
    "running": "background:repeating-linear-gradient(135deg,#56B4E9 0 3px,#0072B2 3px 6px);border:1px solid #0072B2",
    "finished": "background:#009E73;border:1px solid #007A59",
    "failed": "background:#D55E00;border:1px solid #A84A00;color:#fff",
}
CELL_STATE_ORDER = ("finished", "running", "pending", "failed")
_CELL_PX = 16


def _cell_parts(key: str) -> tuple[str, str, str]:
    """``set|network|sN`` (core.study.grid.Cell.key) as its three parts; another key is a set of its own."""
    parts = str(key).split("|")
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else (str(key), "", "")


def _seed_order(seed: str) -> tuple:
    return (0, int(seed[1:])) if seed[:1] == "s" and seed[1:].isdigit() else (1, seed)


def cell_board_html(states: dict, failed: dict | None = None, set_labels: dict | None = None) -> str:
    """A study's cells as a board of small squares in plain HTML (no script): one row per augmentation
    set (in the order the cells come), one column per network x seed (grouped by network), each square
    coloured by its state (``pending``, ``running``, ``finished``, ``failed``; class
    ``medaug-cell-<state>``) with the cell key, its state and a failed cell's reason as its tooltip,
    above a legend with the count per state. ``states``: cell key -> state (status.json's
    ``cell_states``); ``failed``: cell key -> reason; ``set_labels``: set key -> row label."""
    from html import escape

    failed, set_labels = failed or {}, set_labels or {}
    sets: list[str] = []
    seeds_of: dict[str, list[str]] = {}
    where: dict[tuple[str, str, str], str] = {}
    for key, state in states.items():
        s, net, seed = _cell_parts(key)
        if s not in sets:
            sets.append(s)
        seeds = seeds_of.setdefault(net, [])
        if seed not in seeds:
            seeds.append(seed)
        where[(s, net, seed)] = key
    for seeds in seeds_of.values():
        seeds.sort(key=_seed_order)
    counts = {state: sum(v == state for v in states.values()) for state in CELL_STATE_ORDER}
    others = len(states) - sum(counts.values())
    box = (f"display:inline-block;box-sizing:border-box;width:{_CELL_PX}px;height:{_CELL_PX}px;border-radius:3px;"
           f"font-size:11px;line-height:{_CELL_PX - 2}px;text-align:center;vertical-align:middle")
    row_h = f"height:{_CELL_PX}px;margin:0 0 3px 0;line-height:{_CELL_PX}px"

    def square(key: str | None) -> str:
        if key is None:   # no such cell in this study (a grid with gaps): an empty slot
            return f'<span style="{box}"></span>'
        state = str(states[key])
        style = CELL_STATE_STYLES.get(state, "background:#fff;border:1px dashed #8A949E")
        tip = f"{key}: {state}" + (f" — {failed[key]}" if key in failed else "")
        mark = "×" if state == "failed" else ""
        return (f'<span class="medaug-cell medaug-cell-{escape(state)}" title="{escape(tip)}" '
                f'style="{box};{style}">{mark}</span>')

    legend = " ".join(
        f'<span style="white-space:nowrap;margin-right:.9em"><span style="{box};{CELL_STATE_STYLES[state]};'
        f'margin-right:.3em">{"×" if state == "failed" else ""}</span>{state} {counts[state]}</span>'
        for state in CELL_STATE_ORDER) + (f' <span style="white-space:nowrap">other {others}</span>' if others else "")
    label_col = "".join(f'<div style="{row_h};white-space:nowrap;overflow:hidden;text-overflow:ellipsis;'
                        f'max-width:22rem" title="{escape(str(s))}">{escape(str(set_labels.get(s, s)))}</div>'
                        for s in sets)
    header = f'<div style="{row_h}"></div><div style="{row_h}"></div>'
    groups = []
    for net, seeds in seeds_of.items():
        seed_row = "".join(f'<span style="{box};font-size:10px;color:#52606D">{escape(seed)}</span>' for seed in seeds)
        rows = "".join(f'<div style="{row_h};display:flex;gap:3px">'
                       + "".join(square(where.get((s, net, seed))) for seed in seeds) + "</div>" for s in sets)
        groups.append(f'<div class="medaug-board-network"><div style="{row_h};font-weight:600;white-space:nowrap">'
                      f'{escape(net)}</div><div style="{row_h};display:flex;gap:3px">{seed_row}</div>{rows}</div>')
    return ('<div class="medaug-board" role="img" aria-label="Study cells by state: '
            + escape(", ".join(f"{counts[s]} {s}" for s in CELL_STATE_ORDER)) + '">'
            f'<div style="font-size:.85rem;margin-bottom:.5em">{legend}</div>'
            f'<div style="display:flex;gap:1.2rem;align-items:flex-start;font-size:.8rem;overflow-x:auto">'
            f'<div class="medaug-board-sets" style="text-align:right">{header}{label_col}</div>{"".join(groups)}</div>'
            f'</div>')
