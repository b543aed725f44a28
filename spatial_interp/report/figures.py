"""Plotly figures for the labelled arrays the primitives return.

Example:
    >>> import numpy as np
    >>> from spatial_interp.results import LabelledArray
    >>> from spatial_interp.report import strip_maps
    >>> maps = LabelledArray(np.random.rand(3, 12, 12), ("class", "row", "col"), {"class": ["left", "middle", "right"]})
    >>> len(strip_maps(maps).data)
    3
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..results import LabelledArray

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2")


def _slot_label(site: str) -> str:
    """``lm_resid.0`` → ``Embed``, ``lm_resid.s`` → ``L{s-1}`` (the paper's x ticks)."""
    if site.startswith("lm_resid."):
        s = int(site.split(".")[1])
        return "Embed" if s == 0 else f"L{s - 1}"
    return site


def layer_curves(result: LabelledArray, *, region: str | None = None, metrics: Sequence[str] | None = None,
                 labels: dict[str, str] | None = None, title: str = "") -> go.Figure:
    """Mean ± 1 std over pairs of each metric across sites (the paper's Figs 3, 6, 7, 9).

    ``result`` has axes ``(metric, site, region, pair)`` (a sweep) or ``(metric, site, pair)``.
    """
    arr = result
    if "region" in arr.axes:
        region = region if region is not None else arr.coords["region"][0]
        arr = arr.sel(region=region)
    arr = arr.transpose("metric", "site", "pair")
    sites = [_slot_label(str(s)) for s in arr.coords["site"]]
    fig = go.Figure()
    for k, metric in enumerate(arr.coords["metric"]):
        if metrics is not None and metric not in metrics:
            continue
        values = np.asarray(arr.values[k], dtype=float)
        mean, std = values.mean(-1), values.std(-1)
        color = PALETTE[k % len(PALETTE)]
        name = (labels or {}).get(metric, metric)
        fig.add_trace(go.Scatter(x=sites + sites[::-1], y=list(mean + std) + list((mean - std)[::-1]),
                                 fill="toself", fillcolor=color, opacity=0.15, line={"width": 0},
                                 hoverinfo="skip", showlegend=False, legendgroup=name))
        fig.add_trace(go.Scatter(x=sites, y=mean, mode="lines+markers", name=name, line={"color": color},
                                 legendgroup=name, error_y=None))
    fig.update_layout(title=title or (f"patching {region}" if region else ""), xaxis_title="residual slot",
                      yaxis_title="probability (4 spelling variants summed)", yaxis_rangemode="tozero",
                      template="plotly_white", hovermode="x unified")
    return fig


def strip_maps(maps: LabelledArray, *, title: str = "") -> go.Figure:
    """One heat map per class over the cell grid, colour range fixed to [0, 1] (the paper's strip maps)."""
    maps = maps.transpose("class", "row", "col")
    classes = [str(c) for c in maps.coords["class"]]
    fig = make_subplots(rows=1, cols=len(classes), subplot_titles=classes, horizontal_spacing=0.04)
    for k in range(len(classes)):
        fig.add_trace(go.Heatmap(z=np.asarray(maps.values[k]), zmin=0.0, zmax=1.0, colorscale="Viridis",
                                 showscale=k == len(classes) - 1,
                                 hovertemplate="row %{y}, col %{x}: %{z:.3f}<extra></extra>"), row=1, col=k + 1)
        fig.update_yaxes(autorange="reversed", scaleanchor=f"x{k + 1 if k else ''}", row=1, col=k + 1)
    fig.update_layout(title=title, template="plotly_white", height=340, width=300 * len(classes) + 80)
    return fig


def region_heatmap(result: LabelledArray, *, metric: str, title: str = "") -> go.Figure:
    """Mean of one metric over pairs, sites × regions (a sweep at a glance)."""
    arr = result.sel(metric=metric).transpose("region", "site", "pair")
    z = np.asarray(arr.values, dtype=float).mean(-1)
    fig = go.Figure(go.Heatmap(z=z, x=[_slot_label(str(s)) for s in arr.coords["site"]],
                               y=[str(r) for r in arr.coords["region"]], zmin=0.0, zmax=1.0, colorscale="Viridis",
                               hovertemplate="%{y} @ %{x}: %{z:.3f}<extra></extra>"))
    fig.update_layout(title=title or f"{metric} after patching", template="plotly_white")
    return fig
