"""Plotly figures for the pages and for MLflow artifacts. Pages only place them.

plotly is imported inside each function so importing this module stays cheap.
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


def gan_curves_figure(history: pd.DataFrame, steps_per_epoch: int | None = None):
    """Two panels of a GAN run's curves from a long (key, step, value) table: the losses and
    the Wasserstein estimate on top, D's outputs below. x is the generator step (or epoch)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("Losses", "Discriminator / critic outputs"))
    for row, keys in ((1, GAN_LOSS_KEYS), (2, GAN_OUTPUT_KEYS)):
        for key in keys:
            h = history[history["key"] == key]
            if h.empty:
                continue
            x = h["step"] / steps_per_epoch if steps_per_epoch else h["step"]
            fig.add_scatter(x=x, y=h["value"], mode="lines", name=_GAN_NAMES[key], row=row, col=1,
                            line=dict(width=3 if key == "wasserstein" else 1.6))
    fig.update_xaxes(title_text="epoch" if steps_per_epoch else "generator step", row=2, col=1)
    fig.update_layout(height=520, margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.15))
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
