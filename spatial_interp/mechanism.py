"""Which route carries order? The paper's protocol, run on one model, and a verdict computed from it.

Two routes can tell the LM which entity is left of which (the paper's "dual mechanisms"):

- the **vision route**: the vision tokens' *content* says where each entity sits (or what is next to
  it), and the LM reads that content;
- the **LM positional route**: the LM reads *where* an image token sits in its sequence (M-RoPE /
  RoPE positions, causal order) and orders identity-only tokens by that.

Each route has a knockout that leaves the other intact, measured on the paper's Table 1 items:

=========================  ===========================================================================
knockout                   composition
=========================  ===========================================================================
row permutation            :func:`~spatial_interp.interventions.permute_image_rows` at ``lm_resid(0)``:
                           every image row moves to another image position (removes the positional
                           route; the vision route survives)
§7.1 ordering ablation     :func:`~spatial_interp.interventions.ablate` with the paper's references
                           (removes the positional content of the vision tokens; the positional
                           route survives)
=========================  ===========================================================================

and two readings corroborate them: the criss-cross object and strip swaps (``sweep`` with
``pairing="swap"``) at ``vision_out`` and every LM slot, where the two routes *disagree* (the
swapped tokens' content names the counterfactual order, their positions the clean one), and slot
probes at each site against a label-shuffled control.

A route is **present** when its knockout of the *other* route keeps at least ``retain`` (default
half) of the clean accuracy's margin over the order-blind level (0.5: a model that knows the three
identities but not their order picks one of the two non-reference entities). Every sentence of the
verdict is built from these numbers.

Example:
    >>> import spatial_interp as si
    >>> from spatial_interp.mechanism import MechanismConfig, measure, verdict
    >>> cfg = MechanismConfig(items=8, pairs_per_direction=1, filter_pairs=False, probe_items=12)
    >>> numbers = measure(si.load("tiny-qwen2-vl"), cfg)
    >>> sorted(verdict(numbers, cfg))
    ['lm_position_route', 'on_conflict', 'vision_route']
"""

from __future__ import annotations

import logging
import random
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import site as sites
from .data import pairs as data_pairs
from .data import tasks as data_tasks
from .data.tasks import sample_triples
from .evaluation import answers_correctly
from .interventions import collect, metrics
from .interventions.ablate import ablate
from .interventions.paper import criss_cross_regions, paper_ablation
from .interventions.permute import permute_image_rows
from .interventions.position_control import order_vs_position
from .interventions.probes import Probe, relabelled_per_item, slot_labels
from .interventions.sweep import sweep
from .models.vlm import VLM

log = logging.getLogger(__name__)

ORDER_BLIND = 0.5
"""Accuracy of a model that knows the three identities but not their order (two candidates)."""
PAPER_CHANCE = 1 / 3
"""The paper's chance level (one of three entities)."""
AXES = {"horizontal": ("left", "right"), "vertical": ("above", "below")}


@dataclass(frozen=True)
class MechanismConfig:
    """Sizes of the measurements and the verdict's thresholds."""

    task: str = "squares"
    items: int = 96
    """Table 1 items (whole triples, all four directions) for the clean, permuted and ablated runs."""
    pairs_per_direction: int = 8
    filter_pairs: bool = True
    """Keep criss-cross pairs the model answers correctly on both runs (the paper's filter)."""
    max_attempts: int = 400
    probe_items: int = 120
    """§4 probing images per orientation (120 = every ordered Squares triple)."""
    position_items: int = 48
    """Orderings per shift (and random layouts) of the absolute-vs-relative probe control (0 skips it)."""
    retain: float = 0.5
    """A route is present when the other route's knockout keeps this share of the clean margin over 0.5."""
    batch_size: int = 32
    seed: int = 0
    progress: bool = False


def _by_axis(correct: np.ndarray, items: list[Any]) -> dict[str, float]:
    out = {}
    for axis, directions in AXES.items():
        mask = np.array([it.direction in directions for it in items])
        if mask.any():
            out[axis] = float(correct[mask].mean())
    return out


def _lm_slots(vlm: VLM) -> list[sites.Site]:
    return [sites.lm_resid(s) for s in range(vlm.n_lm_layers + 1)]


def knockouts(vlm: VLM, cfg: MechanismConfig) -> dict[str, Any]:
    """Clean, row-permuted and §7.1-ablated accuracy on the same Table 1 items (overall and per axis)."""
    items = sample_triples(getattr(data_tasks, f"{cfg.task}_items")(vlm.canvas), cfg.items, cfg.seed)
    permuted = permute_image_rows(vlm, items, seed=cfg.seed, batch_size=cfg.batch_size)
    clean = permuted.sel(condition="clean").values[:, 0]
    shuffled = permuted.sel(condition="permuted").values[:, 0]
    ablated = ablate(vlm, items, paper_ablation(vlm.canvas), batch_size=cfg.batch_size).values[:, 0]
    return {
        "n_items": len(items),
        "clean": {"accuracy": float(clean.mean()), "by_axis": _by_axis(clean, items)},
        "permuted": {"accuracy": float(shuffled.mean()), "by_axis": _by_axis(shuffled, items), "site": "lm_resid(0)"},
        "ablated": {"accuracy": float(ablated.mean()), "by_axis": _by_axis(ablated, items), "site": "lm_resid(0)"},
    }


def swaps(vlm: VLM, cfg: MechanismConfig, out: Path) -> dict[str, Any]:
    """Criss-cross object and strip swaps at ``vision_out`` and each LM slot: share of pairs whose top-1
    becomes the counterfactual answer ("follows the swapped content") or stays the clean answer."""
    keep = answers_correctly(vlm) if cfg.filter_pairs else None
    pair_set = data_pairs.criss_cross_pairs(data_tasks.task_for(cfg.task, vlm.canvas), vlm.canvas,
                                            n_per_direction=cfg.pairs_per_direction, max_attempts=cfg.max_attempts,
                                            seed=cfg.seed, keep=keep)
    pairs = list(pair_set)
    site_list = [sites.vision_out, *_lm_slots(vlm)]
    if not pairs:
        return {"n_pairs": 0, "sites": [str(s) for s in site_list]}
    metric = metrics.combine({"clean answer": metrics.top1(vlm.tokenizer, 0),
                              "cf answer": metrics.top1(vlm.tokenizer, 2)})
    result = sweep(vlm, pairs, site_list, criss_cross_regions(vlm), metric, pairing="swap", out=out,
                   progress=cfg.progress, seed=cfg.seed)
    mean = result.mean("pair")
    table: dict[str, Any] = {"n_pairs": len(pairs), "sites": [str(s) for s in site_list]}
    for region in result.coords["region"]:
        table[region] = {name: [float(v) for v in mean.sel(region=region, metric=f"{name}.top1").values]
                         for name in ("clean answer", "cf answer")}
    return table


def probes(vlm: VLM, cfg: MechanismConfig, out: Path) -> dict[str, Any]:
    """Held-out accuracy of 3-class slot probes (horizontal layouts) at ``vision_out`` and every LM slot,
    beside the same probe fitted on labels shuffled within each image (its chance level, measured)."""
    task = data_tasks.task_for(cfg.task, vlm.canvas)
    items = data_tasks.probing_items(task, vlm.canvas, "horizontal")
    items = [items[i] for i in sorted(random.Random(cfg.seed).sample(range(len(items)),
                                                                     min(cfg.probe_items, len(items))))]
    site_list = [sites.vision_out, *_lm_slots(vlm)]
    store = collect(vlm, items, site_list, out=out, batch_size=cfg.batch_size, progress=cfg.progress)
    labels = slot_labels(items, vlm.canvas)
    shuffled = relabelled_per_item(labels, 3, cfg.seed)
    accuracy, control = [], []
    for s in site_list:
        fit = Probe.fit(store, labels, site=s, seed=cfg.seed)
        accuracy.append(float(fit.report.accuracy))
        control.append(float(Probe.fit(store, shuffled, site=s, test_items=fit.test_items, seed=cfg.seed)
                             .report.accuracy))
    return {"sites": [str(s) for s in site_list], "accuracy": accuracy, "shuffled_labels": control,
            "n_items": len(items), "chance": PAPER_CHANCE}


def position_control(vlm: VLM, cfg: MechanismConfig, measured: dict[str, Any] | None = None) -> dict[str, Any]:
    """The vision_out slot probe on the fixed layout (a), across shifts of the triple (b), on random
    layouts (c) and a band probe on blank canvases (d), with the position-only baseline and the accuracy
    where position and order disagree (:func:`~spatial_interp.interventions.position_control.order_vs_position`).

    ``measured``: that function's result for these settings, already computed (``reproduce``'s §4 runs
    the same control), used instead of measuring it again.
    """
    result = measured if measured is not None else order_vs_position(
        vlm, cfg.task, sites.vision_out, n_items=cfg.position_items, sub_cell=True, seed=cfg.seed,
        shuffled_control=False, heatmaps=False, batch_size=cfg.batch_size)
    keep = ("accuracy", "chance", "position_baseline", "conflict_accuracy", "n_conflict_rows")
    return {"summary": result["summary"], "shifts": result["shifts"],
            "fixed": {k: result["fixed"].get(k) for k in keep},
            "shifted": {"accuracy": result["shifted"]["accuracy_mean"],
                        "conflict_accuracy": result["shifted"].get("conflict_accuracy")},
            "random": {k: result["random"].get(k) for k in keep},
            "empty": {k: result["empty"].get(k) for k in ("accuracy", "chance")}}


def measure(vlm: VLM, cfg: MechanismConfig | None = None, out: str | Path | None = None, *,
            measured_position_control: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every measurement of the protocol on ``vlm`` (working files under ``out``, else a temporary folder;
    ``measured_position_control``: see :func:`position_control`)."""
    cfg = cfg or MechanismConfig()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(out) if out is not None else Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        log.info("%s: knockouts", vlm.info.name)
        numbers = {"model": vlm.info.name, "organism": vlm.info.extra.get("organism"), "config": asdict(cfg),
                   "order_blind": ORDER_BLIND, "paper_chance": PAPER_CHANCE}
        numbers["knockouts"] = knockouts(vlm, cfg)
        log.info("%s: criss-cross swaps", vlm.info.name)
        numbers["swaps"] = swaps(vlm, cfg, work / "swaps")
        log.info("%s: slot probes", vlm.info.name)
        numbers["probes"] = probes(vlm, cfg, work / "probe-acts")
        if cfg.position_items:
            log.info("%s: absolute vs relative position control", vlm.info.name)
            numbers["position_control"] = position_control(vlm, cfg, measured_position_control)
    return numbers


def _retained(knocked: float, clean: float) -> float:
    """Share of the clean accuracy's margin over the order-blind level that survives a knockout."""
    margin = clean - ORDER_BLIND
    return float("nan") if margin <= 0 else (knocked - ORDER_BLIND) / margin


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def verdict(numbers: dict[str, Any], cfg: MechanismConfig | None = None) -> dict[str, Any]:
    """Per route: present or absent, with the evidence in words built from ``numbers`` (see module doc)."""
    cfg = cfg or MechanismConfig(**numbers.get("config", {}))
    k = numbers["knockouts"]
    clean = k["clean"]["accuracy"]
    out: dict[str, Any] = {}
    if clean - ORDER_BLIND <= 0:
        reason = (f"undetermined: clean accuracy {clean:.2f} is not above the order-blind level {ORDER_BLIND:.2f}, "
                  "so no knockout can show a route")
        return {"vision_route": {"present": None, "evidence": reason},
                "lm_position_route": {"present": None, "evidence": reason}, "on_conflict": reason}

    def route(knock: str, what: str) -> dict[str, Any]:
        acc = k[knock]["accuracy"]
        kept = _retained(acc, clean)
        present = bool(kept >= cfg.retain)
        axes = ", ".join(f"{a} {v:.2f}" for a, v in k[knock]["by_axis"].items())
        return {"present": present, "retained": kept,
                "evidence": (f"{'present' if present else 'absent'}: with {what}, accuracy is {acc:.2f} ({axes}) "
                             f"against {clean:.2f} clean and {ORDER_BLIND:.2f} order-blind, keeping "
                             f"{_pct(max(kept, 0))} of the margin (threshold {_pct(cfg.retain)})")}

    out["vision_route"] = route("permuted", "the image rows permuted at lm_resid(0) (positions say nothing)")
    out["lm_position_route"] = route("ablated", "the vision tokens' positional content ablated (§7.1)")

    s = numbers["swaps"]
    p = numbers["probes"]
    extra_v = []
    if s.get("n_pairs"):
        cf, kept_clean = s["object"]["cf answer"][0], s["object"]["clean answer"][0]
        extra_v.append(f"criss-cross object swap at vision_out: {_pct(cf)} of {s['n_pairs']} pairs follow the "
                       f"swapped content, {_pct(kept_clean)} keep the clean answer")
        out["on_conflict"] = (
            f"where content and position disagree (object swap at vision_out, {s['n_pairs']} pairs), "
            f"{_pct(cf)} of answers follow the vision tokens' content and {_pct(kept_clean)} follow position"
            + (": content dominates" if cf > kept_clean else ": position dominates" if kept_clean > cf else ""))
    else:
        out["on_conflict"] = "not measured: no criss-cross pair passed the filter"
    if p.get("sites"):
        extra_v.append(f"slot probe at vision_out on the paper's fixed layout {p['accuracy'][0]:.2f} (shuffled-label "
                       f"control {p['shuffled_labels'][0]:.2f}, chance {PAPER_CHANCE:.2f}; position alone can score "
                       "this)")
    pc = numbers.get("position_control")
    if pc:
        r = pc["random"]
        conflict = r.get("conflict_accuracy")
        extra_v.append(f"trained on shifted fixed layouts, it scores {pc['shifted']['accuracy']:.2f} on other shifts "
                       f"and {r['accuracy']:.2f} on random layouts (position-only baseline {r['position_baseline']:.2f}"
                       + ("" if conflict is None else
                          f"; {conflict:.2f} on the {r['n_conflict_rows']} tokens where position and order disagree")
                       + f"); blank-canvas tokens give their column band at {pc['empty']['accuracy']:.2f} "
                       f"(chance {pc['empty']['chance']:.2f})")
    if extra_v:
        out["vision_route"]["evidence"] += "; " + "; ".join(extra_v)
    if p.get("sites") and len(p["sites"]) > 2:
        # From lm_resid(1) on: lm_resid(0)'s image rows are the spliced vision_out rows themselves.
        best = int(np.argmax(p["accuracy"][2:])) + 2
        out["lm_position_route"]["evidence"] += (f"; after LM layer 0 the best slot probe reads "
                                                 f"{p['accuracy'][best]:.2f} at {p['sites'][best]} "
                                                 f"(control {p['shuffled_labels'][best]:.2f})")
    return out


def planted_truth(numbers: dict[str, Any]) -> dict[str, bool] | None:
    """The routes an organism was built to have (from its ``organism.json``), if it is a planted organism."""
    organism = numbers.get("organism") or {}
    return organism.get("planted")


def mechanism(vlm: VLM, cfg: MechanismConfig | None = None, out: str | Path | None = None, *,
              measured_position_control: dict[str, Any] | None = None) -> dict[str, Any]:
    """:func:`measure` then :func:`verdict`: ``{"numbers": …, "verdict": …, "planted": …}``."""
    cfg = cfg or MechanismConfig()
    numbers = measure(vlm, cfg, out, measured_position_control=measured_position_control)
    return {"numbers": numbers, "verdict": verdict(numbers, cfg), "planted": planted_truth(numbers)}
