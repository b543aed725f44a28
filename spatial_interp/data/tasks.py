"""The synthetic tasks (Squares, Shapes, Objects) and their item enumerations (spec §2.6, Table 1).

An :class:`Option` is one kind of entity a task places (a colour, a shape-colour pair, an object).
A :class:`Task` knows its options and how a prompt names the middle entity. Enumerations loop over
every ordered triple of options (``itertools.permutations``, option order) and, inside, over the
directions left, right, above, below.

Example:
    >>> items = shapes_items("gemma3")
    >>> len(items), items[1].prompt, items[1].answer
    (480, 'The color of the shape to the right of the green circle is ', 'blue')
    >>> len(objects_items("pixtral")), len(objects_items("pixtral", drop_bomb=False))
    (840, 1344)
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .canvas import Box, CanvasGeometry, _check_orientation, canvas_for, geometry_name
from .items import Entity, Item, ItemSet
from .palettes import OBJECTS, objects_for, palette_for, shape_pairs
from .prompts import (
    DIRECTIONS,
    objects_prompt,
    orientation_of,
    shapes_prompt,
    squares_prompt,
    target_slot,
)
from .stimuli import Renderer, blank_canvas, grid_boxes, random_layout, three_slot_boxes

PROBE_DUMMY_PROMPT = "The color of the square to the left of the red square is "


@dataclass(frozen=True)
class Option:
    """One placeable entity kind. ``name`` is its answer string (colour, or object name)."""

    name: str
    color: str | None = None
    shape: str | None = None

    def entity(self, slot: int, box: Box) -> Entity:
        return Entity(name=self.name, slot=slot, box=box, color=self.color, shape=self.shape)


@dataclass(frozen=True)
class Task:
    """A synthetic task: its name ("squares" | "shapes" | "objects") and its options."""

    name: str
    options: tuple[Option, ...]

    def prompt(self, direction: str, middle: Option) -> str:
        if self.name == "squares":
            return squares_prompt(direction, middle.color or middle.name)
        if self.name == "shapes":
            return shapes_prompt(direction, middle.color or "", middle.shape or "")
        if self.name == "objects":
            return objects_prompt(direction, middle.name)
        raise ValueError(f"unknown task {self.name!r}")

    def option(self, name: str) -> Option:
        for opt in self.options:
            if opt.name == name:
                return opt
        raise KeyError(f"task {self.name} has no option {name!r}")


def squares_task(colors: Sequence[str]) -> Task:
    return Task("squares", tuple(Option(c.lower(), color=c.lower()) for c in colors))


def shapes_task(pairs: Sequence[tuple[str, str]]) -> Task:
    """Shapes from (shape, colour) pairs; each option answers with its colour."""
    return Task("shapes", tuple(Option(c.lower(), color=c.lower(), shape=s.lower()) for s, c in pairs))


def objects_task(objects: Sequence[str]) -> Task:
    return Task("objects", tuple(Option(o.lower()) for o in objects))


def task_for(task: str, model: str | CanvasGeometry, *, palette: Sequence[str] | None = None,
             objects: Sequence[str] | None = None, drop_bomb: bool = True) -> Task:
    """The paper's option set of a task for a model name (Brown palette / 8 objects for a bare geometry)."""
    name = model if isinstance(model, str) else (geometry_name(model) or "")
    if task == "squares":
        return squares_task(palette or palette_for(name))
    if task == "shapes":
        return shapes_task(shape_pairs(tuple(palette or palette_for(name))))
    if task == "objects":
        chosen = objects if objects is not None else (objects_for(name, drop_bomb_for_pixtral=drop_bomb)
                                                      if name else OBJECTS)
        return objects_task(chosen)
    raise ValueError(f"unknown synthetic task {task!r}; expected squares, shapes or objects")


def _geometry_meta(geometry: CanvasGeometry) -> dict[str, Any]:
    return {"geometry": [geometry.n_tokens, geometry.token_px, geometry.entity_tokens, geometry.spacing_tokens],
            "geometry_name": geometry_name(geometry)}


def three_slot_item(task: Task, slots: Sequence[Option], direction: str, geometry: CanvasGeometry,
                    renderer: Renderer | None = None, item_id: str | None = None, shift: int = 0) -> Item:
    """One item: ``slots`` placed left->right (or top->bottom), queried in ``direction`` about slot 1.

    ``shift`` moves the whole triple that many cells along the axis (``geometry.slot_shifts()``).
    """
    if len(slots) != 3:
        raise ValueError("a three-slot item needs exactly 3 options")
    orientation = orientation_of(direction)
    boxes = three_slot_boxes(geometry, orientation, shift)
    entities = [opt.entity(i, box) for i, (opt, box) in enumerate(zip(slots, boxes, strict=True))]
    image = (renderer or Renderer()).render(geometry.canvas_px, entities)
    names = [o.name for o in slots]
    return Item(id=item_id or f"{task.name}-{'-'.join(names)}-{direction}", image=image,
                prompt=task.prompt(direction, slots[1]), answer=slots[target_slot(direction)].name,
                direction=direction, orientation=orientation, entities=entities, task=task.name,
                metadata={"triple": names, "layout": "three_slot", **({"shift": shift} if shift else {}),
                          **_geometry_meta(geometry)})


def enumerate_items(task: Task, geometry: str | CanvasGeometry, *, directions: Sequence[str] = DIRECTIONS,
                    font_path: Path | None = None) -> ItemSet:
    """Every ordered triple of the task's options x every direction (Table 1 order)."""
    geom = canvas_for(geometry)
    renderer = Renderer(font_path)
    builders: list[Callable[[], Item]] = []
    for triple in itertools.permutations(task.options, 3):
        for direction in directions:
            item_id = f"{task.name}-{len(builders):05d}"
            builders.append(_three_slot_builder(task, triple, direction, geom, renderer, item_id))
    return ItemSet(builders, name=task.name)


def _three_slot_builder(task: Task, triple: Sequence[Option], direction: str, geometry: CanvasGeometry,
                        renderer: Renderer, item_id: str) -> Callable[[], Item]:
    return lambda: three_slot_item(task, triple, direction, geometry, renderer, item_id)


def squares_items(model: str | CanvasGeometry, palette: Sequence[str] | None = None) -> ItemSet:
    """Table 1 Squares: 120 triples x 4 directions = 480 items."""
    return enumerate_items(task_for("squares", model, palette=palette), model)


def shapes_items(model: str | CanvasGeometry, palette: Sequence[str] | None = None) -> ItemSet:
    """Table 1 Shapes: the 6 fixed shape-colour pairs, 480 items."""
    return enumerate_items(task_for("shapes", model, palette=palette), model)


def objects_items(model: str | CanvasGeometry, objects: Sequence[str] | None = None, *,
                  drop_bomb: bool = True, font_path: Path | None = None) -> ItemSet:
    """Table 1 Objects: P(8,3)*4 = 1344 items (Pixtral without bomb: 840; Table 5 keeps all 8)."""
    task = task_for("objects", model, objects=objects, drop_bomb=drop_bomb)
    return enumerate_items(task, model, font_path=font_path)


# --------------------------------------------------------------------------- random layouts and grids


def random_layout_items(task: Task, geometry: str | CanvasGeometry, n_items: int, *, seed: int = 0,
                        sub_cell: bool = False, directions: Sequence[str] = DIRECTIONS,
                        min_gap_px: int = 0, font_path: Path | None = None) -> ItemSet:
    """Seeded items with three entities at random, non-overlapping positions (training / generalisation).

    Entities are sorted along the queried axis: slot 0 is the leftmost (topmost); the prompt asks about
    the middle one, so the answer is slot 0 or slot 2 as in the three-slot layout.

    >>> from spatial_interp.data.tasks import squares_task, random_layout_items
    >>> items = random_layout_items(squares_task(["red", "green", "blue", "gray"]), "qwen2_vl", 8, seed=1)
    >>> len(items), items[0].metadata["layout"]
    (8, 'random')
    """
    geom = canvas_for(geometry)
    rng = random.Random(seed)
    renderer = Renderer(font_path)
    builders: list[Callable[[], Item]] = []
    for i in range(n_items):
        direction = rng.choice(list(directions))
        triple = rng.sample(list(task.options), 3)
        boxes = random_layout(geom, 3, rng, orientation_of(direction), sub_cell=sub_cell, min_gap_px=min_gap_px)
        builders.append(_random_builder(task, triple, boxes, direction, geom, renderer,
                                        f"{task.name}-random-{i:05d}", seed, sub_cell))
    return ItemSet(builders, name=f"{task.name}-random")


def _random_builder(task: Task, triple: Sequence[Option], boxes: Sequence[Box], direction: str,
                    geometry: CanvasGeometry, renderer: Renderer, item_id: str, seed: int,
                    sub_cell: bool) -> Callable[[], Item]:
    def build() -> Item:
        entities = [opt.entity(i, box) for i, (opt, box) in enumerate(zip(triple, boxes, strict=True))]
        return Item(id=item_id, image=renderer.render(geometry.canvas_px, entities),
                    prompt=task.prompt(direction, triple[1]), answer=triple[target_slot(direction)].name,
                    direction=direction, orientation=orientation_of(direction), entities=entities,
                    task=task.name, metadata={"triple": [o.name for o in triple], "layout": "random",
                                              "seed": seed, "sub_cell": sub_cell,
                                              **_geometry_meta(geometry)})
    return build


def grid_items(geometry: str | CanvasGeometry, k: int, *, n_grids: int = 90, seed: int = 0,
               orientation: str = "horizontal", pairs: Sequence[tuple[str, str]] | None = None) -> ItemSet:
    """App. C.6 ``k x k`` grids: each cell a random shape-colour pair (``random.Random(seed)``).

    Entity ``slot`` is the column index (horizontal) or the row index (vertical): the probe's label.
    ``metadata["cells"]`` holds each entity's (grid row, grid column).
    """
    geom = canvas_for(geometry)
    name = geometry if isinstance(geometry, str) else (geometry_name(geometry) or "")
    task = shapes_task(pairs or shape_pairs(palette_for(name)))
    boxes = grid_boxes(geom, k)
    rng = random.Random(seed)
    draws = [[rng.choice(task.options) for _ in range(k * k)] for _ in range(n_grids)]
    renderer = Renderer()
    direction = "left" if orientation == "horizontal" else "above"
    return ItemSet([_grid_builder(task, draw, boxes, k, orientation, direction, geom, renderer,
                                  f"grid{k}-{i:05d}") for i, draw in enumerate(draws)], name=f"grid{k}")


def _grid_builder(task: Task, draw: Sequence[Option], boxes: list[list[Box]], k: int, orientation: str,
                  direction: str, geometry: CanvasGeometry, renderer: Renderer,
                  item_id: str) -> Callable[[], Item]:
    def build() -> Item:
        entities, cells = [], []
        for idx, opt in enumerate(draw):
            r, c = divmod(idx, k)
            entities.append(opt.entity(c if orientation == "horizontal" else r, boxes[r][c]))
            cells.append([r, c])
        return Item(id=item_id, image=renderer.render(geometry.canvas_px, entities), prompt=PROBE_DUMMY_PROMPT,
                    answer="", direction=direction, orientation=orientation, entities=entities, task="grid",
                    metadata={"k": k, "cells": cells, "layout": "grid", **_geometry_meta(geometry)})
    return build


# --------------------------------------------------------------------------- probing (§4)


def probing_items(task: Task, geometry: str | CanvasGeometry, orientation: str, *, shift: int = 0,
                  font_path: Path | None = None) -> ItemSet:
    """§4 probing images: every ordered triple in one orientation (120 squares/shapes, 336 objects).

    The prompt is the fixed dummy text the reference gives the processor; labels are the entity slots.
    ``shift`` renders the same orderings with the whole triple moved that many cells along the axis
    (one of ``canvas_for(geometry).slot_shifts()``; 0 is the paper's layout): slot and absolute position
    no longer coincide across shifts (the absolute-vs-relative control). Shifted items have their own
    ids (``squares-probe+1-00000``) and ``metadata["shift"]``.

    >>> from spatial_interp.data.tasks import probing_items, task_for
    >>> moved = probing_items(task_for("squares", "qwen2_vl"), "qwen2_vl", "horizontal", shift=-1)
    >>> moved[0].id, moved[0].entities[0].flat_ids(canvas_for("qwen2_vl")), moved[0].metadata["shift"]
    ('squares-probe-1-00000', [60, 61, 72, 73], -1)
    """
    geom = canvas_for(geometry)
    direction = "left" if orientation == "horizontal" else "above"
    geom.slot_origin(0, orientation, shift)  # refuses a bad orientation or a shift off the canvas, eagerly
    renderer = Renderer(font_path)
    tag = f"probe{shift:+d}" if shift else "probe"
    builders: list[Callable[[], Item]] = []
    for triple in itertools.permutations(task.options, 3):
        item_id = f"{task.name}-{tag}-{len(builders):05d}"
        builders.append(_probe_builder(task, triple, direction, geom, renderer, item_id, shift))
    return ItemSet(builders, name=f"{task.name}-{tag}-{orientation}")


def _probe_builder(task: Task, triple: Sequence[Option], direction: str, geometry: CanvasGeometry,
                   renderer: Renderer, item_id: str, shift: int = 0) -> Callable[[], Item]:
    def build() -> Item:
        item = three_slot_item(task, triple, direction, geometry, renderer, item_id, shift)
        item.prompt, item.answer = PROBE_DUMMY_PROMPT, ""
        item.metadata["layout"] = "probe"
        item.metadata["shift"] = shift
        return item
    return build


def random_probing_items(task: Task, geometry: str | CanvasGeometry, orientation: str, n_items: int, *,
                         seed: int = 0, sub_cell: bool = False, min_gap_px: int = 0,
                         font_path: Path | None = None) -> ItemSet:
    """§4-style probing images on :func:`random_layout_items`' random layouts, all in one orientation.

    Entities are sorted along the axis, so ``slot`` is the order index (0 = leftmost / topmost) and no
    cell has a fixed slot; with ``sub_cell`` entities sit at any pixel, so label cells with
    ``slot_labels(..., centres=True)``. The prompt is the §4 dummy text; ids ``squares-random-00000``.

    >>> from spatial_interp.data.tasks import random_probing_items, task_for
    >>> items = random_probing_items(task_for("squares", "qwen2_vl"), "qwen2_vl", "vertical", 4, sub_cell=True)
    >>> items[0].orientation, items[0].prompt == PROBE_DUMMY_PROMPT, [e.slot for e in items[0].entities]
    ('vertical', True, [0, 1, 2])
    """
    _check_orientation(orientation)
    direction = "left" if orientation == "horizontal" else "above"
    base = random_layout_items(task, geometry, n_items, seed=seed, sub_cell=sub_cell, directions=[direction],
                               min_gap_px=min_gap_px, font_path=font_path)
    return ItemSet([_random_probe_builder(base, i) for i in range(len(base))],
                   name=f"{task.name}-random-probe-{orientation}")


def _random_probe_builder(base: ItemSet, index: int) -> Callable[[], Item]:
    def build() -> Item:
        item = base[index]
        item.prompt, item.answer = PROBE_DUMMY_PROMPT, ""
        item.metadata["layout"] = "random-probe"
        return item
    return build


def empty_canvas_items(geometry: str | CanvasGeometry, n_items: int = 4, *,
                       orientation: str = "horizontal") -> ItemSet:
    """Blank white canvases with the §4 dummy prompt and no entities: the pure-position control.

    Every image is the same, so a probe on their tokens can only read where a token sits; label the
    cells by column (row) band with ``spatial_interp.interventions.probes.band_labels``. Several items
    exist only so a probe can be split by item (ids ``empty-00000``...).

    >>> items = empty_canvas_items("qwen2_vl", 2)
    >>> items[1].id, items[1].entities, items[1].image.size
    ('empty-00001', [], (336, 336))
    """
    geom = canvas_for(geometry)
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    _check_orientation(orientation)
    direction = "left" if orientation == "horizontal" else "above"
    return ItemSet([_empty_builder(geom, orientation, direction, f"empty-{i:05d}") for i in range(n_items)],
                   name=f"empty-{orientation}")


def _empty_builder(geometry: CanvasGeometry, orientation: str, direction: str, item_id: str) -> Callable[[], Item]:
    def build() -> Item:
        return Item(id=item_id, image=blank_canvas(geometry), prompt=PROBE_DUMMY_PROMPT, answer="",
                    direction=direction, orientation=orientation, entities=[], task="empty",
                    metadata={"layout": "empty", **_geometry_meta(geometry)})
    return build


def probe_split(n: int, *, seed: int = 0, train_fraction: float = 0.75) -> tuple[list[int], list[int]]:
    """Indices of the §4 train/test split: shuffle ``range(n)`` with ``random.Random(seed)``, the first
    ``floor(train_fraction * n)`` are train (shuffling indices permutes exactly like shuffling the list).

    >>> train, test = probe_split(120)
    >>> len(train), len(test)
    (90, 30)
    """
    order = list(range(n))
    random.Random(seed).shuffle(order)
    cut = int(train_fraction * n)
    return order[:cut], order[cut:]


def sample_triples(items: Any, limit: int | None, seed: int, group: int = 4) -> list[Any]:
    """All items, or a seeded sample of about ``limit`` of them, drawn as whole triples.

    The enumerations list each triple's four directions together, so sampling groups of ``group``
    consecutive items keeps the directions balanced. An :class:`~.items.ItemSet` gives an ``ItemSet``
    back (rendered on access, so a whole task's images are never held at once); any other sequence a list.
    """
    n = len(items)
    if limit is None or limit >= n:
        chosen = list(range(n))
    else:
        groups = sorted(random.Random(seed).sample(range(n // group), max(1, -(-limit // group))))
        chosen = [g * group + k for g in groups for k in range(group)]
    if isinstance(items, ItemSet):
        return items.take(chosen)
    return [items[i] for i in chosen]
