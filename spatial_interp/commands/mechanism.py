"""``spatial-interp mechanism MODEL [MODEL ...]``: which route carries order, measured, side by side.

For each model: Table 1 accuracy clean, with the image rows permuted at lm_resid(0) (knocks out the
LM's positional route) and under the paper's §7.1 ordering ablation (knocks out the vision tokens'
positional content); criss-cross object / strip swaps at vision_out and every LM slot; slot probes
with a label-shuffled control. Then a verdict per route from documented thresholds (see
``spatial_interp.mechanism``); planted organisms show the truth they were built with beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ._shared import emit

EXAMPLES = """examples:
  spatial-interp mechanism organism-qwen2-vl-position organism-qwen2-vl-vision organism-qwen2-vl-dual
  spatial-interp mechanism tiny-qwen2-vl --items 16 --pairs-per-direction 2 --json
  spatial-interp mechanism Qwen/Qwen2-VL-7B-Instruct --device cuda --out runs/mechanism-qwen
"""


def add_parser(subparsers, common) -> None:
    parser = subparsers.add_parser(
        "mechanism", parents=[common], help="measure which route carries order and print a verdict per route",
        description=__doc__, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("models", nargs="*", metavar="MODEL", help="models to compare (default: --model)")
    parser.add_argument("--task", choices=("squares", "shapes", "objects"), default="squares")
    parser.add_argument("--items", type=int, default=None, help="Table 1 items per knockout (default 96)")
    parser.add_argument("--pairs-per-direction", type=int, default=None, help="criss-cross pairs (default 8)")
    parser.add_argument("--probe-items", type=int, default=None, help="probing images (default 120)")
    parser.add_argument("--position-items", type=int, default=None,
                        help="orderings per shift of the absolute-vs-relative probe control (default 48)")
    parser.add_argument("--retain", type=float, default=None,
                        help="share of the clean margin a route's knockout must keep (default 0.5)")
    parser.add_argument("--no-filter", action="store_true", help="keep pairs the model gets wrong")
    parser.set_defaults(run=run)


def config_from(args: argparse.Namespace):
    from ..mechanism import MechanismConfig

    given = {"items": args.items, "pairs_per_direction": args.pairs_per_direction,
             "probe_items": args.probe_items, "position_items": args.position_items, "retain": args.retain}
    for name, value in given.items():
        if value is not None and value <= 0:
            raise SystemExit(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.retain is not None and args.retain > 1:
        raise SystemExit(f"--retain is a share of the clean margin in (0, 1], got {args.retain}")
    changes = {k: v for k, v in given.items() if v is not None}
    return dataclasses.replace(MechanismConfig(), task=args.task, filter_pairs=not args.no_filter, seed=args.seed,
                               **changes)


def table_lines(results: list[dict]) -> list[str]:
    """The side-by-side table and each model's verdict, all read from the measured numbers."""
    from ..report.verdicts import matches_planted, verdict_rows

    rows = verdict_rows(results)
    width = max(len(r[0]) for r in rows) + 2
    cols = [max(len(row[i]) for row in rows) + 2 for i in range(1, len(rows[0]))]
    lines = ["".join([row[0].ljust(width), *[c.rjust(w) for c, w in zip(row[1:], cols, strict=True)]])
             for row in rows]
    for r in results:
        v = r["verdict"]
        lines += ["", f"{r['numbers']['model']}:", f"  vision route: {v['vision_route']['evidence']}",
                  f"  LM positional route: {v['lm_position_route']['evidence']}", f"  on conflict: {v['on_conflict']}"]
        match = matches_planted(r)
        if match is not None:
            lines.append(f"  planted truth: the verdict {'matches' if match else 'DOES NOT match'} it")
    return lines


def run(args: argparse.Namespace) -> int:
    from ..mechanism import mechanism
    from ..models import load
    from ..results import provenance, write_json

    if args.remote:
        raise SystemExit("mechanism runs locally; use the primitives with remote=True for NDIF")
    names = args.models or [args.model]
    cfg = config_from(args)
    out = args.out or Path("runs") / "mechanism"
    if out.exists() and not out.is_dir():
        raise SystemExit(f"--out {out} is a file; give a folder")
    results = []
    for name in names:
        vlm = load(name, dtype=args.dtype, device=args.device, seed=args.seed)
        result = mechanism(vlm, cfg)  # working files in a temporary folder: re-runs start afresh
        result["provenance"] = provenance(vlm, seed=cfg.seed, config=dataclasses.asdict(cfg))
        write_json(out / name.replace("/", "_") / "mechanism.json", result)
        results.append(result)
    emit(args, {"models": results}, table_lines(results))
    return 0
