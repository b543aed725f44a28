"""``spatial-interp attribute``: attribution patching of every cell × site, checked against exact patching.

On criss-cross pairs of a synthetic task it estimates the patching effect of every grid cell at
``vision_out`` and every LM slot from one forward-backward per pair (``si.attribute``; by default
``method="atp-attn"``: AtP with the attention layer that first reads the cell exact), and of the
object / strip / background regions with integrated gradients (4 steps per point: whole-region swaps
flip the answer, far outside AtP's linear regime); it checks every region point and a sample of cell
points with exact patching, and writes both arrays, their agreement and an HTML section under ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ._shared import CommandError, add_model_argument, emit, load_model, model_name, refuse_existing_file, refuse_meta

EXAMPLES = """examples:
  spatial-interp attribute                                   # the shipped organism, small defaults
  spatial-interp attribute organism-gemma3 --pairs-per-direction 4 --cell-check 200 --out runs/atp-gemma
  spatial-interp attribute tiny-qwen2-vl --no-filter --metric prob_diff --json
"""


def add_parser(subparsers, common) -> None:
    parser = subparsers.add_parser(
        "attribute", parents=[common], help="attribution patching of every cell x site, checked against exact",
        description=__doc__, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_argument(parser)
    parser.add_argument("--task", default="squares", choices=("squares", "shapes", "objects"))
    parser.add_argument("--directions", nargs="+", default=["left", "right", "above", "below"],
                        choices=("left", "right", "above", "below"))
    parser.add_argument("--pairs-per-direction", type=int, default=2, metavar="N", help="default: 2")
    parser.add_argument("--no-filter", action="store_true", help="keep pairs the model gets wrong")
    parser.add_argument("--metric", default="log_odds", choices=("log_odds", "prob_diff", "logit_diff", "cf_prob"),
                        help="log_odds: log P(cf answer) - log P(clean answer) (default); prob_diff: P(cf) - "
                             "P(clean); logit_diff: logit(cf) - logit(clean); cf_prob: P(cf answer)")
    parser.add_argument("--cell-check", type=int, default=64, metavar="K",
                        help="cell points checked against exact patching (default: 64; 0 skips)")
    parser.add_argument("--region-method", choices=("ig", "atp"), default="ig",
                        help="region-level estimator: ig (integrated gradients, default) or atp (one backward)")
    parser.add_argument("--steps", type=int, default=4, help="interpolation steps of --region-method ig (default 4)")
    parser.add_argument("--cell-method", choices=("atp-attn", "atp-qk", "atp"), default="atp-attn",
                        help="cell-level estimator: atp-attn (the attention layer that first reads the cell exact, "
                             "default), atp-qk (AtP*'s QK fix only) or atp (plain first order)")
    parser.add_argument("--vision-blocks", action="store_true", help="also every vision-encoder block")
    parser.add_argument("--batch-size", type=int, default=16, help="pairs per forward-backward (default: 16)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..attribution_experiment import AttributionConfig, attribution_map
    from ..report.attribution import attribution_section
    from ..report.html import write_report
    from ..results import write_json

    refuse_meta(args, "attribute")
    if args.remote:
        raise CommandError("attribute runs locally from the command line; call si.attribute(..., remote=True) "
                           "for NDIF")
    refuse_existing_file(args.out, "attribute")
    for name in ("pairs_per_direction", "batch_size"):
        if getattr(args, name) < 1:
            raise CommandError(f"attribute --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.region_method == "ig" and args.steps < 1:
        raise CommandError(f"attribute --steps must be >= 1, got {args.steps}")
    if args.cell_check < 0:
        raise CommandError(f"attribute --cell-check must be >= 0, got {args.cell_check}")
    cfg = AttributionConfig(task=args.task, directions=tuple(args.directions),
                            pairs_per_direction=args.pairs_per_direction, filter_pairs=not args.no_filter,
                            metric=args.metric, vision_blocks=args.vision_blocks, cell_check=args.cell_check,
                            batch_size=args.batch_size, seed=args.seed, progress=not args.no_progress,
                            method=args.region_method, steps=args.steps if args.region_method == "ig" else None,
                            cell_method=args.cell_method)
    vlm = load_model(args)
    out_dir = args.out or Path("runs") / f"attribute-{model_name(args).replace('/', '_')}-{args.task}"
    result = attribution_map(vlm, cfg)
    if result["n_pairs"] == 0:
        raise SystemExit("no pairs survived the filter; pass --no-filter or raise --pairs-per-direction")
    result["regions"].save(out_dir / "regions")
    result["cells"].save(out_dir / "cells")
    summary = {"model": model_name(args), "n_pairs": result["n_pairs"], "sites": result["sites"],
               "config": dataclasses.asdict(cfg), "agreement": result["agreement"]}
    write_json(out_dir / "attribution.json", summary)
    write_report([attribution_section(result["cells"], result["regions"])], out_dir / "report.html",
                 title=f"attribution patching: {model_name(args)}")
    lines = [f"{result['n_pairs']} pairs x {len(result['sites'])} sites -> {out_dir}"]
    for level, stats in result["agreement"].items():
        if stats is None:
            lines.append(f"  {level}: not checked")
            continue
        lines.append(f"  {level}: {stats['n_points']} checked points, Spearman {stats['spearman']:.3f} "
                     f"(pair means {stats['spearman_mean']:.3f}), Pearson {stats['pearson']:.3f}, "
                     f"top-{stats['top_k']} recall {stats['top_k_recall']:.2f}")
        active = stats.get("active")
        if active and active["inactive_sites"] and active["sites"]:
            lines.append(f"    at the sites where exact effects are not all ~0 ({', '.join(active['sites'])}): "
                         f"Spearman {active['spearman']:.3f}; weakest {active['weakest_site']} "
                         f"{active['weakest_spearman']:.3f}")
    emit(args, {k: v for k, v in summary.items() if k != "config"} | {"out": str(out_dir)}, lines)
    return 0
