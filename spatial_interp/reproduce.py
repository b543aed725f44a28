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
vision depth           :mod:`spatial_interp.vision_depth`: probes, swaps, attention flow and knockouts per block
attribution            ``attribute`` over every cell × site on criss-cross pairs, checked against exact patching
route verdicts         :mod:`spatial_interp.mechanism` on this model and on every shipped organism
=====================  ===========================================================================

The shipped organisms' verdicts depend only on the settings, so they are measured in a background
process (:mod:`spatial_interp.background`) while the other experiments run.

Example:
    >>> import tempfile, spatial_interp as si
    >>> from spatial_interp.reproduce import PaperConfig, reproduce
    >>> cfg = PaperConfig(tasks=("squares",), pairs_per_direction=1, eval_limit=8, filter_pairs=False,
    ...                   alphas=(0, 4), amplify_items=4, position_items=12, progress=False, verdict=None,
    ...                   vision_depth=None)
    >>> summary = reproduce(si.load("tiny-qwen2-vl"), tempfile.mkdtemp(), cfg)
    >>> sorted(summary["experiments"])[:3]
    ['ablation', 'amplification', 'behaviour']
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import site as sites
from .attribution_experiment import AttributionConfig, attribution_map
from .background import Background, Task
from .data import pairs as data_pairs
from .data import tasks as data_tasks
from .data.tasks import sample_triples
from .evaluation import answers_correctly, evaluate
from .interventions import collect, metrics
from .interventions.ablate import ReferenceCache, ablate
from .interventions.fingerprint import weights_key
from .interventions.paper import criss_cross_regions, paper_ablation
from .interventions.position_control import order_vs_position
from .interventions.probes import Probe, relabelled_per_item, slot_labels
from .interventions.steer import amplification as steer_amplification
from .interventions.steer import random_directions
from .interventions.sweep import SweepMismatchError, sweep
from .mechanism import MechanismConfig, mechanism
from .models.vlm import VLM
from .progress import experiment
from .report import write_report
from .report.reproduction import paper_sections, verdict_sections
from .results import LabelledArray, folder_lock, git_commit, provenance, write_json
from .vision_depth import VisionDepthConfig, vision_depth

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
"""What a ``reproduce`` folder was made by (the run key and its parts); checked before any work."""
STAGE_FILE = "result.json"
"""Written last in each experiment's folder: its result, reused when the run key matches."""


class ReproduceMismatchError(ValueError):
    """``--out`` already holds a reproduce run made with other settings."""


@dataclass(frozen=True)
class PaperConfig:
    """How much of each experiment to run (the paper's sizes are the comments; :meth:`paper_sizes`).

    The defaults are sized for the main job on a laptop CPU (about 25 s on the shipped organism); every
    number the report states carries its sample size and interval, so smaller samples read as wider
    intervals, not as different findings.
    """

    tasks: tuple[str, ...] = ("squares", "shapes", "objects")
    pairs_per_direction: int = 6  # paper: 50
    filter_pairs: bool = True  # paper: keep pairs the model answers correctly on both runs
    max_attempts: int = 400  # paper: 2000
    probe_method: str = "logreg"  # paper: "adamw" (full batch, 200 epochs)
    alphas: tuple[float, ...] = tuple(range(16))
    amplify_items: int = 32  # paper: 440 COCO items (synthetic layouts here)
    position_items: int = 32  # orderings per shift in §4's absolute-vs-relative control (not in the paper)
    eval_limit: int | None = 64  # Table 1 items per task, whole triples (paper: every item, None)
    ablation_limit: int | None = 32  # items per task under the ablation (paper: every item)
    batch_size: int = 32
    seed: int = 0
    progress: bool = True
    background: bool = True
    """Measure the compared organisms' verdicts in a second process meanwhile (no number changes)."""
    verdict: MechanismConfig | None = dataclasses.field(default_factory=lambda: MECHANISM_SIZES)
    """Sizes of the route verdict (``None`` skips it)."""
    compare_organisms: tuple[str, ...] = ()
    """Shipped organisms whose verdicts are measured beside this model's (their planted truth next to them)."""
    compare_verdict: MechanismConfig | None = dataclasses.field(default_factory=lambda: COMPARED_SIZES)
    """Sizes of the compared organisms' verdicts (``None``: those of ``verdict``)."""
    vision_depth: VisionDepthConfig | None = dataclasses.field(default_factory=lambda: VISION_DEPTH_SIZES)
    """Sizes of the look inside the vision encoder (not in the paper; ``None`` skips it)."""
    attribution: AttributionConfig | None = dataclasses.field(default_factory=lambda: ATTRIBUTION_SIZES)
    """Attribution patching over every cell × site, checked against exact patching (``None`` skips it)."""


    @classmethod
    def paper_sizes(cls, **changes: Any) -> PaperConfig:
        """The paper's sample sizes: 50 pairs per direction from 2000 draws, the AdamW probe, every
        Table 1 item under evaluation and the ablation, 440 amplified items."""
        return cls(**{**PAPER_SIZES, **changes})


PAPER_SIZES = {"pairs_per_direction": 50, "max_attempts": 2000, "probe_method": "adamw", "eval_limit": None,
               "ablation_limit": None, "amplify_items": 440}
"""The :class:`PaperConfig` fields the paper sets (``--paper-sizes``)."""

MECHANISM_SIZES = MechanismConfig(items=32, pairs_per_direction=3, probe_items=36, position_items=32,
                                  batch_size=48)
"""The route verdict in the main job: 32 Table 1 items per knockout, 12 criss-cross pairs, 36 probe images
(each planted organism's verdict at these sizes is a ground-truth test: tests/organism/test_planted.py;
the absolute-vs-relative control at §4's 32 orderings, so it is measured once;
measured margins: the kept share of the clean margin is 1.00 where a route is planted, ≤ 0 where not)."""
COMPARED_SIZES = dataclasses.replace(MECHANISM_SIZES, position_items=0)
"""The compared organisms' verdicts: every measurement that decides a route (the knockouts) and the swaps
and probes beside them, without the absolute-vs-relative control, which is measured on the model under
study (§4) and costs a third of a verdict."""
VISION_DEPTH_SIZES = VisionDepthConfig(probe_items=24, blank_items=4, pairs_per_direction=2, flow_items=1,
                                       knockout_items=8)
"""The vision-encoder depth profile at the sizes of tests/organism/test_vision_depth.py."""

ATTRIBUTION_SIZES = AttributionConfig(pairs_per_direction=1, cell_check=48)
"""Attribution patching at one pair per direction (4 pairs) with 48 checked cell points: the map and its
agreement with exact patching at the main job's size (``spatial-interp attribute`` runs 8 pairs, 64 points)."""

NOT_IN_KEY = ("progress", "background")
"""Settings that do not change any number (left out of the run key)."""


def _keep(vlm: VLM, cfg: PaperConfig, ablation: Any = None, cache: ReferenceCache | None = None) -> Any:
    """The paper's pair filter (both runs answered correctly; §7.2: *under* the ablation), judged in batches."""
    if not cfg.filter_pairs:
        return None
    return answers_correctly(vlm, ablation=ablation, cache=cache, batch_size=cfg.batch_size)


def _lm_slots(vlm: VLM) -> list[sites.Site]:
    return [sites.lm_resid(s) for s in range(vlm.n_lm_layers + 1)]


def _resumable_sweep(vlm: VLM, *args: Any, **kwargs: Any) -> LabelledArray:
    """``sweep`` into ``out``: resumes the same work; a folder left by other work (a ``--force`` re-run) is
    recomputed, logged."""
    try:
        return sweep(vlm, *args, **kwargs)
    except SweepMismatchError as error:
        log.warning("%s; recomputing it", error)
        return sweep(vlm, *args, force=True, **kwargs)


# --- the experiments: each returns (plain JSON-able result, named labelled arrays) -------------------------

Outcome = tuple[dict[str, Any], dict[str, LabelledArray]]


def behaviour(vlm: VLM, cfg: PaperConfig) -> dict[str, Any]:
    """Table 1: top-1 accuracy per task and direction."""
    results = {}
    for task in cfg.tasks:
        items = sample_triples(getattr(data_tasks, f"{task}_items")(vlm.canvas), cfg.eval_limit, cfg.seed)
        results[task] = evaluate(vlm, items, task=task, batch_size=cfg.batch_size, progress=cfg.progress)
    return results


def _behaviour_stage(vlm: VLM, cfg: PaperConfig, out: Path) -> Outcome:
    return {t: {"accuracy": r.accuracy, "n": r.n, "correct": int(sum(r.correct)), "per_direction": r.per_direction()}
            for t, r in behaviour(vlm, cfg).items()}, {}


def probing(vlm: VLM, cfg: PaperConfig, out: Path, task: str = "squares") -> dict[str, Any]:
    """§4: slot probes on ``vision_out`` per orientation, test accuracy with a label-shuffled control,
    strip maps over every cell; the probes are saved under ``out``."""
    found = {}
    for orientation in ("horizontal", "vertical"):
        items = data_tasks.probing_items(data_tasks.task_for(task, vlm.canvas), vlm.canvas, orientation)
        items = [items[i] for i in range(len(items))]
        acts = out / f"acts-{orientation}"
        if acts.exists():
            # Scratch activations of an interrupted run: the probe is refitted from fresh ones.
            shutil.rmtree(acts)
        store = collect(vlm, items, [sites.vision_out], out=acts, batch_size=cfg.batch_size,
                        progress=cfg.progress)
        classes = ["left", "middle", "right"] if orientation == "horizontal" else ["top", "middle", "bottom"]
        labels = slot_labels(items, vlm.canvas)
        probe = Probe.fit(store, labels, site=sites.vision_out, method=cfg.probe_method,
                          classes=classes, seed=cfg.seed)
        shuffled = Probe.fit(store, relabelled_per_item(labels, 3, cfg.seed), site=sites.vision_out,
                             method=cfg.probe_method, classes=classes, test_items=probe.test_items, seed=cfg.seed)
        probe.save(out / f"probe-{orientation}")
        test_item = next(it for it in items if it.id in set(probe.test_items))
        found[orientation] = {"probe": probe, "heatmap": probe.heatmap(store, probe.test_items),
                              "shuffled_accuracy": float(shuffled.report.accuracy), "stimulus": test_item.image}
        shutil.rmtree(acts)  # the activations are scratch: the probe, its maps and its report are kept
    return found


def _probing_stage(vlm: VLM, cfg: PaperConfig, out: Path) -> Outcome:
    probes = probing(vlm, cfg, out)
    result: dict[str, Any] = {}
    arrays: dict[str, LabelledArray] = {}
    for orientation, found in probes.items():
        result[orientation] = {**found["probe"].report.to_dict(), "shuffled_labels": found["shuffled_accuracy"],
                               "n_test_items": len(found["probe"].test_items), "chance": 1 / 3}
        arrays[f"map-{orientation}"] = found["heatmap"]
        found["stimulus"].save(out / f"stimulus-{orientation}.png")
    control = order_vs_position(vlm, "squares", sites.vision_out, n_items=cfg.position_items, sub_cell=True,
                                seed=cfg.seed, shuffled_control=False, batch_size=cfg.batch_size)
    result["position_control"] = {k: v for k, v in control.items() if k != "heatmaps"}
    for name, maps in control["heatmaps"].items():
        if name != "fixed":
            arrays[f"control-{name}"] = LabelledArray(np.asarray(maps), ("class", "row", "col"),
                                                      {"class": control["classes"]})
    return result, arrays


def last_token(vlm: VLM, cfg: PaperConfig, out: Path, task: str = "squares") -> LabelledArray:
    """§5 / Fig 3: the cf run's final-position residual patched into the clean run, one slot at a time."""
    pair_set = data_pairs.last_token_pairs(data_tasks.task_for(task, vlm.canvas), vlm.canvas,
                                           n_per_direction=cfg.pairs_per_direction, max_attempts=cfg.max_attempts,
                                           seed=cfg.seed, keep=_keep(vlm, cfg))
    return _resumable_sweep(vlm, list(pair_set), [s.last_token for s in _lm_slots(vlm)], None,
                            metrics.answer_probs(vlm.tokenizer), out=out, progress=cfg.progress, seed=cfg.seed)


def criss_cross(vlm: VLM, cfg: PaperConfig, out: Path, task: str = "squares", ablation: Any = None,
                cache: ReferenceCache | None = None) -> LabelledArray:
    """§6 / Figs 6–7 (and §7.2 / Fig 9 with ``ablation``): swap object or strip regions at each LM slot."""
    pair_set = data_pairs.criss_cross_pairs(data_tasks.task_for(task, vlm.canvas), vlm.canvas,
                                            n_per_direction=cfg.pairs_per_direction, max_attempts=cfg.max_attempts,
                                            seed=cfg.seed, keep=_keep(vlm, cfg, ablation, cache))
    regions = criss_cross_regions(vlm)
    if ablation is not None:
        regions = {"object": regions["object"]}  # the ablation equalises the background: strips are moot
    return _resumable_sweep(vlm, list(pair_set), _lm_slots(vlm), regions, metrics.answer_probs(vlm.tokenizer),
                            pairing="swap", ablation=ablation, out=out, progress=cfg.progress, seed=cfg.seed,
                            reference_cache=cache)


def _sweep_outcome(result: LabelledArray) -> Outcome:
    n = len(result.coords["pair"])
    summary = {"n_pairs": n, "metrics": list(result.coords["metric"]), "sites": [str(s) for s in result.coords["site"]],
               "mean": result.mean("pair").values.tolist() if n else []}
    if "region" in result.axes:
        summary["regions"] = list(result.coords["region"])
    return summary, {"sweep": result}


def ordering_ablation(vlm: VLM, cfg: PaperConfig, cache: ReferenceCache | None = None) -> dict[str, dict[str, Any]]:
    """Table 5: accuracy with the vision encoder's ordering information ablated (full grid and capped)."""
    table: dict[str, dict[str, Any]] = {}
    limits = [n for n in (cfg.eval_limit, cfg.ablation_limit) if n is not None]
    limit = min(limits) if limits else None
    for variant, cap in (("full", None), ("capped", 144)):
        ablation = paper_ablation(vlm.canvas, background_cap=cap)
        for task in cfg.tasks:
            chosen = sample_triples(getattr(data_tasks, f"{task}_items")(vlm.canvas), limit, cfg.seed)
            correct = ablate(vlm, chosen, ablation, batch_size=cfg.batch_size, cache=cache).values[:, 0]
            table.setdefault(variant, {})[task] = {"accuracy": float(correct.mean()), "correct": int(correct.sum()),
                                                   "n": int(correct.size)}
    return table


def amplification(vlm: VLM, cfg: PaperConfig, probes: dict[str, Probe], task: str = "squares") -> dict[str, Any]:
    """§8 analogue on synthetic items: amplify each axis's slot-probe directions at every image position of
    ``lm_resid(0)``, against seeded random directions; the None / Probe / Probe* / Random / Random* row."""
    items = data_tasks.random_layout_items(data_tasks.task_for(task, vlm.canvas), vlm.canvas, cfg.amplify_items,
                                           seed=cfg.seed + 101, sub_cell=True)  # rendered a chunk at a time
    axis = {name: probe.directions for name, probe in probes.items()}
    control = {name: random_directions(vlm.d_model, d.shape[0], seed=cfg.seed + k)
               for k, (name, d) in enumerate(axis.items())}

    def by_axis(table: dict[str, Any]) -> Callable[[Any], Any]:
        return lambda example: table[example.source.orientation]

    summary, probe_run, random_run = steer_amplification(
        vlm, items, by_axis(axis), cfg.alphas, random=by_axis(control), seed=cfg.seed, batch_size=cfg.batch_size,
        progress=cfg.progress)
    return {"summary": summary, "probe": probe_run, "random": random_run}


def _amplification_stage(vlm: VLM, cfg: PaperConfig, out: Path, probing_folder: Path) -> Outcome:
    probes = {o: Probe.load(probing_folder / f"probe-{o}") for o in ("horizontal", "vertical")}
    amp = amplification(vlm, cfg, probes)
    curves = {name: amp[name].sel(metric="top1").values.mean(1).tolist() for name in ("probe", "random")}
    return {"summary": amp["summary"], "alphas": [float(a) for a in cfg.alphas], "accuracy_by_alpha": curves,
            "n_items": len(amp["probe"].coords["item"])}, {"probe": amp["probe"], "random": amp["random"]}


def _attribution_outcome(found: dict[str, Any]) -> Outcome:
    arrays = {name: found[name] for name in ("regions", "cells") if found.get(name) is not None}
    return {k: v for k, v in found.items() if k not in ("regions", "cells")}, arrays


def organism_verdict(name: str, cfg: dict[str, Any], weights: str | None = None,
                     position_control: dict[str, Any] | None = None) -> dict[str, Any]:
    """The mechanism verdict of the shipped organism ``name`` at the :class:`MechanismConfig` fields ``cfg``
    (module-level, with JSON arguments, for the background worker). ``weights``: refuse an organism whose
    weights are not these (the run's own model, by :func:`weights_key`); ``position_control``: §4's
    measurement of the same control, reused (see :func:`~spatial_interp.mechanism.measure`)."""
    return mechanism(_organism(name, weights), MechanismConfig(**cfg), measured_position_control=position_control)


def organism_vision_depth(name: str, weights: str, cfg: dict[str, Any], out: str) -> dict[str, Any]:
    """The vision-depth experiment on the shipped organism ``name`` at the :class:`VisionDepthConfig` fields
    ``cfg`` (module-level, with JSON arguments, for the background worker); refuses an organism whose
    weights are not ``weights`` (the run's own model, by :func:`weights_key`)."""
    return vision_depth(_organism(name, weights), VisionDepthConfig(**cfg), out=Path(out))


def _organism(name: str, weights: str | None) -> VLM:
    """The shipped organism ``name``, refused unless its weights are ``weights`` (when given)."""
    from .models.load import load

    vlm = load(name)
    if weights is not None and weights_key(vlm) != weights:
        raise ValueError(f"{name} loads with other weights than the run's model ({weights_key(vlm)} != {weights})")
    return vlm


def _loadable_by_name(vlm: VLM) -> bool:
    """Whether a second process gets this very model from its name (a shipped organism, as loaded by default)."""
    import torch

    return vlm.info.source == "organism" and vlm.dtype == torch.float32 and str(vlm.device) == "cpu"


def _vision_depth_result(vlm: VLM, depth_cfg: VisionDepthConfig, folder: Path,
                         task: Task[dict[str, Any]] | None) -> dict[str, Any]:
    if task is not None:
        found = _worker_answer(task, "inside the vision encoder")
        if found is not None:
            return found
        shutil.rmtree(folder / "work", ignore_errors=True)  # what the failed worker left
    return vision_depth(vlm, depth_cfg, out=folder / "work")


def _worker_answer(task: Task[dict[str, Any]], what: str) -> dict[str, Any] | None:
    """``task``'s result, or ``None`` with a warning when the worker failed (then it is measured here)."""
    try:
        return task.result()
    except Exception as error:  # noqa: BLE001 - measured here instead, the same experiment
        log.warning("%s: the background worker failed (%s); measuring it here", what, error)
        return None


def _verdict_config(cfg: PaperConfig) -> MechanismConfig:
    return dataclasses.replace(cfg.verdict, seed=cfg.seed)


def route_verdicts(vlm: VLM, cfg: PaperConfig, compared: list[Task[dict[str, Any]]] | None = None, *,
                   measured_position_control: dict[str, Any] | None = None,
                   own: Task[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The mechanism verdict of ``vlm``, then of each organism in ``cfg.compare_organisms`` (``compared``:
    their verdicts already submitted, in that order, to a :class:`~spatial_interp.background.Background`;
    ``measured_position_control``: §4's absolute-vs-relative control, when it ran at the verdict's settings;
    ``own``: ``vlm``'s verdict submitted there too, taken back and measured here if not started yet)."""
    log.info("route verdict: %s", vlm.info.name)
    results = [_own_verdict(vlm, cfg, own, measured_position_control)]
    tasks = compared if compared is not None else _submit_compared(vlm, cfg, Background(enabled=False))
    for name, task in zip(_compared(vlm, cfg), tasks, strict=True):
        log.info("route verdict: %s", name)
        results.append(task.result())
    return results


def _own_verdict(vlm: VLM, cfg: PaperConfig, task: Task[dict[str, Any]] | None,
                 position_control: dict[str, Any] | None) -> dict[str, Any]:
    # A task the worker has not started is withdrawn: measured on this process's model, not reloaded.
    found = None
    if task is not None and not task.cancel():
        found = _worker_answer(task, f"route verdict of {vlm.info.name}")
    if found is not None:
        return found
    return mechanism(vlm, _verdict_config(cfg), measured_position_control=position_control)


def _shared_position_control(cfg: PaperConfig, results: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """§4's absolute-vs-relative control when the verdict's would be the same measurement (same task, site,
    orderings and seed; only the batch size may differ), so it is computed once."""
    verdict = _verdict_config(cfg)
    if verdict.task != "squares" or verdict.position_items != cfg.position_items or not verdict.position_items:
        return None
    return results.get("probing", {}).get("position_control")


def _compared(vlm: VLM, cfg: PaperConfig) -> list[str]:
    return [name for name in cfg.compare_organisms if name != vlm.info.name]


def _submit_compared(vlm: VLM, cfg: PaperConfig, background: Background) -> list[Task[dict[str, Any]]]:
    fields = dataclasses.asdict(dataclasses.replace(cfg.compare_verdict or cfg.verdict, seed=cfg.seed))
    return [background.submit(organism_verdict, name, fields) for name in _compared(vlm, cfg)]


# --- running them, resumably -------------------------------------------------------------------------------

def run_key(vlm: VLM, cfg: PaperConfig) -> dict[str, Any]:
    """Everything that changes the numbers of a run: model, weights, dtype, every size and seed, and the code."""
    from . import __version__

    config = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_IN_KEY}
    parts = {"model": vlm.info.name, "revision": vlm.info.revision, "weights": weights_key(vlm),
             "dtype": str(vlm.dtype).replace("torch.", ""), "config": config, "package_version": __version__,
             "git_commit": git_commit()}
    parts = json.loads(json.dumps(parts, default=str))  # as stored in run.json (tuples as lists), for comparing
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]
    return {"key": digest, "parts": parts}


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    found = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if isinstance(a, dict) and isinstance(b, dict):
            found += _differences(a, b, f"{prefix}{name}.")
        elif a != b:
            found.append(f"{prefix}{name}: {_short(a)} → {_short(b)}")
    return found


def check_out_folder(out: Path, key: dict[str, Any], *, force: bool = False) -> None:
    """Refuse, before any work, a folder holding a run with another key (unless ``force``: then clear it)."""
    run_file = out / RUN_FILE
    if not run_file.is_file():
        return
    previous = json.loads(run_file.read_text())
    if previous.get("key") == key["key"]:
        return
    if not force:
        changed = _differences(previous.get("parts", {}), key["parts"])
        raise ReproduceMismatchError(
            f"--out {out} already holds a reproduce run with other settings ({'; '.join(changed[:6]) or 'unknown'}"
            f"{'; …' if len(changed) > 6 else ''}); give a new --out folder, or --force to discard that run "
            "and start afresh")
    log.warning("--force: discarding the earlier run in %s", out)
    for name in (*STAGES, "report.html", "summary.json", "provenance.json", RUN_FILE):
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


STAGES = ("behaviour", "probing", "last_token", "criss_cross", "ablation", "criss_cross_ablated", "amplification",
          "vision_depth", "attribution", "verdicts")


STAGE_LABELS = {"behaviour": "Table 1", "probing": "§4 probes", "last_token": "§5 last token",
                "criss_cross": "§6 criss-cross", "ablation": "Table 5 ablation",
                "criss_cross_ablated": "§7.2 under the ablation", "amplification": "§8 amplification",
                "vision_depth": "inside the vision encoder", "attribution": "attribution patching",
                "verdicts": "route verdicts"}


def _finished(out: Path, name: str, key: str) -> bool:
    done = out / name / STAGE_FILE
    return done.is_file() and json.loads(done.read_text()).get("key") == key


def _stage(out: Path, name: str, key: str, compute: Callable[[Path], Outcome]) -> Outcome:
    """The result of experiment ``name``: reused from ``out/name`` when its key matches, else computed
    (an interrupted sweep inside continues from its chunks) and written, result file last."""
    folder = out / name
    done = folder / STAGE_FILE
    label = STAGE_LABELS.get(name, name)
    if done.is_file():
        record = json.loads(done.read_text())
        if record.get("key") == key:
            log.info("%s: reusing the finished result in %s", label, folder)
            return record["result"], {a: LabelledArray.load(folder / "arrays" / a) for a in record["arrays"]}
    log.info("%s: running", label)
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with experiment(label):
        result, arrays = compute(folder)
    log.info("%s: done in %.1f s", label, time.perf_counter() - started)
    for array_name, array in arrays.items():
        array.save(folder / "arrays" / array_name)
    write_json(done, {"key": key, "result": result, "arrays": sorted(arrays)})
    return result, arrays


def _model_record(vlm: VLM) -> dict[str, Any]:
    from .models.load import ORGANISM_DIR, ORGANISM_PREFIX

    record = {"name": vlm.info.name, "source": vlm.info.source, "arch": vlm.arch, "revision": vlm.info.revision,
              "n_lm_layers": vlm.n_lm_layers, "n_vision_blocks": vlm.n_vision_blocks, "d_model": vlm.d_model,
              "extra": {k: v for k, v in vlm.info.extra.items()}}
    if vlm.info.source == "organism":
        card = ORGANISM_DIR / vlm.info.name[len(ORGANISM_PREFIX):] / "MODEL_CARD.md"
        record["card"] = card.resolve().as_uri() if card.is_file() else None
    return record


def reproduce(vlm: VLM, out: str | Path, cfg: PaperConfig | None = None, *, force: bool = False) -> dict[str, Any]:
    """Run every experiment on ``vlm``; results under ``out`` and ``out/report.html``; returns the summary.

    Re-running with the same model and settings into the same ``out`` reuses each finished experiment
    (its result file carries the run key) and continues an interrupted one; other settings are refused
    before any work (:class:`ReproduceMismatchError`) unless ``force`` discards the earlier run.
    """
    cfg = cfg or PaperConfig()
    out = Path(out)
    key = run_key(vlm, cfg)
    check_out_folder(out, key, force=force)
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out), Background(enabled=cfg.background) as background:
        if not (out / RUN_FILE).is_file():
            write_json(out / RUN_FILE, key)
            write_json(out / "provenance.json", provenance(vlm, seed=cfg.seed, config=key["parts"]["config"]))
        k = key["key"]
        cache = ReferenceCache()  # §7.1 and §7.2 share their reference activations
        results: dict[str, dict[str, Any]] = {}
        arrays: dict[str, dict[str, LabelledArray]] = {}

        def stage(name: str, compute: Callable[[Path], Outcome]) -> None:
            results[name], arrays[name] = _stage(out, name, k, compute)

        depth_cfg = dataclasses.replace(cfg.vision_depth, seed=cfg.seed) if cfg.vision_depth is not None else None
        depth_task = None
        if (depth_cfg is not None and cfg.background and _loadable_by_name(vlm)
                and not _finished(out, "vision_depth", k)):
            # First in the worker's queue: needed before the panel; taken back here if not started by then.
            depth_task = background.submit(organism_vision_depth, vlm.info.name, key["parts"]["weights"],
                                           dataclasses.asdict(depth_cfg), str(out / "vision_depth" / "work"))
        compared = None
        if cfg.verdict is not None and _compared(vlm, cfg) and not _finished(out, "verdicts", k):
            log.info("route verdicts of %s: measuring in %s", ", ".join(_compared(vlm, cfg)),
                     "a background process meanwhile" if cfg.background else "this process, last")
            compared = _submit_compared(vlm, cfg, background)

        stage("behaviour", lambda folder: _behaviour_stage(vlm, cfg, folder))
        stage("probing", lambda folder: _probing_stage(vlm, cfg, folder))
        own_verdict = None
        if (cfg.verdict is not None and cfg.background and _loadable_by_name(vlm)
                and not _finished(out, "verdicts", k)):
            # Last in the worker's queue (it needs §4's control): whichever process is free first measures it.
            own_verdict = background.submit(organism_verdict, vlm.info.name,
                                            dataclasses.asdict(_verdict_config(cfg)), key["parts"]["weights"],
                                            _shared_position_control(cfg, results))
        stage("last_token", lambda folder: _sweep_outcome(last_token(vlm, cfg, folder / "sweep")))
        stage("criss_cross", lambda folder: _sweep_outcome(criss_cross(vlm, cfg, folder / "sweep")))
        stage("ablation", lambda folder: (ordering_ablation(vlm, cfg, cache), {}))
        stage("criss_cross_ablated", lambda folder: _sweep_outcome(
            criss_cross(vlm, cfg, folder / "sweep", ablation=paper_ablation(vlm.canvas), cache=cache)))
        stage("amplification", lambda folder: _amplification_stage(vlm, cfg, folder, out / "probing"))
        if depth_cfg is not None:
            stage("vision_depth", lambda folder: (_vision_depth_result(vlm, depth_cfg, folder, depth_task), {}))
        if cfg.attribution is not None:
            atp_cfg = dataclasses.replace(cfg.attribution, seed=cfg.seed)
            stage("attribution", lambda folder: _attribution_outcome(attribution_map(vlm, atp_cfg)))
        summary = {"run_key": k, "model": _model_record(vlm), "weights": key["parts"]["weights"],
                   "config": key["parts"]["config"], "experiments": results}
        images = {o: out / "probing" / f"stimulus-{o}.png" for o in ("horizontal", "vertical")}
        prov = json.loads((out / "provenance.json").read_text())
        # The paper's sections are drawn while the worker may still be measuring the last verdicts.
        sections = paper_sections(summary, arrays, provenance=prov, stimuli=images)
        if cfg.verdict is not None:
            stage("verdicts", lambda folder: ({"models": route_verdicts(
                vlm, cfg, compared, measured_position_control=_shared_position_control(cfg, results),
                own=own_verdict)}, {}))
        write_json(out / "summary.json", summary)
        write_report([*sections, *verdict_sections(results)], out / "report.html",
                     title=f"spatial_interp — {vlm.info.name}")
    return {**summary, "report": str(out / "report.html")}
