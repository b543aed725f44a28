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

from .canvas import Box, CanvasGeometry, canvas_for, geometry_name
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
from .stimuli import Renderer, grid_boxes, random_layout, three_slot_boxes

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
                    renderer: Renderer | None = None, item_id: str | None = None) -> Item:
    """One item: ``slots`` placed left->right (or top->bottom), queried in ``direction`` about slot 1."""
    if len(slots) != 3:
        raise ValueError("a three-slot item needs exactly 3 options")
    orientation = orientation_of(direction)
    boxes = three_slot_boxes(geometry, orientation)
    entities = [opt.entity(i, box) for i, (opt, box) in enumerate(zip(slots, boxes, strict=True))]
    image = (renderer or Renderer()).render(geometry.canvas_px, entities)
    names = [o.name for o in slots]
    return Item(id=item_id or f"{task.name}-{'-'.join(names)}-{direction}", image=image,
                prompt=task.prompt(direction, slots[1]), answer=slots[target_slot(direction)].name,
                direction=direction, orientation=orientation, entities=entities, task=task.name,
                metadata={"triple": names, "layout": "three_slot", **_geometry_meta(geometry)})


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


def probing_items(task: Task, geometry: str | CanvasGeometry, orientation: str, *,
                  font_path: Path | None = None) -> ItemSet:
    """§4 probing images: every ordered triple in one orientation (120 squares/shapes, 336 objects).

    The prompt is the fixed dummy text the reference gives the processor; labels are the entity slots.
    """
    geom = canvas_for(geometry)
    direction = "left" if orientation == "horizontal" else "above"
    renderer = Renderer(font_path)
    builders: list[Callable[[], Item]] = []
    for triple in itertools.permutations(task.options, 3):
        item_id = f"{task.name}-probe-{len(builders):05d}"
        builders.append(_probe_builder(task, triple, direction, geom, renderer, item_id))
    return ItemSet(builders, name=f"{task.name}-probe-{orientation}")


def _probe_builder(task: Task, triple: Sequence[Option], direction: str, geometry: CanvasGeometry,
                   renderer: Renderer, item_id: str) -> Callable[[], Item]:
    def build() -> Item:
        item = three_slot_item(task, triple, direction, geometry, renderer, item_id)
        item.prompt, item.answer = PROBE_DUMMY_PROMPT, ""
        item.metadata["layout"] = "probe"
        return item
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
