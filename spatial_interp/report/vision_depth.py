"""Report section for :func:`spatial_interp.vision_depth.vision_depth`: every sentence built from its numbers.

Example:
    >>> from spatial_interp.report.vision_depth import example_result, vision_depth_section
    >>> section = vision_depth_section(example_result())
    >>> section.title, len(section.figures), section.table[0][:3]
    ('Inside the vision encoder', 4, ['site', 'entity probe', 'shuffled'])
    >>> "first at vision_block.1" in section.text
    True
"""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .html import Section

WIDTH = 800


def _f(x: float | None) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.2f}"


def _titled(title: str, caption: str) -> dict:
    return {"text": f"{title}<br><sup>{caption}</sup>", "x": 0.0, "xanchor": "left", "font": {"size": 15}}


def probe_figure(result: dict[str, Any]) -> go.Figure:
    """Held-out probe accuracy through depth, beside its shuffled control, chance and position-only level."""
    p, sites = result["probes"], result["sites"]
    fig = go.Figure()
    for name, colour in (("objects", "#1f77b4"), ("background", "#d62728")):
        fig.add_trace(go.Scatter(x=sites, y=p[name]["accuracy"], mode="lines+markers", name=f"{name} probe",
                                 line={"color": colour}))
        fig.add_trace(go.Scatter(x=sites, y=p[name]["shuffled_labels"], mode="lines", name=f"{name}, shuffled labels",
                                 line={"color": colour, "dash": "dot"}))
    if p.get("position_only"):
        fig.add_trace(go.Scatter(x=sites, y=p["position_only"], mode="lines", name="blank canvas (position only)",
                                 line={"color": "#7f7f7f", "dash": "dash"}))
    chance = p["objects"]["chance"]
    fig.add_hline(y=chance, line={"color": "#7f7f7f", "width": 1}, annotation_text=f"chance {chance:.2f}")
    fig.update_layout(title=_titled("Slot probes through the vision tower",
                                    f"held-out accuracy, {p['objects']['n_test_items']} test of {p['n_items']} images"),
                      xaxis_title="vision site (block output; vision_out = spliced tokens)",
                      yaxis_title="held-out accuracy (3 classes)", yaxis_range=[0, 1.02],
                      width=WIDTH, height=420)
    return fig


def swap_figure(result: dict[str, Any]) -> go.Figure:
    """Share of pairs answering the counterfactual word after each swap, by the site it is made at."""
    s, sites = result["swaps"], result["sites"]
    fig = go.Figure()
    for region, colour in (("object", "#1f77b4"), ("strip", "#2ca02c"), ("background", "#d62728")):
        if region in s:
            fig.add_trace(go.Scatter(x=sites, y=s[region]["cf answer"], mode="lines+markers",
                                     name=f"{region} swap", line={"color": colour}))
    flip = result["config"]["flip"]
    fig.add_hline(y=flip, line={"color": "#7f7f7f", "width": 1, "dash": "dash"}, annotation_text=f"flip {flip:.2f}")
    fig.update_layout(title=_titled("Criss-cross swaps inside the tower",
                                    f"share of {s['n_pairs']} pairs answering the counterfactual word; the swap "
                                    "continues through the blocks above"),
                      xaxis_title="vision site the swap is made at", yaxis_title="share answering counterfactual",
                      yaxis_range=[0, 1.02], width=WIDTH, height=420)
    return fig


def flow_figure(result: dict[str, Any]) -> go.Figure:
    """Mean attention mass, block × (from-region → to-region), averaged over heads and images."""
    f = result["flow"]
    groups = f["groups"]
    mass = np.asarray(f["mass"], dtype=float)  # (block, from, to)
    columns = [f"{a} → {b}" for a in groups for b in groups]
    z = mass.reshape(mass.shape[0], -1)
    fig = go.Figure(go.Heatmap(z=z, x=columns, y=[f"block {b}" for b in f["blocks"]], zmin=0, zmax=1,
                               colorscale="Viridis", colorbar={"title": {"text": "attention mass<br>per query"}},
                               hovertemplate="%{y}, %{x}: %{z:.3f}<extra></extra>"))
    fig.update_layout(title=_titled("Attention flow between regions",
                                    f"mean over {f['n_items']} images and all heads; rows of one 'from' sum to 1"),
                      xaxis_title="from-region (queries) → to-region (keys)", yaxis_title="vision block",
                      width=WIDTH, height=320 + 30 * len(f["blocks"]))
    return fig


def map_figure(result: dict[str, Any]) -> go.Figure:
    """The entity probe's mean probability of the first class at every cell, one panel per site."""
    p, sites = result["probes"], result["sites"]
    maps = np.asarray(p["objects"]["maps"], dtype=float)  # (site, class, row, col)
    fig = make_subplots(rows=1, cols=len(sites), subplot_titles=sites, horizontal_spacing=0.03)
    for k in range(len(sites)):
        fig.add_trace(go.Heatmap(z=maps[k, 0], zmin=0, zmax=1, colorscale="Viridis", showscale=k == len(sites) - 1,
                                 colorbar={"title": {"text": f"P({p['classes'][0]})"}},
                                 hovertemplate="row %{y}, col %{x}: %{z:.3f}<extra></extra>"), row=1, col=k + 1)
        fig.update_yaxes(autorange="reversed", showticklabels=k == 0, title_text="cell row" if k == 0 else None,
                         row=1, col=k + 1)
        fig.update_xaxes(title_text="cell col", row=1, col=k + 1)
    fig.update_layout(title=_titled(f"Entity probe applied to every cell: P({p['classes'][0]})",
                                    f"mean over {p['objects']['n_test_items']} test images; every block mapped back "
                                    "to cells"),
                      width=WIDTH, height=330)
    return fig


def _first_sentence(result: dict[str, Any]) -> list[str]:
    p, first, cfg = result["probes"], result["first"], result["config"]
    sites = result["sites"]
    out = []
    for name, key in (("entity", "object_probe"), ("background", "background_probe")):
        table = p["objects" if name == "entity" else "background"]
        at = first[key]
        if at is None:
            best = int(np.argmax(table["accuracy"]))
            out.append(f"The {name} probe is never above chance and the blank-canvas level "
                       f"(best {_f(table['accuracy'][best])} at {sites[best]}, "
                       f"chance {_f(table['chance'])}, margin {cfg['margin']:.2f}).")
        else:
            i = sites.index(at)
            out.append(f"The {name} probe is above chance and the blank-canvas level first at {at}: "
                       f"{_f(table['accuracy'][i])} against chance "
                       f"{_f(table['chance'])} and shuffled labels {_f(table['shuffled_labels'][i])}"
                       + (f" (blank canvas {_f(p['position_only'][i])})" if p.get("position_only") else "") + ".")
    s = result["swaps"]
    if s.get("n_pairs"):
        for region in ("object", "strip", "background"):
            if region not in s:
                continue
            at = first[f"{region}_swap"]
            cf = s[region]["cf answer"]
            if at is None:
                out.append(f"No {region} swap flips the answer (at most {_f(max(cf))} of {s['n_pairs']} pairs; "
                           f"unswapped {_f(s['clean']['cf answer'])}).")
            else:
                out.append(f"The {region} swap first flips the answer at {at} ({_f(cf[sites.index(at)])} of "
                           f"{s['n_pairs']} pairs answer the counterfactual; unswapped {_f(s['clean']['cf answer'])}).")
    else:
        out.append("No criss-cross pair was measured.")
    return out


def _flow_sentence(result: dict[str, Any]) -> list[str]:
    f = result["flow"]
    if f is None:
        return [f"The tower has {result['n_vision_blocks']} blocks, so there is no attention to measure or knock out."]
    groups, mass = f["groups"], np.asarray(f["mass"], dtype=float)
    out = []
    if "objects" in groups:
        o = groups.index("objects")
        blocks = ", ".join(map(str, f["blocks"]))
        parts = [f"{g} queries " + "/".join(_f(v) for v in mass[:, i, o]) for i, g in enumerate(groups)]
        uniform = f.get("row_share", {}).get("objects")
        out.append(f"Attention mass on the object keys in blocks {blocks} (mean over {f['n_items']} image(s) and every "
                   f"head): " + "; ".join(parts)
                   + (f" (uniform attention would give {_f(uniform)}, the objects' share of the rows)."
                      if uniform is not None else "."))
    out.append(f"The recomputed softmax · v matches the model's kernel output to {f['max_deviation']:.1e}.")
    return out


def _knockout_sentences(result: dict[str, Any]) -> list[str]:
    k = result["knockouts"]
    if not k:
        return []
    s = result["swaps"]
    out = []
    for name, entry in k.items():
        if not isinstance(entry, dict):
            continue
        text = (f"With {name} in every block, accuracy is {_f(entry['accuracy'])} "
                f"(clean {_f(entry['clean_accuracy'])}, {k['n_items']} items); the clean vision_out probes read "
                f"{_f(entry['probes']['objects'])} on entities "
                f"(clean {_f(result['probes']['objects']['accuracy'][-1])}) and {_f(entry['probes']['background'])} "
                f"on background (clean {_f(result['probes']['background']['accuracy'][-1])})")
        swap = entry.get("swap_cf")
        if swap:
            text += "; at vision_out " + ", ".join(
                f"the {region} swap flips {_f(v)} of {k['n_pairs']} pairs (unknocked {_f(s[region]['cf answer'][-1])})"
                for region, v in swap.items())
        out.append(text + ".")
    return out


def vision_depth_section(result: dict[str, Any]) -> Section:
    """A :class:`~.html.Section`: summary sentences, a per-site table and four figures (probes, swaps, flow, maps)."""
    sites, p, s = result["sites"], result["probes"], result["swaps"]
    text = " ".join(_first_sentence(result)) + "\n\n" + " ".join(_flow_sentence(result) + _knockout_sentences(result))
    head = ["site", "entity probe", "shuffled", "background probe", "shuffled", "blank canvas"]
    regions = [r for r in ("object", "strip", "background") if r in s]
    head += [f"{r} swap → cf" for r in regions]
    rows = [head]
    for i, site in enumerate(sites):
        row = [site, _f(p["objects"]["accuracy"][i]), _f(p["objects"]["shuffled_labels"][i]),
               _f(p["background"]["accuracy"][i]), _f(p["background"]["shuffled_labels"][i]),
               _f(p["position_only"][i]) if p.get("position_only") else "n/a"]
        row += [_f(s[r]["cf answer"][i]) for r in regions]
        rows.append(row)
    rows.append(["chance", _f(p["objects"]["chance"]), "", _f(p["background"]["chance"]), "", "",
                 *[_f(s["clean"]["cf answer"]) + " (unswapped)" for _ in regions]])
    figures = [probe_figure(result)]
    if s.get("n_pairs"):
        figures.append(swap_figure(result))
    if result["flow"] is not None:
        figures.append(flow_figure(result))
    if p["objects"].get("maps"):
        figures.append(map_figure(result))
    return Section("Inside the vision encoder", text, figures, rows)


def example_result() -> dict[str, Any]:
    """A small hand-made result in :func:`~spatial_interp.vision_depth.vision_depth`'s format (for docs and tests)."""
    sites = ["vision_block.0", "vision_block.1", "vision_out"]
    maps = np.full((3, 3, 4, 4), 1 / 3).tolist()
    return {
        "model": "example", "config": {"margin": 0.1, "flip": 0.5}, "n_vision_blocks": 2, "sites": sites,
        "probes": {"n_items": 24, "classes": ["left", "middle", "right"], "position_only": [0.34, 0.33, 0.33],
                   "objects": {"accuracy": [0.35, 0.9, 0.95], "shuffled_labels": [0.3, 0.31, 0.3], "chance": 1 / 3,
                               "n_test_items": 6, "maps": maps},
                   "background": {"accuracy": [0.33, 0.5, 0.7], "shuffled_labels": [0.33, 0.3, 0.32], "chance": 1 / 3,
                                  "n_test_items": 6}},
        "swaps": {"n_pairs": 4, "clean": {"clean answer": 1.0, "cf answer": 0.0},
                  "object": {"clean answer": [1.0, 0.0, 0.0], "cf answer": [0.0, 1.0, 1.0]},
                  "strip": {"clean answer": [1.0, 0.0, 0.0], "cf answer": [0.0, 1.0, 1.0]},
                  "background": {"clean answer": [1.0, 1.0, 1.0], "cf answer": [0.0, 0.0, 0.0]}},
        "flow": {"blocks": [0, 1], "groups": ["objects", "strips", "rest"], "n_items": 2, "max_deviation": 1e-7,
                 "row_share": {"objects": 0.1, "strips": 0.4, "rest": 0.5},
                 "mass": [[[0.1, 0.4, 0.5]] * 3, [[0.5, 0.2, 0.3]] * 3]},
        "knockouts": {"n_items": 8, "n_pairs": 4,
                      "background ↛ objects": {"accuracy": 1.0, "clean_accuracy": 1.0,
                                               "probes": {"objects": 0.95, "background": 0.33},
                                               "swap_cf": {"strip": 1.0, "background": 0.0}}},
        "first": {"object_probe": "vision_block.1", "background_probe": "vision_block.1",
                  "object_swap": "vision_block.1", "strip_swap": "vision_block.1", "background_swap": None},
    }
