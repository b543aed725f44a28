"""Reference canvases and the substitution plan of the vision-encoder ordering ablation (spec §7.1).

* ``empty``: the all-white canvas;
* isolated-middle: one entity alone at the **middle slot of the horizontal layout** (the same cells as
  the vertical middle slot).

:func:`ablation_plan` says, for one item, which reference supplies which cells: slot ``k``'s cells take
the middle-slot cells of the isolated-middle reference of that slot's entity (i-th cell <- i-th cell,
row-major); every other cell takes the same cell of the empty reference. ``background_cap=144``
reproduces the paper notebook's ``range(12*12)`` background (exact for Qwen; Gemma/Pixtral keep rows
beyond it); the default ablates the full grid.

Example:
    >>> from spatial_interp.data.tasks import squares_items
    >>> item = squares_items("qwen2_vl")[0]
    >>> plan = ablation_plan(item, "qwen2_vl")
    >>> [s.reference for s in plan.slots], len(plan.background)
    (['red', 'green', 'blue'], 132)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from .canvas import CanvasGeometry, Cell, canvas_for
from .items import Entity, Item
from .stimuli import Renderer, blank_canvas

EMPTY = "empty"


def reference_key(entity: Entity) -> str:
    """Name of an entity's isolated-middle reference: ``"red"``, ``"red square"`` (shapes), ``"apple"``."""
    if entity.shape is not None:
        return f"{entity.color} {entity.shape}"
    return entity.name


def isolated_middle(geometry: str | CanvasGeometry, entity: Entity, renderer: Renderer | None = None) -> Image.Image:
    """The entity drawn alone at the horizontal middle slot of a white canvas."""
    geom = canvas_for(geometry)
    moved = Entity(entity.name, 1, geom.slot_box(1, "horizontal"), entity.color, entity.shape)
    return (renderer or Renderer()).render(geom.canvas_px, [moved])


def reference_images(entities: Sequence[Entity], geometry: str | CanvasGeometry,
                     renderer: Renderer | None = None) -> dict[str, Image.Image]:
    """``{"empty": blank, reference_key(e): isolated_middle(e), ...}`` for the distinct entities given."""
    geom = canvas_for(geometry)
    rend = renderer or Renderer()
    out = {EMPTY: blank_canvas(geom)}
    for ent in entities:
        key = reference_key(ent)
        if key not in out:
            out[key] = isolated_middle(geom, ent, rend)
    return out


@dataclass(frozen=True)
class SlotSource:
    """Clean cells of one slot, and the reference (key + its cells, same order) they are replaced with."""

    slot: int
    cells: tuple[Cell, ...]
    reference: str
    reference_cells: tuple[Cell, ...]


@dataclass(frozen=True)
class AblationPlan:
    """What §7.1's substitution writes for one item: slot sources, and background cells <- ``empty``."""

    item_id: str
    slots: tuple[SlotSource, ...]
    background: tuple[Cell, ...]


def ablation_plan(item: Item, geometry: str | CanvasGeometry, *, background_cap: int | None = None) -> AblationPlan:
    """The ablation substitution plan of an item (see the module docstring)."""
    geom = canvas_for(geometry)
    middle = tuple(geom.slot_cells(1, "horizontal"))
    slots = []
    taken: set[Cell] = set()
    for ent in sorted(item.entities, key=lambda e: e.slot):
        cells = tuple(ent.cells(geom))
        if len(cells) != len(middle):
            raise ValueError(f"item {item.id}: slot {ent.slot} covers {len(cells)} cells, "
                             f"the middle slot {len(middle)}")
        slots.append(SlotSource(ent.slot, cells, reference_key(ent), middle))
        taken.update(cells)
    background = tuple(c for c in geom.all_cells() if c not in taken
                       and (background_cap is None or geom.flat(c) < background_cap))
    return AblationPlan(item.id, tuple(slots), background)
