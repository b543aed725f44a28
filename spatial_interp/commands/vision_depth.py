"""``spatial-interp vision-depth MODEL``: where ordering forms inside the vision tower, and why it spreads.

Slot probes on the entity and background cells at every vision block and at vision_out (one clean
tower forward per image), criss-cross object / strip / background swaps at every vision site,
attention flow between the objects, their strips and the rest of the background per block and head,
and attention knockouts (background ↛ objects, objects ↛ background) in every block, with their
effect on answers, probes and swaps. Writes ``vision_depth.json`` and ``vision_depth.html`` under
``--out`` (default ``runs/vision-depth/MODEL``).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ._shared import add_model_argument, emit, refuse_existing_file, refuse_meta, refuse_remote

EXAMPLES = """examples:
  spatial-interp vision-depth organism-qwen2-vl-vision
  spatial-interp vision-depth tiny-gemma3 --probe-items 12 --pairs-per-direction 1 --flow-items 1 --json
  spatial-interp vision-depth Qwen/Qwen2-VL-7B-Instruct --device cuda --out runs/vision-depth-qwen
"""

SIZES = ("probe_items", "blank_items", "pairs_per_direction", "flow_items", "knockout_items", "batch_size")


def add_parser(subparsers, common) -> None:
    parser = subparsers.add_parser(
        "vision-depth", parents=[common], help="probe, swap, attention flow and knockouts through the vision tower",
        description=__doc__, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_argument(parser)
    parser.add_argument("--task", choices=("squares", "shapes", "objects"), default="squares")
    parser.add_argument("--orientation", choices=("horizontal", "vertical"), default="horizontal")
    parser.add_argument("--probe-items", type=int, default=None, help="probing images (default 48)")
    parser.add_argument("--blank-items", type=int, default=None, help="blank canvases, position-only probe (default 8)")
    parser.add_argument("--pairs-per-direction", type=int, default=None, help="criss-cross pairs (default 4)")
    parser.add_argument("--flow-items", type=int, default=None, help="images for attention flow (default 4)")
    parser.add_argument("--knockout-items", type=int, default=None, help="items scored under knockouts (default 16)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per forward (default 16)")
    parser.add_argument("--filter", action="store_true", help="keep only pairs the model answers correctly")
    parser.set_defaults(run=run)


def config_from(args: argparse.Namespace):
    from ..vision_depth import VisionDepthConfig

    changes = {}
    for name in SIZES:
        value = getattr(args, name)
        if value is None:
            continue
        if value < (0 if name == "blank_items" else 1):
            raise SystemExit(f"--{name.replace('_', '-')} must be positive, got {value}")
        changes[name] = value
    return dataclasses.replace(VisionDepthConfig(), task=args.task, orientation=args.orientation,
                               filter_pairs=args.filter, seed=args.seed, **changes)


def summary_lines(result: dict) -> list[str]:
    """The section's sentences and its per-site table, as plain text."""
    from ..report.vision_depth import vision_depth_section

    section = vision_depth_section(result)
    table = section.table or []
    widths = [max(len(str(row[i])) for row in table) + 2 for i in range(len(table[0]))] if table else []
    lines = [f"{result['model']} ({result['n_vision_blocks']} vision blocks)", ""]
    lines += ["".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths,
                                                                                                 strict=True)))
              for row in table]
    return lines + ["", *section.text.split("\n\n")]


def run(args: argparse.Namespace) -> int:
    from ..models import load
    from ..report.html import write_report
    from ..report.vision_depth import vision_depth_section
    from ..results import provenance, write_json
    from ..vision_depth import vision_depth

    refuse_remote(args, "vision-depth")
    refuse_meta(args, "vision-depth")
    refuse_existing_file(args.out, "vision-depth")
    name = getattr(args, "model_arg", None) or args.model
    cfg = config_from(args)
    out = args.out or Path("runs") / "vision-depth" / name.replace("/", "_")
    vlm = load(name, dtype=args.dtype, device=args.device, seed=args.seed)
    result = vision_depth(vlm, cfg)  # working files in a temporary folder: re-runs start afresh
    result["provenance"] = provenance(vlm, seed=cfg.seed, config=dataclasses.asdict(cfg))
    write_json(out / "vision_depth.json", result)
    write_report([vision_depth_section(result)], out / "vision_depth.html", title=f"vision depth: {name}")
    emit(args, result, summary_lines(result) + ["", f"wrote {out / 'vision_depth.json'} and vision_depth.html"])
    return 0
