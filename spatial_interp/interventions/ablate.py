"""Ablation by reference activations (§7.1): overwrite image positions with another run's values.

A :class:`Reference` says "cells ``target`` of this run take the activations of cells ``source`` of
a reference (image, prompt) run, aligned row-major". The paper's vision-encoder ordering ablation
is one list of references per item (:func:`ordering_references`): each entity slot takes the
middle-slot cells of an image showing that entity alone in the middle slot, and every other cell
takes the same cell of an empty canvas, so identity survives and position information does not.
Reference runs stop right after their read, and are computed once per distinct reference: at
``lm_resid(0)`` (and vision sites) the image rows do not depend on the prompt, so one run per
distinct image (content hash of its pixels) serves every prompt; elsewhere one per (image, prompt,
system). A :class:`ReferenceCache` passed to several calls keeps them across calls. When an ablation
at ``lm_resid(0)`` overwrites every image row (the full-grid variant), the item's own vision tower
is not run: the references are fed in as its vision embeddings.

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
    >>> cache = ReferenceCache()
    >>> _ = ablate(vlm, [item, item], blank_everything, cache=cache)
    >>> len(cache), cache.misses
    (1, 1)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from PIL import Image
from torch import Tensor

from ..geometry import Box, GeometryError, Grid, ImageLayout, Region
from ..models.vlm import DEFAULT_SYSTEM, VLM, Batch
from ..results import LabelledArray, provenance
from ..site import Site, lm_resid, resolve
from .engine import Edit, Read, read_and_stop, run
from .examples import Example, example_chunks, prepared_chunks


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


def prompt_independent(site: Site) -> bool:
    """Whether an image's rows at ``site`` depend on its image alone (vision sites and ``lm_resid(0)``,
    where the vision embeddings are spliced in and no decoder layer has mixed in the text yet)."""
    site = resolve(site)
    return site.is_vision or (site.kind == "lm_resid" and site.index == 0)


class ReferenceCache:
    """Reference activations (every cell of one reference run at one site), kept across calls.

    Pass one cache to every :func:`ablate` / :meth:`Ablation.compute` call of a run (e.g. all of
    Table 5 and the §7.2 pair filter): each distinct reference is then computed once. Entries are
    keyed by content: ``(site, image hash)`` at prompt-independent sites (:func:`prompt_independent`),
    ``(site, image+prompt hash, system)`` elsewhere. A cache belongs to the first model it is used
    with; using it with another is a ValueError (its activations would be that model's).

    Attributes:
        hits, misses: look-ups answered from the cache, and references that had to be run.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple, tuple[Grid, Tensor]] = {}
        self._owner: tuple[str, int] | None = None
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"ReferenceCache({len(self)} references, {self.hits} hits, {self.misses} misses)"

    def bind(self, vlm: VLM) -> None:
        """Tie the cache to ``vlm`` (first use), or refuse a different model."""
        owner = (vlm.info.name, id(vlm.model))
        if self._owner is None:
            self._owner = owner
        elif self._owner != owner:
            raise ValueError(f"this ReferenceCache holds activations of {self._owner[0]!r} (model object "
                             f"{self._owner[1]:#x}); use a new ReferenceCache() for {vlm.info.name!r}")

    @staticmethod
    def key(site: Site, example: Example, system: Any) -> tuple:
        site = resolve(site)
        if prompt_independent(site):
            return (str(site), example.image_key)
        return (str(site), example.key, "<default>" if system is DEFAULT_SYSTEM else repr(system))

    def __contains__(self, key: tuple) -> bool:
        return key in self._entries

    def get(self, key: tuple) -> tuple[Grid, Tensor]:
        return self._entries[key]

    def put(self, key: tuple, grid: Grid, values: Float[Tensor, "cells d"]) -> None:
        self._entries[key] = (grid, values)


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
                system: Any = DEFAULT_SYSTEM, remote: bool | str = False, batch_size: int = 16,
                cache: ReferenceCache | None = None) -> list[list[tuple[Region, Tensor]]]:
        """For each example, ``(target region, replacement values)`` pairs.

        Each distinct reference not in ``cache`` is run once (``batch_size`` per forward, stopped
        right after its read); ``cache`` defaults to one for this call only.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        cache = cache if cache is not None else ReferenceCache()
        cache.bind(vlm)
        refs = [list(self.references(ex, layout)) for ex, layout in zip(examples, layouts, strict=True)]
        # Reference functions wrap the same few images in a new Example per item: key each image object
        # once in this call (its pixel hash is the costly part: 72 ms → 12 ms for the paper's on 32 items).
        prompt_free = prompt_independent(self.site)
        by_image: dict[tuple[int, str | None], tuple] = {}
        keys = []
        for item_refs in refs:
            keys.append([])
            for ref in item_refs:
                memo = (id(ref.example.image), None if prompt_free else ref.example.prompt)
                if memo not in by_image:
                    by_image[memo] = cache.key(self.site, ref.example, system)
                keys[-1].append(by_image[memo])
        missing: dict[tuple, Example] = {}
        for item_refs, item_keys in zip(refs, keys, strict=True):
            for ref, key in zip(item_refs, item_keys, strict=True):
                if key in cache or key in missing:
                    cache.hits += 1
                else:
                    missing[key] = ref.example
        order = list(missing)
        cache.misses += len(order)
        for start in range(0, len(order), batch_size):
            chunk_keys = order[start:start + batch_size]
            chunk = [missing[k] for k in chunk_keys]
            batch = vlm.prepare([e.image for e in chunk], [e.prompt for e in chunk], system=system)
            # Read every cell of each reference once; targets pick their cells from it.
            reads = [Read(self.site, torch.full((layout.grid.n_cells,), layout.batch_index),
                          layout.indices(None, self.site)) for layout in batch.layouts]
            values = read_and_stop(vlm, batch, reads, remote=remote)
            for key, layout, read in zip(chunk_keys, batch.layouts, values, strict=True):
                cache.put(key, layout.grid, read.detach().cpu())
        result = []
        for item_refs, item_keys, layout in zip(refs, keys, layouts, strict=True):
            pairs = []
            for ref, key in zip(item_refs, item_keys, strict=True):
                grid, acts = cache.get(key)
                source = ref.source if ref.source is not None else ref.target
                if source.grid != grid:
                    raise GeometryError(f"reference image has a {grid} grid but its region is on "
                                        f"{source.grid}; use a reference image of the item's size")
                if ref.target.grid != layout.grid:
                    raise GeometryError(f"reference target is on {ref.target.grid} but the item has {layout.grid}")
                pairs.append((ref.target, acts[source.flat]))
            result.append(pairs)
        return result

    def vision_features(self, computed: Sequence[list[tuple[Region, Tensor]]],
                        layouts: Sequence[ImageLayout]) -> Float[Tensor, "rows d"] | None:
        """The items' ``vision_out`` rows with the references written in, when they replace every image
        row at ``lm_resid(0)`` (then the layer-0 input is exactly these rows, and the vision tower
        need not run); ``None`` otherwise."""
        if self.site != LM_INPUT:
            return None
        parts = []
        for pairs, layout in zip(computed, layouts, strict=True):
            if not pairs:
                return None
            rows = torch.empty(layout.grid.n_cells, pairs[0][1].shape[-1], dtype=pairs[0][1].dtype)
            written = torch.zeros(layout.grid.n_cells, dtype=torch.bool)
            for target, vals in pairs:  # in edit order, so overlapping targets resolve as the edits would
                rows[target.flat] = vals
                written[target.flat] = True
            if not bool(written.all()):
                return None
            parts.append(rows)
        return torch.cat(parts)

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
    cache: ReferenceCache | None = None,
) -> LabelledArray:
    """Run ``items`` with their references written in; returns a labelled ``(item, metric)`` array.

    Give either an :class:`Ablation` or ``references=`` (a function ``(example, layout) -> [Reference]``)
    with ``site=``. The default metric is top-1 correctness against each item's answer (Table 5).

    Items are read and converted ``batch_size`` at a time (a lazy ``ItemSet`` renders only the chunk in
    hand). Forwards: one per chunk, plus one per ``batch_size`` distinct references not yet in
    ``cache`` (default: a cache for this call; pass one ``ReferenceCache`` to every call of a run).
    """
    from .metrics import evaluate, top1

    if (ablation is None) == (references is None):
        raise ValueError("give exactly one of ablation= or references= (a function (example, layout) -> "
                         "list[Reference]); e.g. interventions.paper.paper_ablation(vlm.canvas)")
    if ablation is None:
        ablation = Ablation(references, site)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    metric = metric if metric is not None else top1(vlm.tokenizer)
    cache = cache if cache is not None else ReferenceCache()
    rows, names, item_names = [], None, []
    # The next chunk is rendered and processed in a worker during this one's forwards.
    for chunk, batch in prepared_chunks(vlm, items, batch_size, system=system):
        logits = ablated_logits(vlm, chunk, ablation, system=system, remote=remote, batch_size=batch_size,
                                cache=cache, batch=batch)
        values, names = evaluate(metric, logits, chunk)
        rows.append(values)
        item_names += [e.name for e in chunk]
        del chunk, logits  # else this chunk's images stay alive while the next one renders
    if not rows:
        raise ValueError("ablate() needs at least one item")
    return LabelledArray(torch.cat(rows).numpy(), ("item", "metric"),
                         {"item": item_names, "metric": names},
                         attrs={"site": str(ablation.site)},
                         provenance=provenance(vlm, config={"primitive": "ablate", "site": str(ablation.site)}))


def ablated_logits(vlm: VLM, items: Iterable[Any], ablation: Ablation, *, system: Any = DEFAULT_SYSTEM,
                   remote: bool | str = False, batch_size: int = 16,
                   cache: ReferenceCache | None = None, batch: Batch | None = None) -> Float[Tensor, "batch vocab"]:
    """Final-position logits of ``items`` under ``ablation`` (one batch; see :func:`ablate` for ``cache``).

    ``batch`` is ``vlm.prepare`` of exactly these items, if already made (e.g. prefetched).
    """
    examples = [e for chunk in example_chunks(items, None) for e in chunk]
    if not examples:
        raise ValueError("ablated_logits() needs at least one item")
    if batch is None:
        batch = vlm.prepare([e.image for e in examples], [e.prompt for e in examples], system=system)
    elif len(batch.layouts) != len(examples):
        raise ValueError(f"batch holds {len(batch.layouts)} items but {len(examples)} were given")
    computed = ablation.compute(vlm, examples, batch.layouts, system=system, remote=remote, batch_size=batch_size,
                                cache=cache)
    features = ablation.vision_features(computed, batch.layouts)
    if features is not None:
        return run(vlm, batch, vision_features=features, remote=remote).logits
    return run(vlm, batch, ablation.edits(computed, batch.layouts), remote=remote).logits
