"""The reproduction report: the stored results of a ``reproduce`` run turned into sections of prose,
tables and figures, with the paper beside them.

Input is plain data (``summary["experiments"]``, each experiment's labelled arrays, the run's
provenance), so the report can be rebuilt from a finished folder and knows nothing of how the
numbers were made. Every sentence is assembled from those numbers: a level is called "above chance"
only when its 95 % interval lies above chance, a pattern "agrees with the paper" only when the
measured pattern has the paper's shape, and a result that contradicts the paper says so.

Example:
    >>> describe_level(0.35, (0.30, 0.40), 1 / 3)
    'at chance (0.333)'
    >>> describe_level(0.9, (0.8, 0.95), 1 / 3)
    'above chance (0.333)'
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data.published import CHANCE, DIRECTIONS, Reference, reference_model
from ..results import LabelledArray
from ..stats import bootstrap_mean_ci, wilson_interval
from .attribution import attribution_section
from .figures import alpha_curves, layer_curves, region_heatmap, strip_maps
from .html import Section
from .verdicts import ROUTES, verdict_section
from .vision_depth import vision_depth_section

ABLATION_COST = 0.10
"""An ablation "costs accuracy" when it drops it by more than this (well above the sampling noise of ~100 items
per task, whose 95 % interval is about ±0.09 at 0.5)."""
PROBE_OVER_RANDOM = 0.05
"""§8: the probe beats random directions when it fixes at least this fraction more of the failed items."""


def describe_level(value: float, interval: tuple[float, float], chance: float) -> str:
    """``above chance`` / ``below chance`` / ``at chance`` from where the 95 % interval lies."""
    low, high = interval
    if low > chance:
        return f"above chance ({chance:.3f})"
    if high < chance:
        return f"below chance ({chance:.3f})"
    return f"at chance ({chance:.3f})"


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def _interval(correct: int, n: int) -> tuple[float, float]:
    return wilson_interval(correct, n) if n else (float("nan"), float("nan"))


def _ci_text(value: float, interval: tuple[float, float]) -> str:
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"


def _slot(site: str) -> str:
    s = int(site.split(".")[1].split(":")[0])
    return "Embed" if s == 0 else f"L{s - 1}"


def _spans(flags: Sequence[bool], labels: Sequence[str]) -> str:
    """``Embed–L1, L3`` for the runs of True."""
    runs, start = [], None
    for i, flag in enumerate([*flags, False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            runs.append(labels[start] if i - 1 == start else f"{labels[start]}–{labels[i - 1]}")
            start = None
    return ", ".join(runs) if runs else "none"


# --- banner ------------------------------------------------------------------------------------------------

def model_kind(model: Mapping[str, Any], reference: Reference) -> str:
    """What the model is, from its load record (tiny random / organism planted or measured / checkpoint)."""
    source = model.get("source")
    organism = model.get("extra", {}).get("organism")
    if source == "tiny":
        seed = model.get("extra", {}).get("seed")
        return (f"an architecture-exact tiny {model['arch']} model with random weights (seed {seed}): it has learned "
                "nothing, so every measurement below should sit at its chance or control level")
    if source == "organism":
        planted = (organism or {}).get("planted") if isinstance(organism, Mapping) else None
        card = f" (model card: {model['card']})" if model.get("card") else ""
        if planted:
            labels = dict(ROUTES)
            routes = ", ".join(f"{labels.get(name, name)} {'present' if on else 'absent'}"
                               for name, on in sorted(planted.items(), key=lambda kv: kv[0] != "vision_route"))
            return (f"a model organism — a tiny {model['arch']} model trained in this package — with a planted "
                    f"mechanism ({routes}){card}")
        return (f"a model organism — a tiny {model['arch']} model trained in this package — whose mechanism was "
                f"measured after training, not planted{card}")
    if reference.exact:
        return f"a real checkpoint: {reference.name}, one of the paper's three models"
    return f"a real checkpoint ({model['arch']}), not one of the paper's models"


def banner_section(summary: Mapping[str, Any], provenance: Mapping[str, Any], reference: Reference) -> Section:
    """Which model, what it is, what it is compared with, and what produced the numbers."""
    model = summary["model"]
    kind = model_kind(model, reference)
    comparison = (f"Published values are {reference.name}'s ({reference.reason})." if reference.exact else
                  f"Paper values in the tables are {reference.name}'s, as a labelled reference ({reference.reason}); "
                  "they describe that model, not this one.")
    cfg = summary["config"]
    prov_model = provenance.get("model", {})
    dirty = provenance.get("git_dirty")
    rows = [["field", "value"],
            ["model", str(model["name"])],
            ["architecture", f"{model['arch']}: {model['n_lm_layers']} LM layers, {model['n_vision_blocks']} vision "
                             f"blocks, d_model {model['d_model']}"],
            ["dtype", str(prov_model.get("dtype", "—"))],
            ["weights (sha256 of the state dict)", str(summary.get("weights", "—"))],
            ["package version", str(provenance.get("package_version"))],
            ["git commit", f"{provenance.get('git_commit') or 'not a git checkout'}"
                           + ("" if dirty is None else " (working tree dirty)" if dirty else " (clean tree)")],
            ["library versions", ", ".join(f"{k} {v}" for k, v in provenance.get("versions", {}).items())],
            ["seed", str(cfg.get("seed"))],
            ["run key", str(summary["run_key"])],
            ["config", json.dumps({k: v for k, v in cfg.items() if k != "verdict"}, default=str)]]
    text = f"{model['name']} is {kind}. {comparison}"
    return Section("What was measured", text, table=rows)


# --- Table 1 -----------------------------------------------------------------------------------------------

def behaviour_section(result: Mapping[str, Any], reference: Reference) -> Section:
    paper = reference.model.table1
    rows = [["task", "n", "accuracy [95 % CI]", *DIRECTIONS, f"{reference.name}: paper", "authors' files"]]
    sentences = []
    for task, r in result.items():
        interval = _interval(r["correct"], r["n"])
        per = r["per_direction"]
        published = paper.get(task)
        rows.append([task, str(r["n"]), _ci_text(r["accuracy"], interval),
                     *[_fmt(per.get(d, {}).get("accuracy")) for d in DIRECTIONS],
                     _fmt(published.paper if published else None), _fmt(published.repo if published else None)])
        weakest = min(per, key=lambda d: per[d]["accuracy"]) if per else None
        sentences.append(f"{task} {r['accuracy']:.3f}, {describe_level(r['accuracy'], interval, CHANCE)}"
                         + (f", weakest direction {weakest} {per[weakest]['accuracy']:.3f}" if weakest else "")
                         + (f" (paper: {published.paper:.2f})" if published and published.paper is not None else ""))
    text = ("Top-1 of the final position, normalised, over a seeded sample of each task's items; chance is "
            f"{CHANCE:.3f} (three entities). " + "; ".join(sentences) + ".")
    return Section("Table 1 — behavioural accuracy", text, table=rows)


# --- §4 ----------------------------------------------------------------------------------------------------

def probing_section(result: Mapping[str, Any], arrays: Mapping[str, LabelledArray], reference: Reference,
                    stimuli: Mapping[str, Path]) -> Section:
    published = reference.model.probe.get("squares")
    parts = []
    for k, orientation in enumerate(("horizontal", "vertical")):
        r = result[orientation]
        interval = _interval(round(r["accuracy"] * r["n_test_rows"]), r["n_test_rows"])
        parts.append(f"{orientation} {r['accuracy']:.3f} on {r['n_test_rows']} held-out entity tokens, "
                     f"{describe_level(r['accuracy'], interval, CHANCE)}; label-shuffled control "
                     f"{r['shuffled_labels']:.3f}" + (f"; paper ({reference.name}, squares) {published[k]:.3f}"
                                                      if published else ""))
    control = result["position_control"]
    rand, empty = control["random"], control["empty"]
    text = ("Slot probes (left / middle / right) trained on the entity tokens of vision_out on the paper's fixed "
            "layout: " + "; ".join(parts) + ". On the fixed layout a probe that reads only where a token sits "
            "scores as well, so these numbers alone support no claim about ordering. The control (horizontal, "
            f"squares): trained on the triple shifted by {control['shifts']} cells, tested on other shifts "
            f"{control['shifted']['accuracy_mean']:.3f}; on random layouts {rand['accuracy']:.3f} against a "
            f"position-only baseline of {rand['position_baseline']:.3f}")
    if rand.get("conflict_accuracy") is not None:
        text += (f", and {rand['conflict_accuracy']:.3f} on the {rand['n_conflict_rows']} tokens where position and "
                 "order disagree — " + ("the probe follows order there" if rand["conflict_accuracy"] > 0.5 else
                                        "the probe does not follow order there"))
    text += (f". Blank-canvas tokens give their column band at {empty['accuracy']:.3f} (chance {empty['chance']:.3f}): "
             + ("the tokens carry absolute position." if empty["accuracy"] > empty["chance"] + 0.1 else
                "the tokens carry no absolute position."))
    figures = []
    for orientation in ("horizontal", "vertical"):
        r = result[orientation]
        image = Image.open(stimuli[orientation]) if stimuli.get(orientation) and Path(stimuli[orientation]).is_file() \
            else None
        figures.append(strip_maps(arrays[f"map-{orientation}"], image=image,
                                  title=f"{orientation} slot probe at vision_out, fixed layout",
                                  caption=f"mean class probability per cell over {r['n_test_items']} held-out images; "
                                          f"test accuracy {r['accuracy']:.3f} (chance {CHANCE:.3f})"))
    for name, maps in sorted(arrays.items()):
        if name.startswith("control-"):
            figures.append(strip_maps(maps, title=f"horizontal fixed-layout probe on images shifted {name[13:]} cells",
                                      caption="does the probe's map move with the objects (order) or stay (position)?"))
    return Section("§4 — slot probes on vision_out", text, figures)


# --- §5, §6, §7.2 ------------------------------------------------------------------------------------------

def _leaders(mean: np.ndarray, names: Sequence[str], labels: Sequence[str]) -> list[tuple[str, str]]:
    """``[(answer, slots it leads at), …]`` in order of first appearance."""
    top = [names[i] for i in mean.argmax(0)]
    order = list(dict.fromkeys(top))
    return [(name, _spans([t == name for t in top], labels)) for name in order]


def last_token_section(result: Mapping[str, Any], arrays: Mapping[str, LabelledArray], reference: Reference
                       ) -> Section:
    sweep = arrays.get("sweep")
    n = result["n_pairs"]
    if sweep is None or n == 0:
        return Section("§5 — last-token patching (Fig 3)", "No pair passed the filter (both runs answered "
                       "correctly), so nothing was patched.")
    arr = sweep.sel(region=sweep.coords["region"][0]) if "region" in sweep.axes else sweep
    arr = arr.transpose("metric", "site", "pair")
    names = list(arr.coords["metric"])
    labels = [_slot(str(s)) for s in arr.coords["site"]]
    mean = np.asarray(arr.values, dtype=float).mean(-1)
    leaders = _leaders(mean, names, labels)
    text = (f"{n} pairs. The cf run's final-position residual is patched into the clean run at one slot at a time; "
            "the answer with the highest probability after the patch: "
            + "; ".join(f"{name} at {spans}" for name, spans in leaders) + ". ")
    sequence = [name for name, _ in leaders]
    ordinal = "clean image at cf slot"
    shape = bool(sequence) and sequence[0] == "clean answer" and sequence[-1] == "cf answer"
    text += (f"Paper ({reference.name}): {reference.model.findings.get('last_token', 'no layer-wise finding given')} "
             if reference.model.findings.get("last_token") else "")
    if shape:
        text += ("As in the paper, the clean answer leads at early slots and the cf answer at late ones"
                 + ("; the ordinal stage (the clean image's entity at the cf slot leading in between) appears too."
                    if ordinal in sequence else
                    "; the paper's ordinal stage between them (the clean image's entity at the cf slot) does not "
                    "lead at any slot."))
    else:
        text += ("Unlike the paper, the leaders do not run from the clean answer (early) to the cf answer (late).")
    return Section("§5 — last-token patching (Fig 3)", text,
                   [layer_curves(sweep, title="cf final-position residual patched into the clean run")])


def _flip_slots(sweep: LabelledArray, region: str) -> tuple[list[bool], list[str], np.ndarray, np.ndarray]:
    arr = sweep.sel(region=region).transpose("metric", "site", "pair")
    names = list(arr.coords["metric"])
    values = np.asarray(arr.values, dtype=float)
    cf, clean = values[names.index("cf answer")], values[names.index("clean answer")]
    flips = list(cf.mean(-1) > clean.mean(-1))
    return flips, [_slot(str(s)) for s in arr.coords["site"]], cf, clean


def criss_cross_section(result: Mapping[str, Any], arrays: Mapping[str, LabelledArray], reference: Reference
                        ) -> Section:
    sweep = arrays.get("sweep")
    n = result["n_pairs"]
    title = "§6 — criss-cross patching (Figs 6/7)"
    if sweep is None or n == 0:
        return Section(title, "No pair passed the filter, so nothing was patched.")
    regions = list(sweep.coords["region"])
    parts, flips_by = [], {}
    for region in regions:
        flips, labels, cf, _ = _flip_slots(sweep, region)
        flips_by[region] = flips
        low, mean, high = bootstrap_mean_ci(cf[0])
        parts.append(f"{region} swap: the cf answer wins at {_spans(flips, labels)}; at Embed P(cf answer) = "
                     f"{_ci_text(float(mean), (float(low), float(high)))}")
    clean_cf = sweep.extras.get("clean")
    control = ""
    if clean_cf is not None and "metric" in clean_cf.axes:
        unpatched = float(np.asarray(clean_cf.sel(metric="cf answer").values, dtype=float).mean())
        control = (f" Control: without a patch (what a clean→clean patch gives, tested equal) P(cf answer) = "
                   f"{unpatched:.3f}.")
    text = (f"{n} pairs; the outer object slots, or the outer strips (object plus its background band), trade "
            "places between the clean and the cf run at one LM slot. " + "; ".join(parts) + "." + control + " ")
    finding = reference.model.findings.get("criss_cross")
    if finding:
        text += f"Paper ({reference.name}): {finding} "
    if "strip" in flips_by and "object" in flips_by:
        strip_embed, object_any = flips_by["strip"][0], any(flips_by["object"])
        if strip_embed and not object_any:
            text += "This agrees with the paper: strips carry the order the object tokens alone do not."
        elif not strip_embed:
            text += ("This contradicts the paper: swapping the strips at Embed does not flip the answer, so the "
                     "order is not read from the vision tokens' strips here.")
        else:
            text += ("This differs from the paper: the object swap alone flips the answer at "
                     f"{_spans(flips_by['object'], _flip_slots(sweep, 'object')[1])}.")
    figures = [layer_curves(sweep, region=r, title=f"{r} swap") for r in regions]
    figures.append(region_heatmap(sweep, metric="cf answer", title="P(cf answer) by region swapped and slot"))
    return Section(title, text, figures)


def criss_cross_ablated_section(result: Mapping[str, Any], arrays: Mapping[str, LabelledArray],
                                reference: Reference) -> Section:
    sweep = arrays.get("sweep")
    n = result["n_pairs"]
    title = "§7.2 — object swap under the ablation (Fig 9)"
    if sweep is None or n == 0:
        return Section(title, "No pair was answered correctly on both runs under the ablation, so nothing was "
                              "patched (the model cannot order the entities once the vision ordering is gone).")
    flips, labels, cf, _ = _flip_slots(sweep, "object")
    lm_flips = any(flips[1:])
    text = (f"{n} pairs answered correctly under the §7.1 ablation; the object slots trade places at one slot. The "
            f"cf answer wins at {_spans(flips, labels)}. ")
    finding = reference.model.findings.get("criss_cross_ablated")
    if finding:
        text += f"Paper ({reference.name}): {finding} "
    text += ("As in the paper, swapping the object tokens inside the LM moves the answer: the LM carries the order "
             "on them." if lm_flips else
             "Unlike the paper, no LM layer's object swap flips the answer.")
    return Section(title, text, [layer_curves(sweep, region="object", title="object swap under the ablation")])


# --- Table 5 -----------------------------------------------------------------------------------------------

def ablation_section(result: Mapping[str, Any], behaviour: Mapping[str, Any], reference: Reference) -> Section:
    paper = reference.model
    rows = [["variant", "task", "n", "ablated [95 % CI]", "clean (Table 1)", f"{reference.name}: ablated",
             f"{reference.name}: clean"]]
    drops, reference_drops = [], []
    for variant, per_task in result.items():
        for task, r in per_task.items():
            interval = _interval(r["correct"], r["n"])
            clean = behaviour.get(task, {}).get("accuracy")
            published = paper.table5_capped.get(task) if variant == "capped" else \
                (paper.table5_full[task].repo if task in paper.table5_full else None)
            published_clean = paper.table1[task].paper if task in paper.table1 else None
            rows.append([variant, task, str(r["n"]), _ci_text(r["accuracy"], interval), _fmt(clean),
                         _fmt(published), _fmt(published_clean)])
            if variant == "full" and clean is not None:
                drops.append((task, clean, r["accuracy"], interval))
                if published is not None and published_clean is not None:
                    reference_drops.append(published_clean - published)
    parts = [f"{task} {clean:.3f} → {acc:.3f}, {describe_level(acc, ci, CHANCE)}" for task, clean, acc, ci in drops]
    drops = [(task, clean - acc, acc, ci) for task, clean, acc, ci in drops]
    text = ("Entity slots take isolated-middle references and the background the empty canvas at lm_resid(0), "
            "erasing the position information the vision tokens carry. Full-grid ablation against Table 1: "
            + "; ".join(parts) + ". ")
    if reference_drops:
        text += (f"{reference.name}'s ablation costs {min(reference_drops):.2f}–{max(reference_drops):.2f} of its "
                 "accuracy (full-grid, authors' files). ")
    if drops:
        costly = [task for task, drop, _, _ in drops if drop > ABLATION_COST]
        if len(costly) == len(drops):
            text += ("As in the paper, the ablation costs accuracy on every task: the model reads order from the "
                     "vision tokens.")
        elif not costly:
            text += (f"Unlike the paper, the ablation costs at most {ABLATION_COST:.2f} on every task: this model does "
                     "not need the vision tokens' ordering information.")
        else:
            text += f"The ablation costs more than {ABLATION_COST:.2f} on {', '.join(costly)} only."
    notes = " ".join(paper.notes)
    return Section("Table 5 — vision-encoder ordering ablated at lm_resid(0)",
                   text + (f" Notes on {reference.name}: {notes}" if notes else ""), table=rows)


# --- §8 ----------------------------------------------------------------------------------------------------

def amplification_section(result: Mapping[str, Any], reference: Reference) -> Section:
    row = result["summary"]
    best = row.get("best_probe_alpha")
    table = [["", "None", "Probe", "Probe*", "Random", "Random*"],
             ["accuracy", _fmt(row["none_acc"]), _fmt(row["probe_acc"]), _fmt(row["probe_star_acc"]),
              _fmt(row["random_acc"]), _fmt(row["random_star_acc"])],
             ["% errors fixed", "—", *[_fmt(row[f"{name}_pct_errors_fixed"], 1)
                                       for name in ("probe", "probe_star", "random", "random_star")]],
             ["best α", "—", _fmt(best, 0) if best is not None else "—", "any α > 0",
              _fmt(row.get("best_random_alpha"), 0) if row.get("best_random_alpha") is not None else "—", "any α > 0"]]
    n_failed = row["n_failed"]
    text = (f"{row['n_total']} random-layout synthetic items (COCO images are not available offline); {n_failed} "
            f"answered wrongly without steering (accuracy {row['none_acc']:.3f}). ")
    if n_failed == 0:
        text += "No item failed at baseline, so there was nothing to fix and the amplification is untested here."
    else:
        margin = (row["probe_pct_errors_fixed"] - row["random_pct_errors_fixed"]) / 100
        text += (f"Amplifying the slot-probe directions at every image position fixes "
                 f"{row['probe_pct_errors_fixed']:.1f}% of them at the best single α ({best:g}) and "
                 f"{row['probe_star_pct_errors_fixed']:.1f}% at some α; random directions fix "
                 f"{row['random_pct_errors_fixed']:.1f}% / {row['random_star_pct_errors_fixed']:.1f}%. "
                 + ("The probe direction beats the random control." if margin >= PROBE_OVER_RANDOM else
                    "The probe direction does no better than the random control."))
    if reference.model.amplification:
        text += f" Paper ({reference.name}, COCO two-object questions): {reference.model.amplification}."
    if reference.model.coco_baseline:
        correct, n = reference.model.coco_baseline
        text += f" Its COCO strict baseline is {correct}/{n} = {correct / n:.3f}."
    curves = {"probe directions": result["accuracy_by_alpha"]["probe"],
              "random directions": result["accuracy_by_alpha"]["random"]}
    figure = alpha_curves(curves, result["alphas"], baseline=row["none_acc"],
                          title="accuracy as the directions are amplified",
                          caption=f"n = {result['n_items']} items; mean top-1 correctness per α (α = 0: unsteered)")
    return Section("§8 — amplifying the slot-probe directions at lm_resid(0)", text, [figure], table=table)


# --- all of it ---------------------------------------------------------------------------------------------

def reproduction_sections(summary: Mapping[str, Any], arrays: Mapping[str, Mapping[str, LabelledArray]], *,
                          provenance: Mapping[str, Any], stimuli: Mapping[str, Path] | None = None) -> list[Section]:
    """Every section of the report, in the paper's order, from a run's stored results."""
    return [*paper_sections(summary, arrays, provenance=provenance, stimuli=stimuli),
            *verdict_sections(summary["experiments"])]


def verdict_sections(experiments: Mapping[str, Any]) -> list[Section]:
    """The route verdicts' section, when the run measured them (the report's last)."""
    if "verdicts" not in experiments:
        return []
    return [verdict_section(experiments["verdicts"]["models"], title="Which route carries order — measured verdicts")]


def paper_sections(summary: Mapping[str, Any], arrays: Mapping[str, Mapping[str, LabelledArray]], *,
                   provenance: Mapping[str, Any], stimuli: Mapping[str, Path] | None = None) -> list[Section]:
    """The report's sections before the verdicts: the banner, then each experiment the run holds."""
    model = summary["model"]
    reference = reference_model(model["arch"], model["name"])
    exp = summary["experiments"]
    sections = [banner_section(summary, provenance, reference)]
    if "behaviour" in exp:
        sections.append(behaviour_section(exp["behaviour"], reference))
    if "probing" in exp:
        sections.append(probing_section(exp["probing"], arrays.get("probing", {}), reference, stimuli or {}))
    if "last_token" in exp:
        sections.append(last_token_section(exp["last_token"], arrays.get("last_token", {}), reference))
    if "criss_cross" in exp:
        sections.append(criss_cross_section(exp["criss_cross"], arrays.get("criss_cross", {}), reference))
    if "ablation" in exp:
        sections.append(ablation_section(exp["ablation"], exp.get("behaviour", {}), reference))
    if "criss_cross_ablated" in exp:
        sections.append(criss_cross_ablated_section(exp["criss_cross_ablated"], arrays.get("criss_cross_ablated", {}),
                                                    reference))
    if "amplification" in exp:
        sections.append(amplification_section(exp["amplification"], reference))
    if "vision_depth" in exp:
        sections.append(vision_depth_section(exp["vision_depth"]))
    if "attribution" in exp:
        found = arrays.get("attribution", {})
        if "cells" in found:
            sections.append(attribution_section(found["cells"], found.get("regions")))
        else:
            sections.append(Section("Attribution patching", "No criss-cross pair passed the filter, so nothing "
                                                            "was attributed."))
    return sections
