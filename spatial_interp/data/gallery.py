"""A contact sheet of example items (for the README and for eyeballing a geometry).

Example:
    >>> sheet = task_gallery("qwen2_vl")
    >>> sheet.size[0] > 1000
    True
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

from .canvas import CanvasGeometry, canvas_for
from .items import Item
from .tasks import grid_items, objects_items, random_layout_items, shapes_items, squares_items, task_for


def default_examples(model: str | CanvasGeometry = "qwen2_vl") -> list[tuple[str, Item]]:
    """One item per synthetic task and layout: (title, item)."""
    return [
        ("Squares", squares_items(model)[0]),
        ("Shapes", shapes_items(model)[4 * 27 + 2]),
        ("Objects", objects_items(model)[4 * 40 + 1]),
        ("Random layout (sub-cell)", random_layout_items(task_for("objects", model), model, 4, seed=3,
                                                          sub_cell=True)[1]),
        ("3x3 grid (probing)", grid_items(model, 3, n_grids=1)[0]),
    ]


def task_gallery(model: str | CanvasGeometry = "qwen2_vl", examples: Sequence[tuple[str, Item]] | None = None,
                 *, panel_px: int = 280, show_grid: bool = True) -> Image.Image:
    """A row of panels: each item's image (token grid drawn faintly), title, prompt and answer."""
    geom = canvas_for(model)
    examples = list(examples) if examples is not None else default_examples(model)
    font = ImageFont.load_default(size=14)
    small = ImageFont.load_default(size=12)
    text_h, pad = 92, 10
    sheet = Image.new("RGB", (len(examples) * (panel_px + pad) + pad, panel_px + text_h + 2 * pad), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (title, item) in enumerate(examples):
        img = item.image.convert("RGB").resize((panel_px, panel_px), Image.Resampling.LANCZOS)
        if show_grid and item.image.size == (geom.canvas_px, geom.canvas_px):
            g = ImageDraw.Draw(img)
            step = panel_px / geom.n_tokens
            for k in range(1, geom.n_tokens):
                g.line([(k * step, 0), (k * step, panel_px)], fill=(225, 225, 225))
                g.line([(0, k * step), (panel_px, k * step)], fill=(225, 225, 225))
        x = pad + i * (panel_px + pad)
        sheet.paste(img, (x, pad))
        draw.rectangle((x, pad, x + panel_px - 1, pad + panel_px - 1), outline=(160, 160, 160))
        y = pad + panel_px + 6
        draw.text((x, y), title, fill="black", font=font)
        lines = textwrap.wrap(f'"{item.prompt}"', width=40)[:3]
        if item.answer:
            lines.append(f"answer: {item.answer}")
        for j, line in enumerate(lines):
            draw.text((x, y + 20 + 15 * j), line, fill=(70, 70, 70), font=small)
    return sheet
