"""Drawing entities on a white canvas, and the layouts that place them.

Layouts give half-open pixel boxes; :class:`Renderer` draws :class:`~spatial_interp.data.items.Entity`
objects into them. An entity with a ``shape`` is a shape sprite in its ``color``; an entity with only a
``color`` is a solid square filling its box (the Squares task); an entity with neither is an OpenMoji
object named ``name``.

Layouts:

* :func:`three_slot_boxes` - the three-slot horizontal / vertical layout of spec §2.2 (optionally shifted
  along its axis);
* :func:`grid_boxes` - the centred ``k x k`` grids of App. C.6;
* :func:`random_layout` - seeded random, non-overlapping placements for generalisation and training
  data (token-aligned, or with sub-cell pixel offsets).

Example:
    >>> from spatial_interp.data.canvas import canvas_for
    >>> from spatial_interp.data.items import Entity
    >>> g = canvas_for("qwen2_vl")
    >>> boxes = three_slot_boxes(g, "horizontal")
    >>> img = Renderer().render(g.canvas_px, [Entity("red", 0, boxes[0], color="red")])
    >>> img.getpixel((28, 140)), img.getpixel((27, 140)), img.getpixel((84, 196))
    ((255, 0, 0), (255, 255, 255), (255, 255, 255))
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from .canvas import Box, CanvasGeometry, _check_orientation
from .items import Entity
from .objects import object_sprite
from .palettes import color_rgb
from .shapes import shape_sprite

WHITE = (255, 255, 255)


class Renderer:
    """Draws entities; keeps a per-instance cache of sprites (shape/object at a given size)."""

    def __init__(self, font_path: Path | None = None) -> None:
        self._font_path = font_path
        self._cache: dict[tuple[str, str, int], Image.Image] = {}

    def sprite(self, entity: Entity, size: int) -> Image.Image | None:
        """The RGBA sprite of an entity at ``size`` px, or None for a solid colour square."""
        if entity.shape is not None:
            if entity.color is None:
                raise ValueError(f"shape entity {entity.name!r} needs a colour")
            key = ("shape", f"{entity.shape}:{entity.color}", size)
            if key not in self._cache:
                self._cache[key] = shape_sprite(entity.shape, size, color_rgb(entity.color))
            return self._cache[key]
        if entity.color is not None:
            return None
        key = ("object", entity.name, size)
        if key not in self._cache:
            self._cache[key] = object_sprite(entity.name, size, self._font_path)
        return self._cache[key]

    def draw(self, canvas: Image.Image, entity: Entity) -> None:
        """Draw one entity into its box on an RGB canvas (in place)."""
        x0, y0, x1, y1 = entity.box
        w, h = x1 - x0, y1 - y0
        if w <= 0 or h <= 0:
            raise ValueError(f"empty box {entity.box} for entity {entity.name!r}")
        sprite = self.sprite(entity, w)
        if sprite is None:
            ImageDraw.Draw(canvas).rectangle((x0, y0, x1 - 1, y1 - 1), fill=color_rgb(entity.color or ""))
            return
        if w != h:
            raise ValueError(f"sprite entities need square boxes, got {entity.box}")
        canvas.paste(sprite, (x0, y0), sprite)

    def render(self, size: int | tuple[int, int], entities: Sequence[Entity]) -> Image.Image:
        """A white RGB canvas of ``size`` px with the entities drawn in order."""
        dims = (size, size) if isinstance(size, int) else tuple(size)
        canvas = Image.new("RGB", dims, WHITE)
        for entity in entities:
            self.draw(canvas, entity)
        return canvas


def blank_canvas(geometry: CanvasGeometry) -> Image.Image:
    """The all-white canvas of a geometry (the "empty" ablation reference of §7.1)."""
    return Image.new("RGB", (geometry.canvas_px, geometry.canvas_px), WHITE)


# --------------------------------------------------------------------------- layouts


def three_slot_boxes(geometry: CanvasGeometry, orientation: str, shift: int = 0) -> list[Box]:
    """Pixel boxes of slots 0, 1, 2 (left/middle/right or top/middle/bottom), spec §2.2.

    ``shift`` moves the whole triple that many cells along the axis (one of ``geometry.slot_shifts()``):
    the same ordering at another absolute position.
    """
    return [geometry.slot_box(i, orientation, shift) for i in range(3)]


def grid_boxes(geometry: CanvasGeometry, k: int) -> list[list[Box]]:
    """``boxes[row][col]`` of a centred ``k x k`` grid of entity squares with the geometry's spacing."""
    s, sp, n = geometry.entity_tokens, geometry.spacing_tokens, geometry.n_tokens
    extent = k * s + (k - 1) * sp
    if k < 1 or extent > n:
        raise ValueError(f"a {k}x{k} grid of {s}-token entities with spacing {sp} does not fit in {n} tokens")
    start = (n - extent) // 2
    return [[geometry.cell_block_box((start + r * (s + sp), start + c * (s + sp)), s) for c in range(k)]
            for r in range(k)]


def _overlaps_1d(a0: int, a1: int, b0: int, b1: int, gap: int) -> bool:
    return a0 < b1 + gap and b0 < a1 + gap


def random_layout(geometry: CanvasGeometry, n_entities: int, rng: random.Random, orientation: str, *,
                  sub_cell: bool = False, entity_px: int | None = None, min_gap_px: int = 0,
                  max_tries: int = 1000) -> list[Box]:
    """Random boxes for ``n_entities`` square entities, sorted along the orientation's axis.

    Entities are disjoint along the queried axis (so "left of" / "above" is unambiguous) and never
    overlap. Without ``sub_cell`` boxes are aligned to the token grid; with it, positions are any pixel.
    ``min_gap_px`` is the minimum distance between neighbours along the axis.

    >>> import random
    >>> from spatial_interp.data.canvas import canvas_for
    >>> boxes = random_layout(canvas_for("qwen2_vl"), 3, random.Random(0), "horizontal")
    >>> [b[0] < c[0] for b, c in zip(boxes, boxes[1:])]
    [True, True]
    """
    _check_orientation(orientation)
    size = entity_px if entity_px is not None else geometry.entity_px
    canvas, step = geometry.canvas_px, (1 if sub_cell else geometry.token_px)
    if size > canvas:
        raise ValueError("entity larger than the canvas")
    max_pos = (canvas - size) // step
    for _ in range(max_tries):
        along = sorted(rng.randint(0, max_pos) * step for _ in range(n_entities))
        across = [rng.randint(0, max_pos) * step for _ in range(n_entities)]
        if all(not _overlaps_1d(a, a + size, b, b + size, min_gap_px) for a, b in zip(along, along[1:], strict=False)):
            if orientation == "horizontal":
                return [(x, y, x + size, y + size) for x, y in zip(along, across, strict=True)]
            return [(x, y, x + size, y + size) for y, x in zip(along, across, strict=True)]
    raise ValueError(f"could not place {n_entities} entities of {size} px on a {canvas} px canvas "
                     f"in {max_tries} tries")
