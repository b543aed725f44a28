"""``spatial-interp reproduce``: every experiment of the paper on one model, and a self-contained HTML report.

Table 1 (behaviour), §4 slot probes and strip maps, §5 last-token patching, §6 criss-cross object/strip
patching, Table 5 ordering ablation (full grid and capped), §7.2 object swaps under the ablation and
§8 probe-direction amplification. Defaults are sized for a laptop CPU (about 25 s on the shipped
organism); ``--paper-sizes`` uses the paper's (50 pairs per direction, 2000 draws, the AdamW probe,
every Table 1 item, 440 amplified items).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ._shared import add_model_argument, emit, load_model, model_name

EXAMPLES = """examples:
  spatial-interp reproduce                                   # the shipped organism, report in runs/
  spatial-interp reproduce                                   # again: reuses every finished experiment
  spatial-interp reproduce --tasks squares --pairs-per-direction 4 --out runs/quick
  spatial-interp reproduce --model Qwen/Qwen2-VL-7B-Instruct --device cuda --paper-sizes
"""


EVERY_ITEM = "all"


def _limit(text: str) -> int | str:
    if text == EVERY_ITEM:
        return EVERY_ITEM
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"--limit takes a number of items >= 1 or 'all', got {text!r}")
    return value


def add_parser(subparsers, common) -> None:
    parser = subparsers.add_parser(
        "reproduce", parents=[common], help="run all paper experiments and write an HTML report",
        description=__doc__, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_argument(parser)
    parser.add_argument("--tasks", nargs="+", default=["squares", "shapes", "objects"],
                        choices=("squares", "shapes", "objects"), help="tasks of Table 1 and Table 5")
    parser.add_argument("--pairs-per-direction", type=int, default=None,
                        help="pairs per direction (default 6; paper 50)")
    parser.add_argument("--no-filter", action="store_true", help="keep pairs the model gets wrong")
    parser.add_argument("--probe-method", choices=("logreg", "adamw"), default=None, help="probe fitting")
    parser.add_argument("--alphas", nargs="+", type=float, default=None, help="amplification α grid (default 0..15)")
    parser.add_argument("--amplify-items", type=int, default=None,
                        help="items steered in §8 (default 32; paper 440)")
    parser.add_argument("--limit", type=_limit, default=None, metavar="N|all",
                        help="Table 1: a seeded sample of N items per task, or all (default 64; --paper-sizes: all)")
    parser.add_argument("--batch-size", type=int, default=None, help="items per forward (default 32)")
    parser.add_argument("--paper-sizes", action="store_true", help="the paper's sample sizes and AdamW probe")
    parser.add_argument("--compare", nargs="*", default=None, metavar="ORGANISM",
                        help="organisms whose route verdicts are measured beside this model's "
                        "(default: every shipped organism; give none to skip them)")
    parser.add_argument("--no-verdict", action="store_true", help="skip the route verdicts")
    parser.add_argument("--no-background", action="store_true",
                        help="measure the compared organisms' verdicts in this process, after the rest (default: "
                        "in a second process meanwhile)")
    parser.add_argument("--no-attribution", action="store_true",
                        help="skip attribution patching over every cell x site")
    parser.add_argument("--no-vision-depth", action="store_true",
                        help="skip the look inside the vision encoder (probes, swaps, attention per block)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--force", action="store_true",
                        help="discard an earlier run with other settings in --out and start afresh (a re-run "
                        "with the same settings resumes without it)")
    parser.set_defaults(run=run)


def config_from(args: argparse.Namespace):
    from ..reproduce import PaperConfig

    base = PaperConfig.paper_sizes() if args.paper_sizes else PaperConfig()
    given = {"pairs_per_direction": args.pairs_per_direction, "probe_method": args.probe_method,
             "alphas": tuple(args.alphas) if args.alphas else None, "amplify_items": args.amplify_items,
             "eval_limit": args.limit, "batch_size": args.batch_size}
    changes = {k: v for k, v in given.items() if v is not None}
    if changes.get("eval_limit") == EVERY_ITEM:
        changes["eval_limit"] = None
    if args.no_verdict:
        changes["verdict"] = None
    if args.no_vision_depth:
        changes["vision_depth"] = None
    if args.no_attribution:
        changes["attribution"] = None
    from ..models.load import organism_names

    changes["compare_organisms"] = tuple(organism_names() if args.compare is None else args.compare)
    return dataclasses.replace(base, tasks=tuple(args.tasks), filter_pairs=not args.no_filter, seed=args.seed,
                               progress=not args.no_progress, background=not args.no_background, **changes)


def run(args: argparse.Namespace) -> int:
    from ..reproduce import reproduce

    if args.remote:
        raise SystemExit("reproduce runs locally; use the primitives with remote=True for NDIF")
    cfg = config_from(args)
    vlm = load_model(args)
    out = args.out or Path("runs") / f"reproduce-{model_name(args).replace('/', '_')}"
    summary = reproduce(vlm, out, cfg, force=args.force)
    emit(args, summary, summary_lines(model_name(args), summary))
    return 0


def summary_lines(name: str, summary: dict) -> list[str]:
    """The few numbers of each experiment, named, for the terminal."""
    exp = summary["experiments"]
    lines = [f"{name} -> {summary['report']}", "Table 1 (top-1; chance 0.333):"]
    lines += [f"  {task:8s} {r['accuracy']:.3f} (n={r['n']})" for task, r in exp["behaviour"].items()]
    lines.append("§4 slot-probe test accuracy at vision_out (label-shuffled control): " + ", ".join(
        f"{o} {exp['probing'][o]['accuracy']:.3f} ({exp['probing'][o]['shuffled_labels']:.3f})"
        for o in ("horizontal", "vertical")))
    for key, label in (("last_token", "§5 last-token"), ("criss_cross", "§6 criss-cross"),
                       ("criss_cross_ablated", "§7.2 under the ablation")):
        lines.append(f"{label}: {exp[key]['n_pairs']} pairs")
    ablated = [f"{variant}: " + ", ".join(f"{t} {a['accuracy']:.3f}" for t, a in accs.items())
               for variant, accs in exp["ablation"].items()]
    lines.append("Table 5 (ordering ablated): " + "; ".join(ablated))
    amp = exp["amplification"]["summary"]
    lines.append(f"§8 amplification: none {amp['none_acc']:.3f}, probe {amp['probe_acc']:.3f} "
                 f"(α={amp['best_probe_alpha']}), probe* {amp['probe_star_acc']:.3f}, random {amp['random_acc']:.3f}, "
                 f"random* {amp['random_star_acc']:.3f}")
    if "vision_depth" in exp:
        first = exp["vision_depth"]["first"]
        lines.append("inside the vision encoder, first site where: " + ", ".join(
            f"{name.replace('_', ' ')} {site or 'none'}" for name, site in first.items()))
    if exp.get("attribution", {}).get("agreement"):
        agreement = exp["attribution"]["agreement"]
        lines.append("attribution vs exact patching (Spearman; at sites where exact effects are not all ~0): "
                     + ", ".join(f"{level} {agreement[level]['spearman']:.2f} "
                                 f"({agreement[level].get('active', {}).get('spearman', float('nan')):.2f})"
                                 for level in ("regions", "cells")
                                 if agreement.get(level) and agreement[level].get("spearman") is not None))
    from ..report.verdicts import matches_planted, route_word

    for result in exp.get("verdicts", {}).get("models", []):
        v = result["verdict"]
        match = matches_planted(result)
        lines.append(f"route verdict {result['numbers']['model']}: vision route "
                     f"{route_word(v['vision_route']['present'])}, LM positional route "
                     f"{route_word(v['lm_position_route']['present'])}"
                     + ("" if match is None else f" (planted truth: {'matches' if match else 'DOES NOT match'})"))
    return lines
