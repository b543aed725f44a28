"""``spatial-interp geometry MODEL``: which cells a pixel box covers and which rows hold them per site.

With ``--verify`` it runs the pixel-perturbation self-check instead: every vision block bypassed, a
box of pixels inverted, and the rows that change compared with the rows the layout predicts.
"""

from __future__ import annotations

import argparse

from PIL import Image

from .. import site as sites
from ..images import check_image_size
from ._shared import add_model_argument, emit, load_model, model_name, refuse_remote

EXAMPLES = """examples:
  spatial-interp geometry tiny-qwen2-vl --image-size 336 336 --box 28 140 84 196
  spatial-interp geometry tiny-pixtral --image-size 240 240 --box 32 96 64 128 --json
  spatial-interp geometry --verify tiny-qwen2.5-vl
"""


def add_parser(subparsers, common) -> None:
    parser = subparsers.add_parser(
        "geometry", parents=[common], help="map a pixel box to cells and rows; --verify proves the mapping",
        description=__doc__, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_argument(parser)
    parser.add_argument("--image-size", nargs=2, type=int, metavar=("W", "H"),
                        help="image size (default: the model's native canvas)")
    parser.add_argument("--box", nargs=4, type=float, metavar=("X0", "Y0", "X1", "Y1"),
                        help="half-open pixel box of the original image")
    parser.add_argument("--verify", action="store_true", help="run the pixel-perturbation self-check")
    parser.set_defaults(run=run)


def box_report(vlm, size: tuple[int, int], box: tuple[float, ...]) -> dict:
    size = check_image_size(size, "--image-size")  # before allocating the blank image
    batch = vlm.prepare([Image.new("RGB", size, "white")], ["describe"])
    layout = batch.layouts[0]
    region = layout.box_to_cells(box)
    report_sites = [sites.vision_block(0), sites.vision_out, sites.lm_resid(0)]
    return {
        "model": vlm.info.name,
        "image_size": list(size),
        "grid": [layout.grid.rows, layout.grid.cols],
        "box": list(box),
        "cells": [list(c) for c in region],
        "flat_ids": region.flat.tolist(),
        "rows": {str(s): layout.indices(region, s).tolist() for s in report_sites},
        "lm_note": "lm_resid rows are sequence positions of a batch of one with this model's chat prompt",
    }


def run(args: argparse.Namespace) -> int:
    refuse_remote(args, "geometry")
    if args.image_size:
        check_image_size(tuple(args.image_size), "--image-size")  # before the model loads
    vlm = load_model(args)
    if args.verify:
        from ..models.verify import verify_geometry

        report = verify_geometry(vlm, [tuple(args.image_size)] if args.image_size else None, seed=args.seed)
        lines = [f"geometry self-check for {model_name(args)}: {'PASS' if report.passed else 'FAIL'}"]
        for name, ok in report.per_site().items():
            lines.append(f"  {name:16s} {'pass' if ok else 'FAIL'}")
        for case in report.cases:
            status = "pass" if case.passed else "FAIL"
            kind = "cell-aligned" if case.aligned else "unaligned"
            lines.append(f"  {status}  image {case.image_size[0]}x{case.image_size[1]}  {kind} box "
                         f"{tuple(case.box)}  ({case.region_cells} cells)")
            for name, detail in case.sites.items():
                if not detail["passed"]:
                    lines.append(f"        {name}: changed {detail['changed']} rows, predicted {detail['predicted']}; "
                                 f"unexpected {detail['unexpected']} missing {detail['missing']}")
        emit(args, report.to_dict(), lines)
        return 0 if report.passed else 1
    if args.box is None:
        raise SystemExit("geometry: give --box X0 Y0 X1 Y1 (pixels), or --verify")
    from ..geometry import GeometryError

    size = tuple(args.image_size) if args.image_size else vlm.adapter.native_size
    try:
        info = box_report(vlm, size, tuple(args.box))
    except GeometryError as error:
        raise SystemExit(f"geometry: {error}") from None
    lines = [f"{model_name(args)}: box {tuple(args.box)} on a {size[0]}x{size[1]} image "
             f"({info['grid'][0]}x{info['grid'][1]} grid)",
             f"  cells ({len(info['cells'])}): {[tuple(c) for c in info['cells']]}",
             f"  flat ids: {info['flat_ids']}"]
    for name, rows in info["rows"].items():
        lines.append(f"  {name:16s} rows: {rows}")
    emit(args, info, lines)
    return 0
