"""The report's plotly figures: per-class heatmap, class-mean bars, the few-shot curve."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from fashion_core.report.analysis import FEW_TEST
from fashion_core.report.tables import few_shot_table

# ---------------------------------------------------------------- figures


def heatmap_figure(wide: pd.DataFrame, techniques: Sequence[str], stage: str):
    """Per-class top-1 heatmap: evaluated classes (most training images first) x techniques."""
    import plotly.graph_objects as go

    rows = wide[(wide["n_train"] > 0) & (wide["n_test"] > 0)]
    z = rows[[f"{t} top1" for t in techniques]].to_numpy(dtype=float)
    z5 = rows[[f"{t} top5" for t in techniques]].to_numpy(dtype=float)
    # A class scored on fewer than FEW_TEST images is starred and its cells say how many: 1/1 is not 100 %.
    labels = [
        f"{c} ({a}/{b})" + (" *" if b < FEW_TEST else "")
        for c, a, b in zip(rows["class"], rows["n_train"], rows["n_test"])
    ]
    custom = np.dstack(
        [
            z5,
            np.repeat(rows[["n_train"]].to_numpy(), len(techniques), axis=1),
            np.repeat(rows[["n_test"]].to_numpy(), len(techniques), axis=1),
        ]
    )
    text = [[f"n={b}" if b < FEW_TEST else "" for _ in techniques] for b in rows["n_test"]]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(techniques),
            y=labels,
            customdata=custom,
            colorscale="Viridis",
            zmin=0,
            zmax=1,
            text=text,
            texttemplate="%{text}",
            textfont=dict(color="red", size=11),
            colorbar=dict(title="Top-1"),
            hovertemplate="%{y}<br>%{x}<br>Top-1 %{z:.3f}<br>Top-5 %{customdata[0]:.3f}<br>"
            "train %{customdata[1]} / test %{customdata[2]}<extra></extra>",
        )
    )
    fig.update_layout(
        title=f"{stage}: per-class Top-1 (class (n_train/n_test), most training images first; "
        f"* and n=...: fewer than {FEW_TEST} test images)",
        height=max(400, 16 * len(rows) + 200),
        width=max(600, 110 * len(techniques) + 400),
        yaxis=dict(autorange="reversed", type="category"),
        xaxis=dict(type="category", side="top"),
        margin=dict(l=260),
    )
    return fig


def class_mean_figure(summ: pd.DataFrame, runs: pd.DataFrame, stage: str):
    """Class-mean Top-1 and Top-5 per technique: bars with the bootstrap interval, seeds as dots."""
    import plotly.graph_objects as go

    fig = go.Figure()
    order = list(summ["technique"])
    for metric, colour in (("top1", "#1f77b4"), ("top5", "#ff7f0e")):
        fig.add_bar(
            name=f"{metric.replace('top', 'Top-')} class-mean",
            x=order,
            y=summ[f"{metric}_mean"],
            marker_color=colour,
            offsetgroup=metric,
            error_y=dict(
                type="data",
                array=(summ[f"{metric}_hi"] - summ[f"{metric}_mean"]).clip(lower=0),
                arrayminus=(summ[f"{metric}_mean"] - summ[f"{metric}_lo"]).clip(lower=0),
            ),
            customdata=np.stack(
                [summ[f"{metric}_lo"], summ[f"{metric}_hi"], summ[f"{metric}_std"].fillna(0), summ["n_seeds"]], axis=1
            ),
            hovertemplate="%{x}<br>%{y:.3f} [%{customdata[0]:.3f}, %{customdata[1]:.3f}]"
            "<br>std over %{customdata[3]} seed(s): %{customdata[2]:.3f}<extra></extra>",
        )
        r = runs[runs["stage"] == stage]
        fig.add_scatter(
            name=f"{metric.replace('top', 'Top-')} per seed",
            x=r["technique"],
            y=r[f"{metric}_mean"],
            mode="markers",
            marker=dict(color="black", size=6, symbol="circle-open"),
            offsetgroup=metric,
            text=[f"seed {s}" for s in r["seed"]],
            hovertemplate="%{x} %{text}: %{y:.3f}<extra></extra>",
        )
    fig.update_layout(
        title=f"{stage}: class-mean accuracy per technique (error bars: 95% bootstrap interval "
        "of the seed mean; dots: seeds)",
        barmode="group",
        scattermode="group",
        yaxis=dict(range=[0, 1.05]),
        xaxis=dict(type="category", categoryorder="array", categoryarray=order),
        height=480,
    )
    return fig


def few_shot_figure(wide: pd.DataFrame, techniques: Sequence[str], stage: str):
    """Top-1 against the number of training images: per-technique bin means (lines) and classes (dots)."""
    import plotly.express as px
    import plotly.graph_objects as go

    rows = wide[(wide["n_train"] > 0) & (wide["n_test"] > 0)]
    bins = few_shot_table(wide, techniques)
    colours = px.colors.qualitative.Plotly + px.colors.qualitative.Dark24
    fig = go.Figure()
    for i, t in enumerate(techniques):
        colour = colours[i % len(colours)]
        b = bins[bins["technique"] == t]
        fig.add_scatter(
            name=t,
            x=b["n_train_median"],
            y=b["top1"],
            mode="lines+markers",
            legendgroup=t,
            line=dict(color=colour),
            customdata=np.stack([b["bin"], b["n_classes"]], axis=1),
            hovertemplate=f"{t}<br>n_train %{{customdata[0]}} (%{{customdata[1]}} classes)"
            "<br>mean Top-1 %{y:.3f}<extra></extra>",
        )
        fig.add_scatter(
            name=f"{t} (classes)",
            x=rows["n_train"],
            y=rows[f"{t} top1"],
            mode="markers",
            legendgroup=t,
            showlegend=False,
            marker=dict(color=colour, size=5, opacity=0.35),
            text=rows["class"],
            hovertemplate=f"{t}<br>%{{text}}: n_train %{{x}}, Top-1 %{{y:.3f}}<extra></extra>",
        )
    # Explicit 1-2-5 ticks: plotly's own log ticks label the minor steps with their first digit ("8 9 1 2 ...").
    top = max([1, *rows["n_train"].tolist()])
    ticks = [m * 10**e for e in range(0, len(str(int(top))) + 1) for m in (1, 2, 5) if m * 10**e <= top * 2]
    fig.update_layout(
        title=f"{stage}: Top-1 against training images per class (lines: mean per bin "
        f"{', '.join(dict.fromkeys(bins['bin']))}; dots: classes)",
        xaxis=dict(
            type="log",
            title="training images of the class (log)",
            tickmode="array",
            tickvals=ticks,
            ticktext=[f"{t:,}" for t in ticks],
            minor=dict(showgrid=False),
        ),
        yaxis=dict(title="Top-1", range=[-0.02, 1.02]),
        height=520,
    )
    return fig
