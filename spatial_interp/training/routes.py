"""Planted routes for order: how each training item's vision rows reach the LM.

A planted organism is trained so that a chosen route for order must exist (issue 9). Each training
item takes one of three routes, drawn per item as a pure function of ``(seed, step)``:

- ``"clean"``: the model's own forward.
- ``"permuted"``: the item's image rows are shuffled (one seeded permutation per item) before they are
  spliced into the LM, so the LM cannot tell where a token sat (neither by M-RoPE nor by causal order):
  order must come from the vision tokens' content.
- ``"ablated"``: the paper's §7.1 ordering ablation (spec §7.1) applied at the splice: each slot's rows
  are replaced by the vision rows of that entity drawn alone at the horizontal middle slot, every other
  row by the empty canvas's row at the same cell. Identity stays, positional content is erased, so order
  must come from the LM's reading of where the rows sit. Ablated items use the paper's fixed layout.

The splice is one gather: the vision tower runs once over the batch's images followed by the distinct
reference images the ablated items need, and ``splice[j]`` names the row of that output which becomes
the LM's ``j``-th image row. The shipped model stays stock: routes exist only in training.

Example:
    >>> import numpy as np
    >>> from spatial_interp.training.routes import splice_index
    >>> from spatial_interp.training.stimuli import CANVASES, paper_scene
    >>> canvas = CANVASES["qwen2_vl"]
    >>> scenes = [paper_scene("squares", ("red", "green", "blue"), "left", canvas)] * 2
    >>> plan = splice_index(scenes, ["clean", "ablated"], canvas, np.random.default_rng(0))
    >>> plan.index.shape, len(plan.references)     # 2 images x 144 rows; 3 isolated entities + empty
    (torch.Size([288]), 4)
    >>> bool((plan.index[:144] == np.arange(144)).all())
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .stimuli import Canvas, Entity, Scene

ROUTES: tuple[str, ...] = ("clean", "permuted", "ablated")
IGNORE = -100
"""Label of a cell that no entity covers (skipped by the cross-entropy)."""


@dataclass(frozen=True)
class Reference:
    """An image drawn for the ablation: one entity at the horizontal middle slot, or nothing (``entity=None``)."""

    task: str
    entity: Entity | None
    canvas: Canvas


@dataclass
class SplicePlan:
    """Rows of ``vision(images + references)`` that become the LM's image rows, in splice order."""

    index: Tensor
    references: list[Reference]


def draw_routes(rng: np.random.Generator, size: int, permuted: float, ablated: float) -> list[str]:
    """One route per item: ``permuted`` and ``ablated`` are the fractions, the rest is clean."""
    if permuted < 0 or ablated < 0 or permuted + ablated > 1:
        raise ValueError(f"route fractions must be >= 0 and sum to <= 1, got permuted={permuted}, ablated={ablated}")
    u = rng.random(size)
    return ["permuted" if x < permuted else "ablated" if x < permuted + ablated else "clean" for x in u]


def slot_cells(canvas: Canvas, slot: int, orientation: str) -> list[int]:
    """Row-major flat cell ids of a fixed-layout slot (spec §2.2), in row-major order."""
    col, row = canvas.slot_origin(slot, orientation)
    s, n = canvas.entity_tokens, canvas.n_tokens
    return [(row + r) * n + col + c for r in range(s) for c in range(s)]


def isolated_middle(entity: Entity, canvas: Canvas) -> Entity:
    """``entity`` moved to the horizontal middle slot's box (the ablation's identity reference)."""
    return Entity(entity.name, entity.kind, canvas.slot_box(1, "h"), entity.colour)


def splice_index(scenes: Sequence[Scene], routes: Sequence[str], canvas: Canvas,
                 rng: np.random.Generator) -> SplicePlan:
    """The gather that applies each item's route (``canvas`` gives one vision row per cell, row-major)."""
    if len(scenes) != len(routes):
        raise ValueError(f"got {len(scenes)} scenes but {len(routes)} routes")
    n = canvas.n_tokens ** 2
    count = len(scenes)
    references: list[Reference] = []
    ref_slot: dict[tuple, int] = {}

    def reference_row(task: str, entity: Entity | None) -> int:
        key = (task, None if entity is None else (entity.name, entity.kind, entity.colour))
        if key not in ref_slot:
            ref_slot[key] = len(references)
            references.append(Reference(task, None if entity is None else isolated_middle(entity, canvas), canvas))
        return (count + ref_slot[key]) * n

    middle = slot_cells(canvas, 1, "h")
    rows = []
    for b, (scene, route) in enumerate(zip(scenes, routes, strict=True)):
        if route == "clean":
            rows.append(np.arange(n) + b * n)
        elif route == "permuted":
            rows.append(rng.permutation(n) + b * n)
        elif route == "ablated":
            empty = reference_row(scene.task, None)
            item = np.arange(n) + empty
            for k, entity in enumerate(scene.entities):
                if entity.box != canvas.slot_box(k, scene.orientation):
                    raise ValueError("the ablation needs the paper's fixed layout (entity boxes on the slots)")
                start = reference_row(scene.task, entity)
                for i, cell in enumerate(slot_cells(canvas, k, scene.orientation)):
                    item[cell] = start + middle[i]
            rows.append(item)
        else:
            raise ValueError(f"unknown route {route!r}; use one of {', '.join(ROUTES)}")
    return SplicePlan(torch.from_numpy(np.concatenate(rows)).long(), references)


def order_labels(scenes: Sequence[Scene], canvas: Canvas) -> Tensor:
    """Per image cell (row-major, images in order): ``3 * axis + slot`` of the entity whose box covers the
    cell's centre (axis 0: a horizontal scene's left/middle/right, 1: a vertical one's top/middle/bottom),
    :data:`IGNORE` elsewhere. The target of the vision organisms' auxiliary order loss (``order_loss``)."""
    n, px = canvas.n_tokens, canvas.token_px
    centres = (np.arange(n) + 0.5) * px
    labels = np.full((len(scenes), n, n), IGNORE, dtype=np.int64)
    for b, scene in enumerate(scenes):
        axis = 0 if scene.orientation == "h" else 1
        for slot, entity in enumerate(scene.entities):
            x0, y0, x1, y1 = entity.box
            rows = (centres >= y0) & (centres < y1)
            cols = (centres >= x0) & (centres < x1)
            labels[b][np.ix_(rows, cols)] = 3 * axis + slot
    return torch.from_numpy(labels.reshape(-1))
