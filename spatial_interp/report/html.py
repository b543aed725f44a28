"""A single self-contained HTML file from plotly figures and short text sections."""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio

from ..results import atomic_write

REPORT_TEMPLATE = "plotly_white"
"""The report's plotly template. It is written into each figure's JSON here, once per report: set on
every figure through plotly's validators it cost about 20 ms a figure (40 % of the report's time), and
figures shown in a notebook keep the user's own default template."""


@dataclass
class Section:
    """A heading, text (paragraphs separated by a blank line), a small table (rows of cells), and figures."""

    title: str
    text: str = ""
    figures: list[go.Figure] = field(default_factory=list)
    table: list[list[str]] | None = None


def _table(rows: list[list[str]]) -> str:
    head, *body = rows
    cells = "".join(f"<th>{html.escape(str(c))}</th>" for c in head)
    lines = ["<table><tr>" + cells + "</tr>"]
    for row in body:
        lines.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>")
    return "".join(lines) + "</table>"


def write_report(sections: Sequence[Section], path: str | os.PathLike, *, title: str = "spatial_interp report") -> Path:
    """Write ``sections`` to one HTML file with plotly.js embedded once (opens offline)."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:system-ui,sans-serif;max-width:860px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
             "</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    first = True
    template = pio.templates[REPORT_TEMPLATE].to_plotly_json()
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        for paragraph in section.text.split("\n\n") if section.text else ():
            parts.append(f"<p>{html.escape(paragraph)}</p>")
        if section.table:
            parts.append(_table(section.table))
        for fig in section.figures:
            spec = fig.to_plotly_json()
            spec["layout"] = {**spec.get("layout", {}), "template": template}
            parts.append(pio.to_html(spec, validate=False, full_html=False,
                                     include_plotlyjs="inline" if first else False))
            first = False
    parts.append("</body></html>")
    document = "\n".join(parts)
    return atomic_write(path, lambda f: f.write(document.encode("utf-8")))
