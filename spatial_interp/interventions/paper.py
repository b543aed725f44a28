"""The paper's regions and ablation, built from ``spatial_interp.data`` items.

* :func:`criss_cross_regions` — §6 swap regions per pair: ``object`` (the two outer entity slots,
  left ↔ right or top ↔ bottom, from the clean item's entity boxes) and ``strip`` (the outer bands of
  the reference code's three-band tiling, or any widths you give).
* :func:`paper_ablation` — §7.1's ordering ablation from ``data.references.ablation_plan``, in the
  full-grid or the capped (``background_cap=144``) variant.

Both are functions of the item, so they work for every pair of a sweep.

Example:
    >>> import spatial_interp as si
    >>> from spatial_interp.data.pairs import criss_cross_pairs
    >>> from spatial_interp.data.tasks import task_for
    >>> from spatial_interp.interventions.examples import as_pair
    >>> from spatial_interp.interventions.paper import criss_cross_regions
    >>> vlm = si.load("tiny-qwen2-vl")
    >>> pair = as_pair(criss_cross_pairs(task_for("squares", "qwen2_vl"), "qwen2_vl", n_per_direction=1)["left"][0])
    >>> layout = vlm.prepare([pair.clean.image], [pair.clean.prompt]).layouts[0]
    >>> swap = criss_cross_regions(vlm)["strip"](pair, layout)
    >>> len(swap.a), len(swap.b)
    (48, 48)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..geometry import ImageLayout, Region
from ..models.vlm import VLM
from .ablate import Ablation, Reference
from .examples import Example, PatchPair, Swap


def _item(owner: Any) -> Any:
    example = owner.clean if isinstance(owner, PatchPair) else owner
    item = example.source if isinstance(example, Example) else example
    if item is None or not hasattr(item, "entities"):
        raise ValueError("paper regions need data items (with entities and orientation); build pairs with "
                         "spatial_interp.data.pairs and pass them (or PatchPairs made from them)")
    return item


def object_swap(owner: Any, layout: ImageLayout) -> Swap:
    """The outer entity slots of the clean item (slot 0 ↔ slot 2), cells from their pixel boxes."""
    item = _item(owner)
    first, last = (layout.box_to_cells(tuple(item.entity_in_slot(k).box)) for k in (0, 2))
    return Swap(first, last)


def strip_swap(canvas: str, widths: Sequence[int] | None = None):
    """Outer bands of the three-band tiling (columns for left/right items, rows for above/below)."""
    from ..data.regions import strip_bands

    def region(owner: Any, layout: ImageLayout) -> Swap:
        bands = strip_bands(canvas, _item(owner).orientation, tuple(widths) if widths else None)
        first, last = (Region.rect(layout.grid, band.rows, band.cols) for band in (bands[0], bands[-1]))
        return Swap(first, last)

    return region


def criss_cross_regions(vlm: VLM, strip_widths: Sequence[int] | None = None) -> dict[str, Any]:
    """``{"object": …, "strip": …}`` swap regions for :func:`~.sweep.sweep` (use ``pairing="swap"``).

    ``strip_widths`` overrides the tiling (e.g. the paper's Table 4 widths); default: the reference
    code's tiling for this model's canvas (Qwen 4/4/4, Gemma 5/6/5, Pixtral 5/5/5).
    """
    return {"object": object_swap, "strip": strip_swap(vlm.canvas, strip_widths)}


def paper_ablation(canvas: str, *, background_cap: int | None = None) -> Ablation:
    """§7.1: slot k ← middle-slot cells of entity k drawn alone at the middle slot; background ← empty.

    ``background_cap=144`` is the paper notebook's capped variant (only flat ids < 144 are ablated).
    """
    from ..data.references import EMPTY, ablation_plan, reference_images, reference_key

    rendered: dict[str, Any] = {}  # reference images by key, rendered once per ablation

    def references(example: Example, layout: ImageLayout) -> list[Reference]:
        item = _item(example)
        plan = ablation_plan(item, canvas, background_cap=background_cap)
        missing = [e for e in item.entities if reference_key(e) not in rendered]
        if missing or EMPTY not in rendered:
            # Images already drawn are kept: one object per reference, so the ablation keys each once.
            rendered.update({k: v for k, v in reference_images(missing, canvas).items() if k not in rendered})
        images = rendered
        grid = layout.grid
        refs = [Reference(Region.cells(grid, s.cells), Example(images[s.reference], example.prompt),
                          Region.cells(grid, s.reference_cells)) for s in plan.slots]
        if plan.background:
            refs.append(Reference(Region.cells(grid, plan.background), Example(images[EMPTY], example.prompt)))
        return refs

    return Ablation(references)
