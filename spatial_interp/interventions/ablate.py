"""Ablation by reference activations (§7.1): overwrite image positions with another run's values.

A :class:`Reference` says "cells ``target`` of this run take the activations of cells ``source`` of
a reference (image, prompt) run, aligned row-major". The paper's vision-encoder ordering ablation
is one list of references per item (:func:`ordering_references`): each entity slot takes the
middle-slot cells of an image showing that entity alone in the middle slot, and every other cell
takes the same cell of an empty canvas, so identity survives and position information does not.
Reference runs are computed once per distinct (image, prompt).

Example:
    >>> import spatial_interp as si
    >>> from PIL import Image
    >>> from spatial_interp.geometry import Region
    >>> from spatial_interp.interventions.ablate import Ablation, Reference, ablate
    >>> from spatial_interp.interventions.examples import Example
    >>> vlm = si.load("tiny-qwen2-vl")
    >>> empty = Image.new("RGB", (336, 336), "white")
    >>> blank_everything = Ablation(lambda ex, layout: [Reference(Region.all(layout.grid), Example(empty, ex.prompt))])
    >>> item = Example(Image.new("RGB", (336, 336), "red"), "The color is ", answer="red")
    >>> ablate(vlm, [item], blank_everything).axes
    ('item', 'metric')
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from ..geometry import Box, GeometryError, ImageLayout, Region
from ..models.vlm import DEFAULT_SYSTEM, VLM
from ..results import LabelledArray, provenance
from ..site import Site, lm_resid, resolve
from .engine import Edit, Read, run
from .examples import Example, as_example


@dataclass(frozen=True)
class Reference:
    """Cells ``target`` ← cells ``source`` (default: the same cells) of the run of ``example``."""

    target: Region
    example: Example
    source: Region | None = None

    def __post_init__(self) -> None:
        source = self.source if self.source is not None else self.target
        if len(source) != len(self.target):
            raise GeometryError(f"reference source has {len(source)} cells but target {len(self.target)}; "
                                "they pair up row-major, so give regions of equal size")


LM_INPUT = lm_resid(0)
"""The decoder-layer-0 input, where the paper ablates (TransformerLens ``blocks.0.hook_resid_pre``)."""

ReferenceFn = Callable[[Example, ImageLayout], Sequence[Reference]]


@dataclass(frozen=True)
class Ablation:
    """Which references each item gets, and the site they are written at (default ``lm_resid(0)``).

    Passed to :func:`ablate`, or to :func:`~.patch.patch` / :func:`~.sweep.sweep` as ``ablation=`` to
    ablate both runs of every pair before patching (§7.2; at a shared site, ablation first).
    """

    references: ReferenceFn
    site: Site = LM_INPUT

    def __post_init__(self) -> None:
        if not callable(self.references):
            raise TypeError("Ablation.references must be a function (example, layout) -> list[Reference]")
        object.__setattr__(self, "site", resolve(self.site))
        if self.site.only_last_token:
            raise ValueError("ablation replaces image positions; use an lm_resid(s) site without .last_token")

    def compute(self, vlm: VLM, examples: Sequence[Example], layouts: Sequence[ImageLayout], *,
                system: Any = DEFAULT_SYSTEM, remote: bool | str = False,
                batch_size: int = 16) -> list[list[tuple[Region, Tensor]]]:
        """For each example, ``(target region, replacement values)`` pairs (one reference forward each)."""
        refs = [list(self.references(ex, layout)) for ex, layout in zip(examples, layouts, strict=True)]
        unique: dict[str, Example] = {}
        for item_refs in refs:
            for ref in item_refs:
                unique.setdefault(ref.example.key, ref.example)
        order = list(unique)
        acts: dict[str, Tensor] = {}
        grids: dict[str, Any] = {}
        for start in range(0, len(order), batch_size):
            chunk = [unique[k] for k in order[start:start + batch_size]]
            batch = vlm.prepare([e.image for e in chunk], [e.prompt for e in chunk], system=system)
            # Read every cell of each reference once; targets pick their cells from it.
            reads = [Read(self.site, torch.full((layout.grid.n_cells,), layout.batch_index),
                          layout.indices(None, self.site)) for layout in batch.layouts]
            out = run(vlm, batch, reads=reads, remote=remote)
            for example, layout, read in zip(chunk, batch.layouts, out.reads, strict=True):
                acts[example.key] = read.detach().cpu()
                grids[example.key] = layout.grid
        result = []
        for item_refs, layout in zip(refs, layouts, strict=True):
            pairs = []
            for ref in item_refs:
                grid = grids[ref.example.key]
                source = ref.source if ref.source is not None else ref.target
                if source.grid != grid:
                    raise GeometryError(f"reference image has a {grid} grid but its region is on "
                                        f"{source.grid}; use a reference image of the item's size")
                if ref.target.grid != layout.grid:
                    raise GeometryError(f"reference target is on {ref.target.grid} but the item has {layout.grid}")
                pairs.append((ref.target, acts[ref.example.key][source.flat]))
            result.append(pairs)
        return result

    def edits(self, computed: Sequence[list[tuple[Region, Tensor]]], layouts: Sequence[ImageLayout]) -> list[Edit]:
        """Set-edits (phase 0) writing each item's references into its batch row."""
        edits = []
        for pairs, layout in zip(computed, layouts, strict=True):
            for target, vals in pairs:
                positions = layout.indices(target, self.site)
                rows = None if self.site.is_vision else torch.full_like(positions, layout.batch_index)
                edits.append(Edit.set(self.site, rows, positions, vals, phase=0))
        return edits


def ordering_references(
    slots: Sequence[Region],
    isolated: Sequence[Image.Image],
    empty: Image.Image,
    middle: Region,
    prompt: str,
    *,
    cap: int | None = None,
) -> list[Reference]:
    """The §7.1 references of one item.

    Args:
        slots: the item's entity-slot regions, in slot order.
        isolated: for each slot, an image of that slot's entity drawn alone at the middle slot of the
            horizontal layout (same canvas as the item).
        empty: the blank canvas.
        middle: the middle slot's cells (where the isolated entity sits).
        prompt: the item's own prompt (references run with the clean prompt).
        cap: ``None`` ablates the full background; ``144`` reproduces the paper notebook's
            ``range(12*12)`` background (only flat ids < 144 are replaced), Table 5's capped variant.
    """
    if len(slots) != len(isolated):
        raise ValueError(f"{len(slots)} slots but {len(isolated)} isolated-entity images; give one per slot")
    grid = middle.grid
    refs = [Reference(slot, Example(image, prompt), middle) for slot, image in zip(slots, isolated, strict=True)]
    occupied = Region(grid)
    for slot in slots:
        occupied = occupied | slot
    background = Region.all(grid) - occupied
    if cap is not None:
        background = Region.flat_ids(grid, [i for i in background.flat.tolist() if i < cap])
    if len(background):
        refs.append(Reference(background, Example(empty, prompt)))
    return refs


def entity_slots(example: Example, layout: ImageLayout) -> list[Region]:
    """Cells of each entity of a ``data`` item (``example.source.entities[k].box``), in slot order."""
    item = example.source
    entities = getattr(item, "entities", None)
    if not entities:
        raise ValueError("this example carries no entities (example.source.entities); pass slot regions explicitly")
    ordered = sorted(entities, key=lambda e: getattr(e, "slot", 0))
    return [layout.box_to_cells(tuple(e.box)) for e in ordered]


def ordering_ablation(
    isolated: Callable[[Any], Image.Image],
    empty: Image.Image,
    middle_box: Box,
    *,
    cap: int | None = None,
    site: Site = LM_INPUT,
) -> Ablation:
    """An :class:`Ablation` for ``data`` items: ``isolated(entity)`` renders one entity at the middle slot.

    Slots come from each item's entity boxes, the middle-slot cells from ``middle_box`` (pixels).
    """

    def references(example: Example, layout: ImageLayout) -> list[Reference]:
        item = example.source
        entities = sorted(item.entities, key=lambda e: getattr(e, "slot", 0))
        slots = [layout.box_to_cells(tuple(e.box)) for e in entities]
        middle = layout.box_to_cells(middle_box)
        return ordering_references(slots, [isolated(e) for e in entities], empty, middle, example.prompt, cap=cap)

    return Ablation(references, site)


def ablate(
    vlm: VLM,
    items: Sequence[Any],
    ablation: Ablation | None = None,
    *,
    references: ReferenceFn | None = None,
    site: Site = LM_INPUT,
    metric: Any = None,
    batch_size: int = 16,
    system: Any = DEFAULT_SYSTEM,
    remote: bool | str = False,
) -> LabelledArray:
    """Run ``items`` with their references written in; returns a labelled ``(item, metric)`` array.

    Give either an :class:`Ablation` or ``references=`` (a function ``(example, layout) -> [Reference]``)
    with ``site=``. The default metric is top-1 correctness against each item's answer (Table 5).
    """
    from .metrics import evaluate, top1

    if (ablation is None) == (references is None):
        raise ValueError("give exactly one of ablation= or references= (a function (example, layout) -> "
                         "list[Reference]); e.g. interventions.paper.paper_ablation(vlm.canvas)")
    if ablation is None:
        ablation = Ablation(references, site)
    examples = [as_example(i) for i in items]
    if not examples:
        raise ValueError("ablate() needs at least one item")
    metric = metric if metric is not None else top1(vlm.tokenizer)
    rows, names = [], None
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        logits = ablated_logits(vlm, chunk, ablation, system=system, remote=remote, batch_size=batch_size)
        values, names = evaluate(metric, logits, chunk)
        rows.append(values)
    return LabelledArray(torch.cat(rows).numpy(), ("item", "metric"),
                         {"item": [e.name for e in examples], "metric": names},
                         attrs={"site": str(ablation.site)},
                         provenance=provenance(vlm, config={"primitive": "ablate", "site": str(ablation.site)}))


def ablated_logits(vlm: VLM, items: Sequence[Any], ablation: Ablation, *, system: Any = DEFAULT_SYSTEM,
                   remote: bool | str = False, batch_size: int = 16) -> Tensor:
    """Final-position logits of ``items`` under ``ablation`` (one batch)."""
    examples = [as_example(i) for i in items]
    batch = vlm.prepare([e.image for e in examples], [e.prompt for e in examples], system=system)
    computed = ablation.compute(vlm, examples, batch.layouts, system=system, remote=remote, batch_size=batch_size)
    return run(vlm, batch, ablation.edits(computed, batch.layouts), remote=remote).logits
