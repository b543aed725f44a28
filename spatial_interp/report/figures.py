"""Plotly figures for the labelled arrays the primitives return, each readable without the code: axis
and colour-bar titles, a caption line with n and what the band is, at most 800 px wide.

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
from PIL import Image
from plotly.subplots import make_subplots

from ..results import LabelledArray
from ..stats import bootstrap_mean_ci

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2")
MAX_WIDTH = 800
PROBABILITY_AXIS = "probability (spelling variants, distinct tokens)"


def _slot_label(site: str) -> str:
    """``lm_resid.0`` → ``Embed``, ``lm_resid.s`` → ``L{s-1}`` (the paper's x ticks)."""
    if site.startswith("lm_resid."):
        s = int(site.split(".")[1].split(":")[0])
        return "Embed" if s == 0 else f"L{s - 1}"
    return site


def _titled(title: str, caption: str) -> dict:
    text = f"{title}<br><sup>{caption}</sup>" if caption else title
    return {"text": text, "x": 0.0, "xanchor": "left", "font": {"size": 15}}


def layer_curves(result: LabelledArray, *, region: str | None = None, metrics: Sequence[str] | None = None,
                 labels: dict[str, str] | None = None, title: str = "", y_title: str = PROBABILITY_AXIS,
                 seed: int = 0) -> go.Figure:
    """Mean over pairs of each metric across residual slots, with its 95 % bootstrap interval clipped to
    [0, 1] (the paper's Figs 3, 6, 7, 9, which draw ± 1 std). ``labels`` renames metrics in the legend.

    ``result`` has axes ``(metric, site, region, pair)`` (a sweep) or ``(metric, site, pair)``.
    """
    arr = result
    if "region" in arr.axes:
        region = region if region is not None else arr.coords["region"][0]
        arr = arr.sel(region=region)
    arr = arr.transpose("metric", "site", "pair")
    n = len(arr.coords["pair"])
    sites = [_slot_label(str(s)) for s in arr.coords["site"]]
    fig = go.Figure()
    for k, metric in enumerate(arr.coords["metric"]):
        if metrics is not None and metric not in metrics:
            continue
        values = np.asarray(arr.values[k], dtype=float)
        if n == 0:
            continue
        low, mean, high = bootstrap_mean_ci(values, seed=seed)
        color = PALETTE[k % len(PALETTE)]
        name = (labels or {}).get(metric, str(metric))
        fig.add_trace(go.Scatter(x=sites + sites[::-1], y=list(high) + list(low[::-1]),
                                 fill="toself", fillcolor=color, opacity=0.15, line={"width": 0},
                                 hoverinfo="skip", showlegend=False, legendgroup=name))
        fig.add_trace(go.Scatter(x=sites, y=mean, mode="lines+markers", name=name, line={"color": color},
                                 legendgroup=name,
                                 customdata=np.stack([low, high], -1),
                                 hovertemplate=name + " %{y:.3f} [%{customdata[0]:.3f}, %{customdata[1]:.3f}]"
                                 "<extra></extra>"))
    caption = f"n = {n} pairs; line: mean, band: 95 % bootstrap interval (clipped to [0, 1])"
    fig.update_layout(title=_titled(title or (f"{region} patched" if region else "patched"), caption),
                      xaxis_title="residual slot patched (Embed = input of LM layer 0)", yaxis_title=y_title,
                      yaxis_range=[0, 1.02], hovermode="x unified", width=MAX_WIDTH,
                      height=400, legend_title_text="answer", margin={"t": 80})
    return fig


def _thumbnail(image: Image.Image, size: int = 160) -> np.ndarray:
    thumb = image.convert("RGB").copy()
    thumb.thumbnail((size, size))
    return np.asarray(thumb)


def strip_maps(maps: LabelledArray, *, image: Image.Image | None = None, title: str = "", caption: str = "",
               colorbar_title: str = "P(class)") -> go.Figure:
    """One heat map per class over the cell grid, colour range fixed to [0, 1] (the paper's strip maps);
    with ``image``, a thumbnail of a stimulus first so cells can be read against the picture."""
    maps = maps.transpose("class", "row", "col")
    classes = [str(c) for c in maps.coords["class"]]
    n_rows, n_cols = maps.values.shape[1:]
    panels = (["stimulus"] if image is not None else []) + [f"P({c})" for c in classes]
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=panels, horizontal_spacing=0.03)
    offset = 0
    if image is not None:
        thumb = Image.fromarray(_thumbnail(image)).resize((n_cols * 12, n_rows * 12))
        fig.add_trace(go.Image(z=np.asarray(thumb), dx=1 / 12, dy=1 / 12, x0=-0.5, y0=-0.5,
                               hoverinfo="skip"), row=1, col=1)
        offset = 1
    for k in range(len(classes)):
        fig.add_trace(go.Heatmap(z=np.asarray(maps.values[k]), zmin=0.0, zmax=1.0, colorscale="Viridis",
                                 showscale=k == len(classes) - 1,
                                 colorbar={"title": {"text": colorbar_title}, "thickness": 12},
                                 hovertemplate="row %{y}, col %{x}: %{z:.3f}<extra></extra>"),
                      row=1, col=k + 1 + offset)
    # All panels' axes in one layout update (one update per subplot costs plotly a walk of the grid each).
    axes = {}
    for col in range(1, len(panels) + 1):
        suffix = str(col) if col > 1 else ""
        axes[f"yaxis{suffix}"] = {"autorange": "reversed", "scaleanchor": f"x{suffix}", "showticklabels": col == 1,
                                  "title": {"text": "cell row" if col == 1 else None}}
        axes[f"xaxis{suffix}"] = {"title": {"text": "cell column"}}
    fig.update_layout(axes, title=_titled(title, caption), height=300, width=MAX_WIDTH,
                      margin={"t": 90, "l": 50, "r": 20})
    return fig


def region_heatmap(result: LabelledArray, *, metric: str, title: str = "", caption: str = "") -> go.Figure:
    """Mean of one metric over pairs, regions × residual slots (a layer × region sweep at a glance)."""
    arr = result.sel(metric=metric).transpose("region", "site", "pair")
    z = np.asarray(arr.values, dtype=float).mean(-1)
    n = len(arr.coords["pair"])
    fig = go.Figure(go.Heatmap(z=z, x=[_slot_label(str(s)) for s in arr.coords["site"]],
                               y=[str(r) for r in arr.coords["region"]], zmin=0.0, zmax=1.0, colorscale="Viridis",
                               colorbar={"title": {"text": f"mean {metric}"}, "thickness": 12},
                               hovertemplate="%{y} @ %{x}: %{z:.3f}<extra></extra>"))
    fig.update_layout(title=_titled(title or f"{metric} after patching", caption or f"n = {n} pairs; mean over pairs"),
                      xaxis_title="residual slot patched", yaxis_title="region swapped",
                      width=MAX_WIDTH, height=120 + 60 * len(arr.coords["region"]), margin={"t": 80})
    return fig


def alpha_curves(curves: dict[str, Sequence[float]], alphas: Sequence[float], *, baseline: float, title: str = "",
                 caption: str = "", y_title: str = "accuracy") -> go.Figure:
    """Accuracy against the amplification strength α, one line per direction set, the unsteered level dashed."""
    fig = go.Figure()
    for k, (name, values) in enumerate(curves.items()):
        fig.add_trace(go.Scatter(x=list(alphas), y=list(values), mode="lines+markers", name=name,
                                 line={"color": PALETTE[k % len(PALETTE)]}))
    fig.add_hline(y=baseline, line_dash="dash", line_color="#555", annotation_text=f"unsteered {baseline:.3f}",
                  annotation_position="bottom right")
    fig.update_layout(title=_titled(title, caption), xaxis_title="α (multiple of the probe projection added)",
                      yaxis_title=y_title, yaxis_range=[0, 1.02], width=MAX_WIDTH,
                      height=380, legend_title_text="direction", margin={"t": 80})
    return fig
