"""The paper's experiments, each a short composition of the primitives, and the report that shows them.

=====================  ===========================================================================
experiment             composition
=====================  ===========================================================================
Table 1 (behaviour)    ``evaluate`` on the Squares / Shapes / Objects items at the model's canvas
§4 probing (Fig 4)     ``collect`` ``vision_out`` → ``Probe.fit`` (slot labels) → ``Probe.heatmap``
§5 last token (Fig 3)  last-token pairs → ``sweep`` over ``lm_resid(s).last_token``
§6 criss-cross (6/7)   criss-cross pairs → ``sweep`` over ``lm_resid(s)`` × {object, strip} swaps
§7.1 ablation (T5)     ``ablate`` with the ordering ablation, full grid and capped (flat id < 144)
§7.2 (Fig 9)           criss-cross pairs kept under the ablation → object-swap ``sweep`` under it
§8 amplification (T2)  ``steer`` along the slot probe's directions vs random ones → summary
route verdicts         :mod:`spatial_interp.mechanism` on this model and on every shipped organism
=====================  ===========================================================================

Example:
    >>> import tempfile, spatial_interp as si
    >>> from spatial_interp.reproduce import PaperConfig, reproduce
    >>> cfg = PaperConfig(tasks=("squares",), pairs_per_direction=1, eval_limit=8, filter_pairs=False,
    ...                   alphas=(0, 4), amplify_items=4, progress=False)
    >>> summary = reproduce(si.load("tiny-qwen2-vl"), tempfile.mkdtemp(), cfg)
    >>> sorted(summary["experiments"])[:3]
    ['ablation', 'amplification', 'behaviour']
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import site as sites
from .data import pairs as data_pairs
from .data import tasks as data_tasks
from .data.tasks import sample_triples
from .evaluation import answers_correctly, evaluate
from .interventions import collect, metrics
from .interventions.ablate import ablate
from .interventions.paper import criss_cross_regions, paper_ablation
from .interventions.position_control import order_vs_position
from .interventions.probes import Probe, slot_labels
from .interventions.steer import amplification as steer_amplification
from .interventions.steer import random_directions
from .interventions.sweep import SweepMismatchError, sweep
from .mechanism import MechanismConfig, mechanism
from .models.vlm import VLM
from .report import layer_curves, strip_maps, write_report
from .report.html import Section
from .report.verdicts import verdict_section
from .results import LabelledArray, provenance, write_json

log = logging.getLogger(__name__)

METRIC_LABELS = {
    "last_token": {"c0": "clean answer", "c1": "middle", "c2": "clean far side", "c3": "cf answer",
                   "c4": "cf far side"},
    "criss_cross": {"c0": "clean answer", "c1": "middle", "c2": "swapped (cf) answer"},
}


@dataclass(frozen=True)
class PaperConfig:
    """How much of each experiment to run (the paper's sizes are the comments)."""

    tasks: tuple[str, ...] = ("squares", "shapes", "objects")
    pairs_per_direction: int = 12  # paper: 50
    filter_pairs: bool = True  # paper: keep pairs the model answers correctly on both runs
    max_attempts: int = 400  # paper: 2000
    probe_method: str = "logreg"  # paper: "adamw" (full batch, 200 epochs)
    alphas: tuple[float, ...] = tuple(range(16))
    amplify_items: int = 96
    position_items: int = 48  # orderings per shift in §4's absolute-vs-relative control (not in the paper)
    eval_limit: int | None = None  # paper: every item
    ablation_limit: int | None = 96  # items per task under the ablation (paper: every item)
    batch_size: int = 32
    seed: int = 0
    progress: bool = True
    verdict: MechanismConfig | None = dataclasses.field(default_factory=lambda: MECHANISM_SIZES)
    """Sizes of the route verdict (``None`` skips it)."""
    compare_organisms: tuple[str, ...] = ()
    """Shipped organisms whose verdicts are measured beside this model's (their planted truth next to them)."""


MECHANISM_SIZES = MechanismConfig(items=48, pairs_per_direction=5, probe_items=60, batch_size=48)
"""The route verdict at the sizes the ground-truth tests use (tests/organism/test_planted.py)."""


def _keep(vlm: VLM, cfg: PaperConfig, ablation: Any = None) -> Callable[[Any, Any], bool] | None:
    if not cfg.filter_pairs:
        return None
    if ablation is None:
        return answers_correctly(vlm)
    score = metrics.top1(vlm.tokenizer)

    def keep(clean: Any, cf: Any) -> bool:  # §7.2: both answered correctly *under* the ablation
        return bool(ablate(vlm, [clean, cf], ablation, metric=score).values.all())

    return keep


def _lm_slots(vlm: VLM) -> list[sites.Site]:
    return [sites.lm_resid(s) for s in range(vlm.n_lm_layers + 1)]


def _resumable_sweep(vlm: VLM, *args: Any, **kwargs: Any) -> LabelledArray:
    """``sweep`` into ``out``: resumes the same work, and recomputes (logged) when the folder holds other work —
    a re-run of ``reproduce`` with other settings into the same folder replaces its results."""
    try:
        return sweep(vlm, *args, **kwargs)
    except SweepMismatchError as error:
        log.warning("%s; recomputing it", error)
        return sweep(vlm, *args, force=True, **kwargs)


def behaviour(vlm: VLM, cfg: PaperConfig) -> dict[str, Any]:
    """Table 1: top-1 accuracy per task and direction."""
    results = {}
    for task in cfg.tasks:
        items = sample_triples(getattr(data_tasks, f"{task}_items")(vlm.canvas), cfg.eval_limit, cfg.seed)
        results[task] = evaluate(vlm, items, task=task, batch_size=cfg.batch_size, progress=cfg.progress)
    return results


def probing(vlm: VLM, cfg: PaperConfig, out: Path, task: str = "squares") -> dict[str, Any]:
    """§4: slot probes on ``vision_out`` per orientation, test accuracy, strip maps over every cell."""
    found = {}
    for orientation in ("horizontal", "vertical"):
        items = data_tasks.probing_items(data_tasks.task_for(task, vlm.canvas), vlm.canvas, orientation)
        items = [items[i] for i in range(len(items))]
        acts = out / f"acts-{orientation}"
        if acts.exists():
            # Scratch activations of an earlier run into this folder: the probe is refitted from fresh ones.
            shutil.rmtree(acts)
        store = collect(vlm, items, [sites.vision_out], out=acts, batch_size=cfg.batch_size,
                        progress=cfg.progress)
        classes = ["left", "middle", "right"] if orientation == "horizontal" else ["top", "middle", "bottom"]
        probe = Probe.fit(store, slot_labels(items, vlm.canvas), site=sites.vision_out, method=cfg.probe_method,
                          classes=classes, seed=cfg.seed)
        probe.save(out / f"probe-{orientation}")
        found[orientation] = {"probe": probe, "heatmap": probe.heatmap(store, probe.test_items)}
    return found


def last_token(vlm: VLM, cfg: PaperConfig, out: Path, task: str = "squares") -> LabelledArray:
    """§5 / Fig 3: the cf run's final-position residual patched into the clean run, one slot at a time."""
    pair_set = data_pairs.last_token_pairs(data_tasks.task_for(task, vlm.canvas), vlm.canvas,
                                           n_per_direction=cfg.pairs_per_direction, max_attempts=cfg.max_attempts,
                                           seed=cfg.seed, keep=_keep(vlm, cfg))
    return _resumable_sweep(vlm, list(pair_set), [s.last_token for s in _lm_slots(vlm)], None,
                            metrics.answer_probs(vlm.tokenizer), out=out, progress=cfg.progress, seed=cfg.seed)


def criss_cross(vlm: VLM, cfg: PaperConfig, out: Path, task: str = "squares", ablation: Any = None) -> LabelledArray:
    """§6 / Figs 6–7 (and §7.2 / Fig 9 with ``ablation``): swap object or strip regions at each LM slot."""
    pair_set = data_pairs.criss_cross_pairs(data_tasks.task_for(task, vlm.canvas), vlm.canvas,
                                            n_per_direction=cfg.pairs_per_direction, max_attempts=cfg.max_attempts,
                                            seed=cfg.seed, keep=_keep(vlm, cfg, ablation))
    regions = criss_cross_regions(vlm)
    if ablation is not None:
        regions = {"object": regions["object"]}  # the ablation equalises the background: strips are moot
    return _resumable_sweep(vlm, list(pair_set), _lm_slots(vlm), regions, metrics.answer_probs(vlm.tokenizer),
                            pairing="swap", ablation=ablation, out=out, progress=cfg.progress, seed=cfg.seed)


def ordering_ablation(vlm: VLM, cfg: PaperConfig) -> dict[str, dict[str, float]]:
    """Table 5: accuracy with the vision encoder's ordering information ablated (full grid and capped)."""
    table: dict[str, dict[str, float]] = {}
    for variant, cap in (("full", None), ("capped", 144)):
        ablation = paper_ablation(vlm.canvas, background_cap=cap)
        for task in cfg.tasks:
            limits = [n for n in (cfg.eval_limit, cfg.ablation_limit) if n is not None]
            limit = min(limits) if limits else None
            chosen = sample_triples(getattr(data_tasks, f"{task}_items")(vlm.canvas), limit, cfg.seed)
            correct = ablate(vlm, chosen, ablation, batch_size=cfg.batch_size)
            table.setdefault(variant, {})[task] = float(correct.values.mean())
    return table


def amplification(vlm: VLM, cfg: PaperConfig, probes: dict[str, Any], task: str = "squares") -> dict[str, Any]:
    """§8 analogue on synthetic items: amplify each axis's slot-probe directions at every image position of
    ``lm_resid(0)``, against seeded random directions; the None / Probe / Probe* / Random / Random* row."""
    items = list(data_tasks.random_layout_items(data_tasks.task_for(task, vlm.canvas), vlm.canvas,
                                                cfg.amplify_items, seed=cfg.seed + 101, sub_cell=True))
    axis = {"horizontal": probes["horizontal"]["probe"].directions,
            "vertical": probes["vertical"]["probe"].directions}
    control = {name: random_directions(vlm.d_model, d.shape[0], seed=cfg.seed + k)
               for k, (name, d) in enumerate(axis.items())}

    def by_axis(table: dict[str, Any]) -> Callable[[Any], Any]:
        return lambda example: table[example.source.orientation]

    summary, probe_run, random_run = steer_amplification(
        vlm, items, by_axis(axis), cfg.alphas, random=by_axis(control), seed=cfg.seed, batch_size=cfg.batch_size,
        progress=cfg.progress)
    return {"summary": summary, "probe": probe_run, "random": random_run}


def probing_section(probes: dict[str, Any], control: dict[str, Any]) -> Section:
    """§4: the paper's fixed-layout probe maps, and the absolute-vs-relative control that any claim about
    *ordering* rests on (every sentence computed from the numbers)."""
    fixed = {o: p["probe"].report.accuracy for o, p in probes.items()}
    r, e = control["random"], control["empty"]
    text = ("Probes trained on entity cells of the paper's fixed layout; test accuracy "
            + ", ".join(f"{o} {a:.3f}" for o, a in fixed.items())
            + f" (chance {1 / 3:.3f}). On the fixed layout a probe that reads only where a token sits scores as "
            "well, so these numbers alone support no claim about ordering. The control (horizontal, squares): "
            f"trained on the triple shifted by {control['shifts']} cells, tested on other shifts "
            f"{control['shifted']['accuracy_mean']:.3f}; on random layouts {r['accuracy']:.3f} against a "
            f"position-only baseline of {r['position_baseline']:.3f}")
    if r.get("conflict_accuracy") is not None:
        text += (f", and {r['conflict_accuracy']:.3f} on the {r['n_conflict_rows']} tokens where position and "
                 "order disagree — " + ("the probe follows order" if r["conflict_accuracy"] > 0.5 else
                                         "the probe does not follow order there"))
    text += (f". Blank-canvas tokens give their column band at {e['accuracy']:.3f} (chance {e['chance']:.3f}): "
             + ("the tokens carry absolute position." if e["accuracy"] > e["chance"] + 0.1 else
                "the tokens carry no absolute position."))
    figures = [strip_maps(p["heatmap"], title=f"{o}, fixed layout (test accuracy {p['probe'].report.accuracy:.3f})")
               for o, p in probes.items()]
    for name, maps in control["heatmaps"].items():
        if name != "fixed":
            figures.append(strip_maps(LabelledArray(np.asarray(maps), ("class", "row", "col"),
                                                    {"class": control["classes"]}),
                                      title=f"horizontal probe of the fixed layout on images shifted {name[5:]} cells"))
    return Section("§4 — slot probes on vision_out", text, figures)


def route_verdicts(vlm: VLM, cfg: PaperConfig) -> list[dict[str, Any]]:
    """The mechanism verdict of ``vlm`` and of each organism in ``cfg.compare_organisms`` (loaded here)."""
    from .models.load import load

    verdict_cfg = dataclasses.replace(cfg.verdict, seed=cfg.seed)
    results = [mechanism(vlm, verdict_cfg)]
    for name in cfg.compare_organisms:
        if name != vlm.info.name:
            results.append(mechanism(load(name), verdict_cfg))
    return results


def reproduce(vlm: VLM, out: str | Path, cfg: PaperConfig | None = None) -> dict[str, Any]:
    """Run every experiment on ``vlm``; results under ``out`` and ``out/report.html``; returns the summary."""
    cfg = cfg or PaperConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"config": dataclasses.asdict(cfg), "experiments": {}}
    sections: list[Section] = []
    exp = summary["experiments"]

    log.info("Table 1: behaviour")
    table1 = behaviour(vlm, cfg)
    exp["behaviour"] = {t: {"accuracy": r.accuracy, "n": r.n, "per_direction": r.per_direction()}
                        for t, r in table1.items()}
    sections.append(Section("Table 1 — behavioural accuracy", "Top-1 of the final position, normalised.",
                            table=[["task", "n", "accuracy", *["left", "right", "above", "below"]]] + [
                                [t, str(r.n), f"{r.accuracy:.3f}",
                                 *[f"{r.per_direction().get(d, {}).get('accuracy', float('nan')):.3f}"
                                   for d in ("left", "right", "above", "below")]] for t, r in table1.items()]))

    log.info("§4 probing")
    probes = probing(vlm, cfg, out / "probing")
    exp["probing"] = {o: p["probe"].report.to_dict() for o, p in probes.items()}
    control = order_vs_position(vlm, "squares", sites.vision_out, n_items=cfg.position_items, sub_cell=True,
                                seed=cfg.seed,
                                shuffled_control=False, batch_size=cfg.batch_size)
    exp["probing_control"] = {k: control[k] for k in ("summary", "shifts", "fixed", "random", "empty")}
    exp["probing_control"]["shifted_mean"] = control["shifted"]["accuracy_mean"]
    sections.append(probing_section(probes, control))

    log.info("§5 last-token patching")
    lt = last_token(vlm, cfg, out / "last_token")
    exp["last_token"] = {"n_pairs": len(lt.coords["pair"]), "mean": lt.mean("pair").values.tolist()}
    sections.append(Section("§5 — last-token patching (Fig 3)", f"{len(lt.coords['pair'])} pairs.",
                            [layer_curves(lt, labels=METRIC_LABELS["last_token"],
                                          title="cf final-position residual patched into the clean run")]))

    log.info("§6 criss-cross patching")
    cc = criss_cross(vlm, cfg, out / "criss_cross")
    exp["criss_cross"] = {"n_pairs": len(cc.coords["pair"]), "mean": cc.mean("pair").values.tolist(),
                          "regions": cc.coords["region"]}
    sections.append(Section("§6 — criss-cross patching (Figs 6/7)", f"{len(cc.coords['pair'])} pairs; swap of the "
                            "outer object slots vs of the outer strips at each LM slot.",
                            [layer_curves(cc, region=r, labels=METRIC_LABELS["criss_cross"], title=f"{r} swap")
                             for r in cc.coords["region"]]))

    log.info("§7.1 ordering ablation")
    exp["ablation"] = ordering_ablation(vlm, cfg)
    sections.append(Section("Table 5 — vision-encoder ordering ablated at lm_resid(0)",
                            "Entity slots take isolated-middle references, the background the empty canvas.",
                            table=[["variant", *cfg.tasks]] + [[v, *[f"{a[t]:.3f}" for t in cfg.tasks]]
                                                                for v, a in exp["ablation"].items()]))

    log.info("§7.2 criss-cross under ablation")
    under = criss_cross(vlm, cfg, out / "criss_cross_ablated", ablation=paper_ablation(vlm.canvas))
    exp["criss_cross_ablated"] = {"n_pairs": len(under.coords["pair"]),
                                  "mean": under.mean("pair").values.tolist() if len(under.coords["pair"]) else []}
    sections.append(Section("§7.2 — object swap under the ablation (Fig 9)",
                            f"{len(under.coords['pair'])} pairs answered correctly under the ablation.",
                            [layer_curves(under, region="object", labels=METRIC_LABELS["criss_cross"])]))

    log.info("§8 amplification")
    amp = amplification(vlm, cfg, probes)
    exp["amplification"] = amp["summary"]
    row = amp["summary"]
    sections.append(Section("§8 — amplifying the slot-probe directions at lm_resid(0)",
                            "Random-layout items; α grid " + ", ".join(f"{a:g}" for a in cfg.alphas) + ".",
                            table=[["None", "Probe", "Probe*", "Random", "Random*", "best α", "% errors fixed"],
                                   [f"{row['none_acc']:.3f}", f"{row['probe_acc']:.3f}", f"{row['probe_star_acc']:.3f}",
                                    f"{row['random_acc']:.3f}", f"{row['random_star_acc']:.3f}",
                                    str(row['best_probe_alpha']), f"{row['probe_pct_errors_fixed']:.1f}"]]))

    if cfg.verdict is not None:
        log.info("route verdicts")
        verdicts = route_verdicts(vlm, cfg)
        exp["verdicts"] = verdicts
        sections.append(verdict_section(verdicts, title="Which route carries order — measured verdicts"))

    summary["provenance"] = provenance(vlm, seed=cfg.seed, config=summary["config"])
    write_json(out / "summary.json", summary)
    write_report(sections, out / "report.html", title=f"spatial_interp — {vlm.info.name}")
    summary["report"] = str(out / "report.html")
    return summary

