"""Finish a trained organism: evaluate it, measure its mechanism, write metrics and the model card, ship it.

Example:
    >>> import json
    >>> from spatial_interp.models.load import ORGANISM_DIR
    >>> from spatial_interp.training import SPECS
    >>> from spatial_interp.training.report import model_card
    >>> metrics = json.loads((ORGANISM_DIR / "qwen2-vl" / "metrics.json").read_text())
    >>> "## Measured mechanism" in model_card(SPECS["qwen2_vl"], metrics, {})
    True
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ..models.load import ORGANISM_DIR
from .checkpoint import atomic_write_json, atomic_write_text
from .evaluate import evaluation_suite
from .mechanism import measure_mechanism
from .organisms import CONSTRUCTION, PLANTED_TRUTH, OrganismSpec, mrope_section

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
CARD_FILE = "MODEL_CARD.md"
ORGANISM_FILE = "organism.json"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _load_folder(folder: Path) -> Any:
    from ..models.load import load

    return load(str(folder))


def finalize_organism(spec: OrganismSpec, result: Any, out: Path, *, ship: bool = False, mechanism: bool = True
                      ) -> dict[str, Any]:
    """Evaluate ``out/model``, write ``metrics.json`` and ``MODEL_CARD.md`` into it, optionally ship it."""
    folder = Path(result.model_dir)
    vlm = _load_folder(folder)
    t0 = time.time()
    behaviour = evaluation_suite(vlm, spec.canvas, progress=True)
    log.info("behaviour: %s", json.dumps({k: v.get("accuracy") for k, v in behaviour.items() if k != "table1"}))
    planted = spec.mechanism != "emergent"
    mech = measure_mechanism(vlm) if mechanism and not planted else {}
    if planted:
        atomic_write_json(folder / ORGANISM_FILE, organism_record(spec))
    verdict = measure_verdict(vlm) if mechanism and planted else {}
    n_params = sum(p.numel() for p in vlm.model.parameters())
    size_mb = (folder / "model.safetensors").stat().st_size / 2**20
    training = json.loads((Path(out) / "train_summary.json").read_text())
    metrics = {"behaviour": behaviour, "mechanism": mech, "verdict": verdict, "n_params": n_params,
               "size_mb": size_mb,
               "training": {k: training[k] for k in ("steps", "attempt", "seed", "seconds", "validation", "threads")},
               "eval_seconds": time.time() - t0}
    atomic_write_json(folder / METRICS_FILE, metrics)
    atomic_write_text(folder / CARD_FILE, model_card(spec, metrics, training))
    if ship:
        ship_folder(folder, ORGANISM_DIR / spec.name)
    return metrics


def ship_folder(src: Path, dst: Path) -> None:
    """Copy a finished checkpoint folder into the package, swapping it in atomically."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}."))
    keep = ("model.safetensors", "config.json", "generation_config.json", "processor_config.json", "tokenizer.json",
            "tokenizer_config.json", "chat_template.jinja", METRICS_FILE, CARD_FILE, ORGANISM_FILE)
    try:
        for name in keep:
            if (src / name).is_file():
                shutil.copyfile(src / name, tmp / name)
                # Package data must be world-readable (mkstemp/safetensors create owner-only files).
                (tmp / name).chmod(0o644)
        tmp.chmod(0o755)
        old = dst.parent / f".{dst.name}.old"
        if dst.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dst, old)
        os.replace(tmp, dst)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def refresh_card(spec: OrganismSpec, folder: Path) -> None:
    """Rewrite a finished organism's verdict and card from its stored measurements (no model run): the
    verdict is a pure function of the numbers, so wording or threshold changes need no re-measurement."""
    from ..mechanism import verdict

    metrics = json.loads((folder / METRICS_FILE).read_text())
    if metrics.get("verdict"):
        metrics["verdict"]["verdict"] = verdict(metrics["verdict"]["numbers"])
    atomic_write_json(folder / METRICS_FILE, metrics)
    atomic_write_text(folder / CARD_FILE, model_card(spec, metrics, {}))
    for name in (METRICS_FILE, CARD_FILE):
        (folder / name).chmod(0o644)  # package data: world-readable, as ship_folder leaves it


def organism_record(spec: OrganismSpec) -> dict[str, Any]:
    """``organism.json``: what a planted organism is, read by ``si.load`` into ``vlm.info.extra["organism"]``."""
    return {"mechanism": spec.mechanism, "planted": PLANTED_TRUTH[spec.mechanism],
            "construction": CONSTRUCTION[spec.mechanism]}


def measure_verdict(vlm: Any) -> dict[str, Any]:
    """The toolkit's mechanism verdict (``spatial_interp.mechanism``) at its default sizes."""
    from ..mechanism import mechanism

    return mechanism(vlm)


def verdict_lines(spec: OrganismSpec, result: dict[str, Any]) -> list[str]:
    """The card's planted-mechanism section: the construction, the truth, and the measured verdict."""
    truth = PLANTED_TRUTH[spec.mechanism]
    lines = ["## Planted mechanism", "", CONSTRUCTION[spec.mechanism], "",
             "| route for order | planted | measured (`spatial-interp mechanism`) |", "|---|---|---|"]
    verdict = result.get("verdict", {})
    for key, label in (("vision_route", "vision route (order in the tokens' content)"),
                       ("lm_position_route", "LM positional route (order from where tokens sit)")):
        measured = verdict.get(key, {}).get("present")
        word = "not measured" if measured is None else "present" if measured else "absent"
        lines.append(f"| {label} | {'present' if truth[key] else 'absent'} | {word} |")
    if verdict:
        k = result["numbers"]["knockouts"]
        lines += ["", f"Measured on {k['n_items']} Table 1 Squares items: clean {_pct(k['clean']['accuracy'])}, "
                  f"image rows permuted at lm_resid(0) {_pct(k['permuted']['accuracy'])}, §7.1 ordering ablation "
                  f"{_pct(k['ablated']['accuracy'])} (order-blind level 50%).", "",
                  f"- Vision route: {verdict['vision_route']['evidence']}.",
                  f"- LM positional route: {verdict['lm_position_route']['evidence']}.",
                  f"- On conflict: {verdict['on_conflict']}."]
    return lines + [""]


def mechanism_summary(m: dict[str, Any]) -> str:
    """One paragraph reading the mechanism numbers (derived from them, so it cannot drift from the table)."""
    probe, patch = m["slot_probe"], m["patching"]
    vis = max(probe["h"]["vision_out"], probe["v"]["vision_out"])
    best_site, best = max(((f"{k} ({o})", v) for o in ("h", "v") for k, v in probe[o].items()
                           if k.startswith("lm_resid")), key=lambda kv: kv[1])
    parts = [f"Reading: the slot probe scores {_pct(vis)} at vision_out (chance 33%) and at best {_pct(best)} "
             f"at {best_site}"]
    if vis < 0.5 and patch["background"]["changed"] <= 0.1 and patch["objects_same"]["flip"] >= 0.9:
        parts.append("the spliced vision tokens carry each entity's identity but not its order: copying the "
                     "counterfactual's object cells flips the answer, the background and the criss-cross swap "
                     "(identities kept, context swapped) do not, so whatever order the LM uses comes from where the "
                     "tokens sit (its position encoding), not from what they contain — the opposite of the "
                     "paper's finding for the real models, whose vision tokens and background carry order")
    amp = m["amplification"]
    top = max(amp["probe"], key=lambda a: float(a))
    parts.append(f"amplification leaves accuracy unchanged at α=0 ({_pct(amp['probe']['0'])}) and gives "
                 f"{_pct(amp['probe'][top])} at α={top} (random direction: {_pct(amp['random'][top])})")
    return "; ".join(parts) + "."


def model_card(spec: OrganismSpec, metrics: dict[str, Any], training: dict[str, Any]) -> str:
    """The organism's MODEL_CARD.md text."""
    b = metrics.get("behaviour", {})
    m = metrics.get("mechanism", {})
    t = metrics.get("training", {})
    d = spec.dims
    r = spec.recipe
    lines = [f"# organism-{spec.name}", ""]
    lines += [
        f"A tiny `{'Qwen2VLForConditionalGeneration' if spec.arch == 'qwen2_vl' else 'Gemma3ForConditionalGeneration'}`"
        " trained from scratch by spatial_interp on the paper's synthetic spatial tasks (Squares, Shapes, Objects;"
        " left/right/above/below), so the toolkit's experiments find a real mechanism on a laptop CPU."
        f" Load it with `si.load(\"organism-{spec.name}\")`.",
        "",
        "**What it is not**: not a natural-image model, not a language model, and not a stand-in for the real "
        "checkpoint's numbers. It has only seen white canvases with three entities and the paper's prompts; "
        "any other input is out of distribution.",
        "",
        "## Architecture",
        "",
        f"- {metrics.get('n_params', 0):,} parameters, float32 safetensors of {metrics.get('size_mb', 0):.2f} MB.",
        f"- LM: {d['layers']} decoder layers, width {d['hidden']}, MLP {2 * d['hidden']}, "
        f"{d['hidden'] // 32} heads of 32 (1 KV head).",
        f"- Vision tower: {d['vision_layers']} blocks, width {d['vision_hidden']}"
        + (f", 2-D RoPE theta {d['vision_rope_theta']}." if "vision_rope_theta" in d else "."),
        "- Word-level tokenizer: every prompt word and answer (lower-case and Capitalised) is one token; the "
        "family's real special tokens and chat template.",
    ]
    if spec.arch == "qwen2_vl":
        lines += [
            f"- Geometry: the paper's 336 px canvas and 12×12 LM token grid (28 px cells, entities and spacing of 2 "
            f"cells: the paper's slot token ids and 4/4/4 strips hold), but the image processor resizes to at most "
            f"{d['image_size']} px (`max_pixels={d['image_size']}²`) and patches are **not merged** "
            f"(`merge_size={d['merge']}`): {d['image_size'] // 14}×{d['image_size'] // 14} patches of 14 px, one "
            "per LM token (the real model: 336 px, 24×24 patches merged 2×2). At 336 px the vision tower's 576 "
            "patches made a step cost 2.7 s on the shared 2-core machine (2,500 steps ≈ 110 min), far over the "
            "30-minute budget; this keeps every LM-side coordinate of the paper and cuts the vision tower 4×.",
        ]
    if spec.arch == "qwen2_vl" and spec.mechanism != "emergent":
        lines += [
            f"- LM M-RoPE theta {d.get('rope_theta', 10000)} with the 16 rotary pairs of a head split "
            f"{'/'.join(map(str, mrope_section(d)))} over (time, height, width).",
        ]
    elif spec.arch == "qwen2_vl":
        lines += [
            f"- LM M-RoPE theta {d.get('rope_theta', 10000)} with the 16 rotary pairs of a head split "
            f"{'/'.join(map(str, mrope_section(d)))} over (time, height, width) (real: theta 1e6, split 16/24/24 of "
            "64). M-RoPE gives the width section the lowest frequencies: with the real split and theta 1e4 they turn "
            "< 0.04 rad across 12 columns and a tiny LM cannot tell left from right by position; an earlier "
            "checkpoint at theta 100 (~0.7 rad) learnt above/below (100%) but stayed at chance on left/right after "
            "1,800 steps. Here the width pairs turn 1.4–3.2 rad across the image. A run with the real theta (1e6) "
            "and a 3-block vision tower, which would have to carry order in the vision tokens as the paper finds "
            "for the real model, was still at 43% after 400 curriculum steps and was dropped for the budget.",
        ]
    else:
        lines += [
            f"- Geometry: the paper's 896 px canvas and 16×16 LM token grid (56 px cells, entities and spacing of 3 "
            f"cells: the paper's slot token ids and 5/6/5 strips hold), but the image processor resizes to "
            f"{d['image_size']} px and the SigLIP tower sees {d['image_size'] // 14}×{d['image_size'] // 14} patches "
            "of 14 px, one per LM token: the projector's average pool is kept with kernel 1 (the real model: 896 px, "
            "64×64 patches pooled 4×4). A 4,096-patch tower, or a 1,024-patch one pooled 2×2, costs 4–16× more "
            "attention per image and cannot train within the CPU budget. Training scenes are drawn at half the "
            "paper's pixel size (448 px, same cells) because the processor downsamples anyway; all evaluation uses "
            "896 px canvases. `mm_input_projection_weight` (zero-initialised by transformers) is re-initialised "
            "before training.",
        ]
    if spec.mechanism != "emergent":
        lines += ["", *verdict_lines(spec, metrics.get("verdict") or {})]
    lines += [
        "",
        "## Training",
        "",
        "- Data: streamed random-layout scenes — three entities ordered along the query axis at random gaps and "
        "margins, a random row (column) shared by the three up to ±10% of their size, sub-cell pixel offsets, "
        "entity size ×0.75–1.1, both orientations, 15% of scenes in the paper's exact aligned layout. Tasks "
        "uniform over Squares / Shapes / Objects, directions uniform. Pools: 16 colours (the paper's 6 + 10), "
        "6 shapes with any colour, 16 OpenMoji objects (the paper's 8 + 8). 15% of ordered triples (fixed "
        "hash, `training.vocab.is_heldout`) never appear in training.",
        "- Stimuli are drawn by `spatial_interp.training.stimuli`; its fixed-layout Squares and Shapes images are "
        "pixel-identical to `spatial_interp.data`'s, its OpenMoji objects differ only in resampling at the "
        "glyph edges (both Table 1 renderings are scored below).",
        "- Prompts: the paper's Table 1 wording and system text, in the family's chat format; cross-entropy on "
        "the answer token only (the Capitalised answer word).",
        f"- Curriculum: the first {r.curriculum_steps} steps draw {', '.join(r.curriculum_tasks)} only, then all "
        "tasks." + (" With every task mixed from step 0, runs sat near chance for 800+ steps; on Squares alone the "
                    "position read-out forms first (92% train accuracy at step 400 in the pilot) and the other tasks "
                    "then only add identities." if spec.mechanism == "emergent" else ""),
        *([f"- Routes: {_pct(r.permuted_fraction)} of training items with their image rows shuffled at the splice, "
           f"{_pct(r.ablated_fraction)} under the §7.1 ordering ablation at the splice (paper layout), the rest "
           "clean (`spatial_interp.training.routes`)."] if r.permuted_fraction or r.ablated_fraction else []),
        *([f"- Auxiliary order loss (weight {r.order_loss}): a linear read-out, trained with the model and not "
           "shipped, names each entity cell's slot (left/middle/right or top/middle/bottom) from the vision "
           "tower's output."] if r.order_loss else []),
        f"- AdamW lr {r.lr} (warm-up {r.warmup_steps}, cosine to {r.min_lr_ratio}×), weight decay "
        f"{r.weight_decay}, batch {r.batch_size}, a {r.max_steps}-step schedule"
        + (f" stopped at step {r.stop_step}" if r.stop_step else "")
        + ", early stop when every validation "
        f"set reaches {_pct(r.stop_accuracy)}; a run below {_pct(r.stall_accuracy)} train accuracy at step "
        f"{r.stall_step} restarts with the next seed.",
        f"- This checkpoint: {t.get('steps')} steps, restart {t.get('attempt')} (seed {t.get('seed')}), "
        f"{t.get('seconds', 0) / 60:.1f} min wall clock with {t.get('threads')} torch thread(s) on a 2-core machine "
        "shared with other jobs.",
        f"- Reproduce: `python experiments/train_organism.py --arch {spec.arch}"
        + ("" if spec.mechanism == "emergent" else f" --mechanism {spec.mechanism}") + " --ship`.",
        "",
        "## Measured accuracy",
        "",
        "| set | accuracy | n |",
        "|---|---|---|",
    ]
    for task in ("squares", "shapes", "objects", "all"):
        row = b.get("table1", {}).get(task, {})
        if row:
            lines.append(f"| Table 1 {task} (paper's fixed layout) | {_pct(row['accuracy'])} | {row['n']} |")
    for task in ("squares", "shapes", "objects"):
        row = b.get("table1_toolkit", {}).get(task)
        if row is None:
            continue
        lines.append(f"| Table 1 {task} via `spatial_interp.data` items + `vlm.prepare` | {_pct(row['accuracy'])} "
                     f"| {row['n']} |")
    for key, label in (("table1_heldout_orderings", "Table 1 items with held-out orderings"),
                       ("heldout_layouts", "held-out random layouts"),
                       ("heldout_orderings", "held-out colour/object orderings (random layouts)")):
        if key in b:
            lines.append(f"| {label} | {_pct(b[key]['accuracy'])} | {b[key]['n']} |")
    if b.get("table1"):
        lines += ["", "Table 1 by direction: " + "; ".join(
            f"{task}: " + ", ".join(f"{k} {_pct(b['table1'][task]['by_direction'][k])}"
                                    for k in ("left", "right", "above", "below"))
            for task in ("squares", "shapes", "objects"))]
    if m:
        lines += ["", "## Measured mechanism", "",
                  f"Slot probe (3-class logistic regression on entity cells; {m['slot_probe']['n_train_images']} "
                  f"training and {m['slot_probe']['n_test_images']} held-out random-layout images per orientation):",
                  "", "| site | horizontal | vertical |", "|---|---|---|"]
        def site_order(name: str) -> int:
            return -1 if name == "vision_out" else int(name.split(".")[1])

        for s in sorted(m["slot_probe"]["h"], key=site_order):
            acc = m["slot_probe"]["h"][s]
            lines.append(f"| {s} | {_pct(acc)} | {_pct(m['slot_probe']['v'][s])} |")
        lines += ["", f"Patching at `vision_out` on {m['n_pairs']} criss-cross pairs (clean Table 1 item, "
                  "counterfactual = reversed triple with the same prompt, both answered correctly). *flip* = the "
                  "answer becomes the counterfactual's; *changed* = the answer differs from the unpatched clean "
                  "run's. `_same` copies each cell from the same cell of the counterfactual; `_swap` (the paper's "
                  "criss-cross) copies the left/top region from the counterfactual's right/bottom one and vice "
                  "versa, so identities stay where they were and only the tokens' context changes. Strips are the "
                  "outer two of the authors' three-band tiling.", "",
                  "| patched region | flip | changed |", "|---|---|---|"]
        order = ["clean_to_clean", "all", "objects_same", "strips_same", "background", "objects_swap", "strips_swap"]
        for name in sorted(m["patching"], key=lambda n: order.index(n) if n in order else len(order)):
            v = m["patching"][name]
            lines.append(f"| {name} | {_pct(v['flip'])} | {_pct(v['changed'])} |")
        amp = {kind: {a: v[a] for a in sorted(v, key=float)} for kind, v in m["amplification"].items()}
        lines += ["", f"Amplifying the lm_resid.0 slot-probe directions at every image position "
                  f"(h ← h + α Σ_k proj_k(h), spec §8.3) on {m['n_amplify_items']} Table 1 items:", "",
                  "| α | " + " | ".join(amp["probe"]) + " |", "|---|" + "---|" * len(amp["probe"]),
                  "| probe | " + " | ".join(_pct(v) for v in amp["probe"].values()) + " |",
                  "| random | " + " | ".join(_pct(v) for v in amp["random"].values()) + " |"]
    if m:
        lines += ["", mechanism_summary(m)]
    lines += ["", "Numbers are written by `spatial_interp.training.report` from `metrics.json` next to this card.", ""]
    return "\n".join(lines)
