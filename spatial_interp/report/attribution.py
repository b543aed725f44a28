"""Report section for attribution patching: estimated effects per cell (or region) × site beside exact ones.

Example:
    >>> import numpy as np
    >>> from spatial_interp.results import LabelledArray
    >>> from spatial_interp.report.attribution import attribution_section
    >>> axes = ("metric", "site", "region", "pair")
    >>> coords = {"metric": ["logP(cf answer)-logP(clean answer)"], "site": ["vision_out", "lm_resid.0"],
    ...           "region": ["object", "strip"]}
    >>> est = LabelledArray(np.arange(8.0).reshape(1, 2, 2, 2), axes, coords)
    >>> est.extras["exact"] = LabelledArray(np.arange(8.0).reshape(1, 2, 2, 2) * 2, axes, coords)
    >>> section = attribution_section(est)
    >>> section.title, len(section.figures)
    ('Attribution patching', 2)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..results import LabelledArray
from .figures import _slot_label
from .html import Section


def _fmt(x: float) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.2f}"


def _estimator(result: LabelledArray) -> str:
    """``"AtP"`` (or its variants) or ``"IG, k steps (path path)"`` from the result's attrs (AtP when they say
    nothing)."""
    method = result.attrs.get("method", "atp")
    if method == "atp":
        return "AtP"
    if method == "atp-attn":
        return "AtP, first attention layer exact"
    if method == "atp-qk":
        return "AtP with the QK fix"
    return f"IG, {result.attrs.get('steps')} steps ({result.attrs.get('path')} path)"


def _maps(result: LabelledArray) -> tuple[np.ndarray, np.ndarray | None, list[str], list[str]]:
    """Mean over pairs (region × site) of the estimate and of the exact effect (NaN where unchecked)."""
    est = result.transpose("metric", "site", "region", "pair")
    z = np.asarray(est.values[0], dtype=float).mean(-1).T
    exact = result.extras.get("exact")
    zx = None
    if exact is not None:
        zx = np.asarray(exact.transpose("metric", "site", "region", "pair").values[0], dtype=float).mean(-1).T
    return z, zx, [_slot_label(str(s)) for s in est.coords["site"]], [str(r) for r in est.coords["region"]]


def attribution_heatmaps(result: LabelledArray, *, title: str = "") -> go.Figure:
    """Estimated (left) and exact (right, only at checked points) mean effects, region/cell × site."""
    z, zx, sites, regions = _maps(result)
    metric = result.coords["metric"][0]
    panels = [(f"estimated ({_estimator(result)})", z)]
    panels += [("exact patching (checked points)", zx)] if zx is not None else []
    both = np.concatenate([p[1][np.isfinite(p[1])] for p in panels])
    bound = float(np.abs(both).max()) if both.size else 1.0
    bound = bound if bound > 0 else 1.0
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p[0] for p in panels], horizontal_spacing=0.08)
    for k, (_, values) in enumerate(panels):
        fig.add_trace(go.Heatmap(z=values, x=sites, y=regions, zmin=-bound, zmax=bound, colorscale="RdBu",
                                 reversescale=True, showscale=k == len(panels) - 1,
                                 colorbar={"title": {"text": f"Δ {metric}<br>(mean over pairs)"}},
                                 hovertemplate="%{y} @ %{x}: %{z:.4f}<extra></extra>"), row=1, col=k + 1)
        fig.update_xaxes(title_text="site", row=1, col=k + 1)
        fig.update_yaxes(title_text="cell" if "grid" in result.attrs else "region", autorange="reversed",
                         row=1, col=k + 1)
    fig.update_layout(title=title or "patching effect: attribution estimate vs exact",
                      height=max(360, 8 * len(regions) + 160))
    return fig


def agreement_scatter(result: LabelledArray, *, title: str = "") -> go.Figure:
    """Estimated against exact effect at every checked (site, region, pair) entry, with the y = x line."""
    est = np.asarray(result.transpose("metric", "site", "region", "pair").values[0], dtype=float)
    exact = np.asarray(result.extras["exact"].transpose("metric", "site", "region", "pair").values[0], dtype=float)
    mask = np.isfinite(exact)
    x, y = exact[mask], est[mask]
    metric = result.coords["metric"][0]
    lo, hi = (float(min(x.min(), y.min())), float(max(x.max(), y.max()))) if x.size else (0.0, 1.0)
    fig = go.Figure([go.Scatter(x=x, y=y, mode="markers", marker={"size": 4, "opacity": 0.6}, name="entries"),
                     go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line={"dash": "dot", "color": "gray"},
                                name="y = x")])
    fig.update_layout(title=title or "attribution estimate vs exact patching",
                      xaxis_title=f"exact Δ {metric}", yaxis_title=f"estimated Δ {metric}")
    return fig


def _sentence(stats: dict[str, Any], what: str) -> str:
    return (f"{what}: over {stats['n_points']} checked (site, region) points × {stats['n_pairs']} pairs, Spearman r "
            f"{_fmt(stats['spearman'])} and Pearson r {_fmt(stats['pearson'])} between estimated and exact "
            f"effects (on pair means: Spearman {_fmt(stats['spearman_mean'])}); top-{stats['top_k']} recall "
            f"{_fmt(stats['top_k_recall'])}; largest |exact effect| {stats['max_abs_exact']:.3g}, largest "
            f"|estimate| {stats['max_abs_estimate']:.3g}.")


def _active_sentence(active: dict[str, Any]) -> str:
    inactive = ", ".join(active["inactive_sites"])
    if not active["sites"]:
        return f"Every checked exact effect is ~0 ({inactive}): there is nothing to rank."
    weakest = ("" if active["weakest_site"] is None else
               f"; weakest {active['weakest_site']} ({_fmt(active['weakest_spearman'])})")
    share = f"{100 * active['share']:g}%"
    return (f"At {inactive} every checked exact effect is below {active['floor']:.3g} ({share} of the largest), "
            f"so nothing there can be ranked; over the {len(active['sites'])} sites where patching moves the metric "
            f"({', '.join(active['sites'])}), Spearman r is {_fmt(active['spearman'])} and Pearson r "
            f"{_fmt(active['pearson'])} ({active['n_entries']} entries{weakest}).")


def attribution_section(result: LabelledArray, regions: LabelledArray | None = None) -> Section:
    """Heat maps (estimate next to exact at the checked points), a scatter, and the agreement in words.

    ``result`` is an :func:`~spatial_interp.interventions.attribute` result (cells or regions);
    ``regions`` optionally a second, region-level one whose agreement goes in the table.
    """
    metric = result.coords["metric"][0]
    n_pairs, n_sites, n_regions = (len(result.coords[a]) for a in ("pair", "site", "region"))
    unit = "cells" if "grid" in result.attrs else "regions"
    method = result.attrs.get("method", "atp")
    if method == "atp":
        how = "from one forward-backward and one counterfactual forward per pair"
    elif method in ("atp-attn", "atp-qk"):
        how = ("from one forward-backward, one counterfactual forward and one edited forward per pair, with "
               + ("the attention layer that first reads the patched rows exact (queries, keys, values, softmax)"
                  if method == "atp-attn" else "the query and key paths of the first attention layer exact"))
    else:
        how = (f"by integrated gradients ({result.attrs.get('steps')} midpoints of the path from clean to patched "
               f"activations, {result.attrs.get('path')} path)")
    parts = [f"Attribution patching estimates Δ {metric} (patched minus clean) for {n_regions} {unit} × "
             f"{n_sites} sites on {n_pairs} pairs {how}."]
    figures = [attribution_heatmaps(result)]
    rows = [["level", "checked points", "pairs", "Spearman r", "Pearson r", "Spearman r (pair means)",
             "top-k recall", "estimator"]]
    for what, res in (("cells" if unit == "cells" else "regions", result), ("regions", regions)):
        stats = None if res is None else res.attrs.get("agreement")
        if stats is None:
            continue
        parts.append(_sentence(stats, f"Against exact patching at the {what} level"))
        weakest = min(((s, v["spearman"]) for s, v in stats["by_site"].items() if np.isfinite(v["spearman"])),
                      key=lambda t: t[1], default=None)
        if weakest is not None:
            parts.append(f"The weakest site is {weakest[0]} (Spearman r {_fmt(weakest[1])}).")
        active = stats.get("active")
        if active and active["inactive_sites"]:
            parts.append(_active_sentence(active))
        rows.append([what, str(stats["n_points"]), str(stats["n_pairs"]), _fmt(stats["spearman"]),
                     _fmt(stats["pearson"]), _fmt(stats["spearman_mean"]),
                     f"{_fmt(stats['top_k_recall'])} (k={stats['top_k']})", _estimator(res)])
    if "exact" in result.extras:
        figures.append(agreement_scatter(result))
    else:
        parts.append("No point was checked against exact patching (run attribute with check=k).")
    return Section("Attribution patching", " ".join(parts), figures, rows if len(rows) > 1 else None)


__all__ = ["agreement_scatter", "attribution_heatmaps", "attribution_section"]
