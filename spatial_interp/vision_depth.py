"""Inside the vision encoder: where ordering forms, and why it spreads to the background.

A short composition of primitives, every number measured on the model in hand:

=========================  ===========================================================================
measurement                composition
=========================  ===========================================================================
depth profile (probes)     one :func:`~spatial_interp.interventions.collect` over every
                           ``vision_block(k)`` and ``vision_out`` (one clean tower forward per batch of
                           images); per site a 3-class slot probe on the entity cells and a band probe
                           on the background cells, each beside a label-shuffled control, the
                           majority-class chance level, and a band probe on blank canvases (what
                           absolute position alone gives); per-cell maps of the entity probe
depth profile (swaps)      :func:`~spatial_interp.interventions.sweep` with ``pairing="swap"`` of the
                           criss-cross object and strip regions at every vision site (the swap
                           continues through the blocks above it)
attention flow             :func:`~spatial_interp.interventions.attention.attention_flow` between the
                           objects, their strips and the rest of the background, per block and head
knockouts                  :class:`~spatial_interp.interventions.attention.Knockout` in every block
                           (background ↛ objects, objects ↛ background): effect on answers, on the
                           clean ``vision_out`` probes and on the strip swap at ``vision_out``
=========================  ===========================================================================

A probe is **above chance** at a site when its held-out accuracy exceeds the chance level, its
shuffled-label control and the blank-canvas band probe (what absolute position alone gives) by
``margin``; a swap **flips the answer** at a site when at least ``flip``
of the pairs answer the counterfactual word.

Example:
    >>> import spatial_interp as si
    >>> from spatial_interp.vision_depth import VisionDepthConfig, vision_depth
    >>> cfg = VisionDepthConfig(probe_items=12, blank_items=4, pairs_per_direction=1, flow_items=1, knockout_items=4)
    >>> result = vision_depth(si.load("tiny-qwen2-vl"), cfg)
    >>> result["sites"]
    ['vision_block.0', 'vision_block.1', 'vision_out']
    >>> sorted(result["first"])
    ['background_probe', 'background_swap', 'object_probe', 'object_swap', 'strip_swap']
"""

from __future__ import annotations

import logging
import random
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from . import site as sites
from .data import pairs as data_pairs
from .data import tasks as data_tasks
from .data.canvas import canvas_for
from .data.regions import strip_bands
from .geometry import ImageLayout, Region
from .interventions import collect, metrics
from .interventions.attention import Knockout, attention_flow, knockout, run_attention
from .interventions.engine import Edit, Read
from .interventions.examples import Example, PatchPair, Swap, as_example, as_pair, resolve_region
from .interventions.paper import criss_cross_regions
from .interventions.patch import patch_indices
from .interventions.probes import Probe, band_labels, relabelled_per_item, slot_labels
from .interventions.sweep import sweep
from .models.vlm import VLM

log = logging.getLogger(__name__)

CLASSES = MappingProxyType({"horizontal": ("left", "middle", "right"), "vertical": ("top", "middle", "bottom")})
DIRECTIONS = MappingProxyType({"horizontal": ("left", "right"), "vertical": ("above", "below")})


@dataclass(frozen=True)
class VisionDepthConfig:
    """Sizes of the measurements and the thresholds of the summary."""

    task: str = "squares"
    orientation: str = "horizontal"
    probe_items: int = 48
    """§4 probing images (ordered triples, one orientation), split 75/25 by image."""
    blank_items: int = 8
    """Blank canvases for the position-only band probe (0 skips it)."""
    pairs_per_direction: int = 4
    """Criss-cross pairs per direction of the orientation (both directions)."""
    filter_pairs: bool = False
    """Keep only pairs the model answers correctly on both runs (the paper's filter)."""
    max_attempts: int = 400
    flow_items: int = 4
    knockout_items: int = 16
    """Table 1 items whose answers are scored under each knockout."""
    margin: float = 0.1
    flip: float = 0.5
    batch_size: int = 16
    attention_batch: int = 2
    """Images per attention forward (the knockout mask is batch × rows × rows)."""
    seed: int = 0
    progress: bool = False

    def __post_init__(self) -> None:
        if self.orientation not in CLASSES:
            raise ValueError(f"orientation must be 'horizontal' or 'vertical', got {self.orientation!r}")
        for name in ("probe_items", "pairs_per_direction", "flow_items", "knockout_items", "batch_size",
                     "attention_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"VisionDepthConfig.{name} must be an int >= 1, got {value!r}")
        if self.probe_items < 8:
            raise ValueError(f"probe_items must be >= 8 so a 75/25 split by image leaves test images, got "
                             f"{self.probe_items}")
        if not 0 < self.flip <= 1 or not 0 <= self.margin < 1:
            raise ValueError(f"flip must be in (0, 1] and margin in [0, 1), got {self.flip}, {self.margin}")


def _item(owner: Any) -> Any:
    example = owner.clean if isinstance(owner, PatchPair) else owner
    return example.source if isinstance(example, Example) else example


def objects(owner: Any, layout: ImageLayout) -> Region:
    """Every entity's cells (from its pixel box) on this image."""
    region = Region(layout.grid)
    for entity in _item(owner).entities:
        region = region | layout.box_to_cells(tuple(entity.box))
    return region


def strips(owner: Any, layout: ImageLayout) -> Region:
    """The full-height (horizontal items) or full-width (vertical) bands through each entity, minus the entities."""
    item, region = _item(owner), Region(layout.grid)
    for entity in item.entities:
        r0, c0, r1, c1 = layout.box_to_cells(tuple(entity.box)).bounds
        band = (Region.columns(layout.grid, c0, c1) if item.orientation == "horizontal"
                else Region.rows(layout.grid, r0, r1))
        region = region | band
    return region - objects(owner, layout)


def swap_regions(vlm: VLM) -> dict[str, Any]:
    """The criss-cross ``object`` and ``strip`` swaps, and ``background``: the strips without the entities
    (does the background alone carry the order?)."""
    regions = criss_cross_regions(vlm)
    strip = regions["strip"]

    def background(pair: Any, layout: ImageLayout) -> Swap:
        swap, taken = strip(pair, layout), objects(pair, layout)
        return Swap(swap.a - taken, swap.b - taken)

    return {**regions, "background": background}


def background_labels(items: Sequence[Any], canvas: Any) -> dict[str, dict[int, int]]:
    """Background cells (no entity) → the strip band they lie in (the slot of the entity in that band)."""
    geometry = canvas_for(canvas)
    out = {}
    for item in items:
        taken = {int(f) for e in item.entities for f in e.flat_ids(geometry)}
        cells = {}
        for band, span in enumerate(strip_bands(canvas, item.orientation)):
            for flat in span.flat_ids(geometry.n_tokens):
                if flat not in taken:
                    cells[flat] = band
        out[str(item.id)] = cells
    return out


def _chance(labels: dict[str, dict[int, int]]) -> float:
    """Majority-class share of the labelled cells (what always guessing the commonest class scores)."""
    counts = np.bincount([c for cells in labels.values() for c in cells.values()], minlength=3)
    return float(counts.max() / counts.sum())


def _vision_sites(vlm: VLM) -> list[sites.Site]:
    return [sites.vision_block(k) for k in range(vlm.n_vision_blocks)] + [sites.vision_out]


def _first(site_names: Sequence[str], hits: Sequence[bool]) -> str | None:
    return next((s for s, hit in zip(site_names, hits, strict=True) if hit), None)


def depth_probes(vlm: VLM, cfg: VisionDepthConfig, out: Path) -> dict[str, Any]:
    """Entity slot probes and background band probes at every vision site, from one collect."""
    task = data_tasks.task_for(cfg.task, vlm.canvas)
    pool = data_tasks.probing_items(task, vlm.canvas, cfg.orientation)
    chosen = sorted(random.Random(cfg.seed).sample(range(len(pool)), min(cfg.probe_items, len(pool))))
    items = [pool[i] for i in chosen]
    site_list = _vision_sites(vlm)
    store = collect(vlm, items, site_list, out=out / "acts", batch_size=cfg.batch_size, progress=cfg.progress)
    labels = {"objects": slot_labels(items, vlm.canvas), "background": background_labels(items, vlm.canvas)}
    result: dict[str, Any] = {"n_items": len(items), "classes": list(CLASSES[cfg.orientation])}
    fitted: dict[str, Probe] = {}
    for name, table in labels.items():
        shuffled = relabelled_per_item(table, 3, cfg.seed)
        accuracy, control, maps = [], [], []
        for s in site_list:
            probe = Probe.fit(store, table, site=s, seed=cfg.seed, classes=list(CLASSES[cfg.orientation]))
            accuracy.append(float(probe.report.accuracy))
            control.append(float(Probe.fit(store, shuffled, site=s, test_items=probe.test_items, seed=cfg.seed)
                                 .report.accuracy))
            if name == "objects":
                maps.append(probe.heatmap(store, site=s).values.round(4).tolist())
            if s == sites.vision_out:
                fitted[name] = probe
        result[name] = {"accuracy": accuracy, "shuffled_labels": control, "chance": _chance(table),
                        "n_test_items": len(probe.test_items)}
        if maps:
            result[name]["maps"] = maps
    if cfg.blank_items:
        blank = data_tasks.empty_canvas_items(vlm.canvas, max(cfg.blank_items, 4), orientation=cfg.orientation)
        blank_store = collect(vlm, blank, site_list, out=out / "blank", batch_size=cfg.batch_size,
                              progress=cfg.progress)
        bands = band_labels(blank, vlm.canvas, 3, cfg.orientation)
        result["position_only"] = [float(Probe.fit(blank_store, bands, site=s, seed=cfg.seed).report.accuracy)
                                   for s in site_list]
    result["_probes"], result["_labels"], result["_items"] = fitted, labels, items
    return result


def depth_swaps(vlm: VLM, cfg: VisionDepthConfig, out: Path) -> dict[str, Any]:
    """Criss-cross object and strip swaps at every vision site: share of pairs answering each word."""
    directions = DIRECTIONS[cfg.orientation]
    keep = None
    if cfg.filter_pairs:
        from .evaluation import answers_correctly

        keep = answers_correctly(vlm)
    pair_set = data_pairs.criss_cross_pairs(data_tasks.task_for(cfg.task, vlm.canvas), vlm.canvas,
                                            directions=directions, n_per_direction=cfg.pairs_per_direction,
                                            max_attempts=cfg.max_attempts, seed=cfg.seed, keep=keep)
    pairs = list(pair_set)
    site_list = _vision_sites(vlm)
    if not pairs:
        return {"n_pairs": 0, "_pairs": []}
    metric = _swap_metric(vlm)
    result = sweep(vlm, pairs, site_list, swap_regions(vlm), metric, pairing="swap", out=out / "swaps",
                   progress=cfg.progress, seed=cfg.seed, batch_size=cfg.batch_size)
    mean = result.mean("pair")
    clean = result.extras["clean"].mean("pair")
    table: dict[str, Any] = {"n_pairs": len(pairs),
                             "clean": {"clean answer": float(clean.sel(metric="clean answer.top1")),
                                       "cf answer": float(clean.sel(metric="cf answer.top1"))}}
    for region in result.coords["region"]:
        table[region] = {name: [float(v) for v in mean.sel(region=region, metric=f"{name}.top1").values]
                         for name in ("clean answer", "cf answer")}
    table["_pairs"] = pairs
    return table


def _swap_metric(vlm: VLM):
    return metrics.combine({"clean answer": metrics.top1(vlm.tokenizer, 0),
                            "cf answer": metrics.top1(vlm.tokenizer, 2)})


def flow(vlm: VLM, cfg: VisionDepthConfig, items: Sequence[Any]) -> dict[str, Any]:
    """Mean attention mass (over items and heads, and per head) between objects, strips and the rest."""
    array = attention_flow(vlm, items[:cfg.flow_items], {"objects": objects, "strips": strips},
                           batch_size=cfg.attention_batch)
    mean = np.nanmean(array.values, axis=2)  # (block, head, from, to)
    rows = {g: np.asarray(n, dtype=float) for g, n in array.attrs["n_rows"].items()}
    total = sum(rows.values())
    return {"row_share": {g: float((n / total).mean()) for g, n in rows.items()},
            "blocks": [int(b) for b in array.coords["block"]], "groups": list(array.coords["from"]),
            "mass": mean.mean(1).round(6).tolist(), "per_head": mean.round(6).tolist(),
            "n_items": len(array.coords["item"]), "max_deviation": float(array.attrs["max_deviation"])}


KNOCKOUTS = MappingProxyType({
    "background ↛ objects": MappingProxyType({"queries": "rest", "keys": objects}),
    "objects ↛ background": MappingProxyType({"queries": objects, "keys": "rest"}),
})
"""The knockouts run in every vision block: which region's queries lose which region's keys."""


def _probe_under(vlm: VLM, cfg: VisionDepthConfig, ko: Knockout, probes: dict[str, Any]) -> dict[str, float]:
    """Accuracy of the clean ``vision_out`` probes on their test images' rows computed under ``ko``."""
    fitted, labels = probes["_probes"], probes["_labels"]
    test = set(fitted["objects"].test_items)
    items = [as_example(it) for it in probes["_items"] if str(it.id) in test]
    correct = {name: [0, 0] for name in fitted}
    for s in range(0, len(items), cfg.attention_batch):
        chunk = items[s:s + cfg.attention_batch]
        batch = vlm.prepare([e.image for e in chunk], [e.prompt for e in chunk])
        reads = [Read(sites.vision_out, None, layout.indices(None, sites.vision_out)) for layout in batch.layouts]
        out = run_attention(vlm, batch, chunk, [ko], reads=reads)
        for example, rows in zip(chunk, out.reads, strict=True):
            x = rows.float().cpu().numpy()
            for name, probe in fitted.items():
                cells = labels[name][example.name]
                ids = np.array(sorted(cells))
                predicted = probe.predict(x[ids])
                correct[name][0] += int((predicted == np.array([cells[i] for i in ids])).sum())
                correct[name][1] += len(ids)
    return {name: hits / max(total, 1) for name, (hits, total) in correct.items()}


def _swap_under(vlm: VLM, cfg: VisionDepthConfig, kos: Sequence[Knockout], pairs: Sequence[Any], region: Any) -> float:
    """Share of pairs answering the counterfactual word when ``region`` is swapped at ``vision_out`` with
    ``kos`` applied in both runs (sources and clean), so the swapped rows are computed under them too."""
    metric = _swap_metric(vlm)
    flips = []
    for s in range(0, len(pairs), cfg.attention_batch):
        chunk = [as_pair(p) for p in pairs[s:s + cfg.attention_batch]]
        sources, cleans = [p.source for p in chunk], [p.clean for p in chunk]
        batch_s = vlm.prepare([e.image for e in sources], [e.prompt for e in sources])
        batch_c = vlm.prepare([e.image for e in cleans], [e.prompt for e in cleans])
        index = [patch_indices(sites.vision_out, resolve_region(region, p, lc), "swap", lc, ls)
                 for p, lc, ls in zip(chunk, batch_c.layouts, batch_s.layouts, strict=True)]
        taken = run_attention(vlm, batch_s, sources, kos, reads=[Read(sites.vision_out, None, s_) for _, s_ in index])
        edits = [Edit.set(sites.vision_out, None, t, rows) for (t, _), rows in zip(index, taken.reads, strict=True)]
        out = run_attention(vlm, batch_c, cleans, kos, edits)
        values, names = metrics.evaluate(metric, out.logits, chunk)
        flips += values[:, names.index("cf answer.top1")].tolist()
    return float(np.mean(flips))


def knockouts(vlm: VLM, cfg: VisionDepthConfig, probes: dict[str, Any], swaps: dict[str, Any]) -> dict[str, Any]:
    """Each knockout of :data:`KNOCKOUTS` in every block: answers, clean ``vision_out`` probes, and the strip and
    background-only swaps at ``vision_out`` (their unknocked values are ``swaps[region]["cf answer"][-1]``)."""
    task_items = getattr(data_tasks, f"{cfg.task}_items")(vlm.canvas)
    directions = DIRECTIONS[cfg.orientation]
    items = [it for it in data_tasks.sample_triples(task_items, cfg.knockout_items * 2, cfg.seed)
             if it.direction in directions][:cfg.knockout_items]
    top1 = metrics.top1(vlm.tokenizer)
    out: dict[str, Any] = {"n_items": len(items), "n_pairs": len(swaps.get("_pairs", []))}
    regions = swap_regions(vlm)
    for name, spec in KNOCKOUTS.items():
        ko = Knockout(**spec, name=name)
        answers = knockout(vlm, items, [ko], top1, batch_size=cfg.attention_batch)
        entry = {"accuracy": float(answers.values.mean()),
                 "clean_accuracy": float(answers.extras["clean"].values.mean()),
                 "probes": _probe_under(vlm, cfg, ko, probes)}
        if swaps.get("_pairs"):
            entry["swap_cf"] = {region: _swap_under(vlm, cfg, [ko], swaps["_pairs"], regions[region])
                                for region in ("strip", "background")}
        out[name] = entry
    return out


def vision_depth(vlm: VLM, cfg: VisionDepthConfig | None = None, out: str | Path | None = None) -> dict[str, Any]:
    """Every measurement of the module docstring on ``vlm`` (working files under ``out``, else a temporary folder).

    Returns a JSON-ready dict: ``sites``, ``probes``, ``swaps``, ``flow``, ``knockouts`` (the last two
    ``None`` for a depth-0 tower) and ``first`` (first site where each probe is above chance and each
    swap flips the answer; ``None`` where none is).
    """
    cfg = cfg or VisionDepthConfig()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(out) if out is not None else Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        names = [str(s) for s in _vision_sites(vlm)]
        log.info("%s: depth probes", vlm.info.name)
        probes = depth_probes(vlm, cfg, work)
        log.info("%s: depth swaps", vlm.info.name)
        swaps = depth_swaps(vlm, cfg, work)
        has_blocks = vlm.n_vision_blocks > 0
        log.info("%s: attention flow and knockouts", vlm.info.name)
        flows = flow(vlm, cfg, probes["_items"]) if has_blocks else None
        knocked = knockouts(vlm, cfg, probes, swaps) if has_blocks else None
    first: dict[str, Any] = {}
    for name in ("objects", "background"):
        p = probes[name]
        position = probes.get("position_only") or [0.0] * len(names)
        bar = [max(p["chance"], c, b) + cfg.margin for c, b in zip(p["shuffled_labels"], position, strict=True)]
        first[f"{name.rstrip('s')}_probe"] = _first(names, [a >= b for a, b in zip(p["accuracy"], bar, strict=True)])
    for region in ("object", "strip", "background"):
        cf = swaps.get(region, {}).get("cf answer")
        first[f"{region}_swap"] = _first(names, [v >= cfg.flip for v in cf]) if cf else None
    clean = lambda d: {k: v for k, v in d.items() if not k.startswith("_")}  # noqa: E731
    return {"model": vlm.info.name, "organism": vlm.info.extra.get("organism"), "config": asdict(cfg),
            "n_vision_blocks": vlm.n_vision_blocks, "sites": names, "probes": clean(probes), "swaps": clean(swaps),
            "flow": flows, "knockouts": knocked, "first": first}
