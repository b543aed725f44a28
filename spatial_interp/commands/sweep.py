"""``spatial-interp sweep``: criss-cross patching of every LM residual slot × {object, strip} (§6, Figs 6/7).

Builds criss-cross pairs for a synthetic task, swaps the object (or strip) regions of the clean run
with the counterfactual's at each site, and saves the (metric × site × region × pair) array with its
provenance under ``--out``. Re-running the same command resumes an interrupted sweep.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ._shared import CommandError, add_model_argument, emit, load_model, model_name, refuse_existing_file, refuse_meta

EXAMPLES = """examples:
  spatial-interp sweep tiny-qwen2-vl --task squares --pairs-per-direction 4 --out runs/sweep-tiny
  spatial-interp sweep --model Qwen/Qwen2-VL-7B-Instruct --task shapes --filter --out runs/qwen-shapes
  spatial-interp sweep tiny-gemma3 --sites lm_resid.0 lm_resid.1 --regions strip --directions above below
  spatial-interp sweep tiny-qwen2-vl --ablate capped --regions object     # Fig 9: swaps under the ablation
"""


def add_parser(subparsers, common) -> None:
    parser = subparsers.add_parser(
        "sweep", parents=[common], help="criss-cross patching sweep over sites x regions x pairs",
        description=__doc__, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_argument(parser)
    parser.add_argument("--task", default="squares", choices=("squares", "shapes", "objects"),
                        help="synthetic stimulus set (default: squares)")
    parser.add_argument("--directions", nargs="+", default=["left", "right", "above", "below"],
                        choices=("left", "right", "above", "below"), help="queried directions (default: all four)")
    parser.add_argument("--pairs-per-direction", type=int, default=16, metavar="N",
                        help="criss-cross pairs per direction (default: 16; the paper keeps 50)")
    parser.add_argument("--filter", action="store_true",
                        help="keep only pairs the model answers correctly on both runs (the paper's filter)")
    parser.add_argument("--sites", nargs="+", default=None, metavar="SITE",
                        help="sites such as lm_resid.0 vision_out (default: every lm_resid slot)")
    parser.add_argument("--regions", nargs="+", default=["object", "strip"], choices=("object", "strip"),
                        help="swap regions (default: object strip)")
    parser.add_argument("--strip-widths", nargs=3, type=int, default=None, metavar=("L", "M", "R"),
                        help="band widths of the strip tiling (default: the reference code's, e.g. Qwen 4 4 4)")
    parser.add_argument("--metric", default="probs", choices=("probs", "top1", "logit-diff"),
                        help="probs: probabilities of the clean answer, middle and cf answer (default); "
                             "top1: clean answer; "
                             "logit-diff: clean answer minus cf answer logit")
    parser.add_argument("--ablate", default=None, choices=("full", "capped"),
                        help="ablate vision ordering information first (§7.2); capped = flat ids < 144")
    parser.add_argument("--batch-size", type=int, default=64, help="rows per patched forward (default: 64)")
    parser.add_argument("--pairs-per-chunk", type=int, default=16,
                        help="pairs whose sources are computed together (default: 16)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .. import site as sites
    from ..data.pairs import criss_cross_pairs
    from ..data.tasks import task_for
    from ..evaluation import answers_correctly
    from ..interventions import metrics
    from ..interventions.examples import as_pair
    from ..interventions.paper import criss_cross_regions, paper_ablation
    from ..interventions.sweep import sweep

    if args.pairs_per_direction < 1:
        raise SystemExit("--pairs-per-direction must be >= 1")
    refuse_meta(args, "sweep", remote_ok=True)
    if args.filter and str(args.device).startswith("meta"):
        raise CommandError("sweep --filter runs the model locally to keep correctly answered pairs, but --device "
                           "meta loads no weights; drop --filter or use --device cpu/cuda")
    refuse_existing_file(args.out, "sweep")
    for name in ("batch_size", "pairs_per_chunk"):
        if getattr(args, name) < 1:
            raise CommandError(f"sweep --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    site_names = [sites.parse(s) for s in args.sites] if args.sites else None  # a typo fails before loading
    vlm = load_model(args)
    task = task_for(args.task, vlm.canvas)
    keep = answers_correctly(vlm) if args.filter else None
    pair_set = criss_cross_pairs(task, vlm.canvas, directions=args.directions,
                                 n_per_direction=args.pairs_per_direction, seed=args.seed, keep=keep)
    pairs = [as_pair(p) for p in pair_set]
    if not pairs:
        raise SystemExit("no pairs survived; drop --filter or raise --pairs-per-direction")
    site_list = site_names or [sites.lm_resid(s) for s in range(vlm.n_lm_layers + 1)]
    regions = {name: spec for name, spec in criss_cross_regions(vlm, args.strip_widths).items()
               if name in args.regions}
    metric = {"probs": metrics.answer_probs(vlm.tokenizer), "top1": metrics.top1(vlm.tokenizer),
              "logit-diff": metrics.logit_diff(vlm.tokenizer, 0, 2)}[args.metric]
    ablation = None
    if args.ablate:
        ablation = paper_ablation(vlm.canvas, background_cap=144 if args.ablate == "capped" else None)
    out = args.out or Path("runs") / f"sweep-{model_name(args).replace('/', '_')}-{args.task}"
    result = sweep(vlm, pairs, site_list, regions, metric, pairing="swap", out=out,
                   pairs_per_chunk=args.pairs_per_chunk, batch_size=args.batch_size, ablation=ablation,
                   remote=bool(args.remote), progress=not args.no_progress, seed=args.seed)
    mean = result.mean("pair")
    payload = {"out": str(out), "n_pairs": len(pairs), "metric": result.coords["metric"],
               "sites": result.coords["site"], "regions": result.coords["region"],
               "mean_over_pairs": mean.values.tolist()}
    lines = [f"{len(pairs)} pairs x {len(site_list)} sites x {len(regions)} regions -> {out}/result.json",
             f"mean over pairs ({', '.join(result.coords['metric'])}):"]
    for r, region in enumerate(result.coords["region"]):
        lines.append(f"  {region}:")
        for s, site in enumerate(result.coords["site"]):
            values = " ".join(f"{v:.3f}" for v in mean.values[:, s, r])
            lines.append(f"    {site:<22} {values}")
    emit(args, payload, lines)
    return 0

