"""``spatial-interp info MODEL``: layers, widths and the image grid for an image size."""

from __future__ import annotations

import argparse

from PIL import Image

from ..images import check_image_size
from ._shared import add_model_argument, emit, load_model, model_name, refuse_remote

EXAMPLES = """examples:
  spatial-interp info tiny-qwen2-vl
  spatial-interp info tiny-llava --image-size 448 336 --json
  spatial-interp info Qwen/Qwen2-VL-7B-Instruct --device meta   # config + processor only, no weights
"""


def add_parser(subparsers, common) -> None:
    parser = subparsers.add_parser(
        "info", parents=[common], help="describe a model: layers, widths, image grid",
        description=__doc__, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_argument(parser)
    parser.add_argument("--image-size", nargs=2, type=int, metavar=("W", "H"),
                        help="image size for the grid (default: the model's native canvas)")
    parser.set_defaults(run=run)


def describe(vlm, image_size: tuple[int, int]) -> dict:
    image_size = check_image_size(image_size, "--image-size")  # before allocating the blank image
    batch = vlm.prepare([Image.new("RGB", image_size, "white")], ["describe"])
    layout = batch.layouts[0]
    return {
        "model": vlm.info.name,
        "arch": vlm.arch,
        "class": type(vlm.model).__name__,
        "processor": type(vlm.processor).__name__,
        "image_processor": type(vlm.processor.image_processor).__name__,
        "n_lm_layers": vlm.n_lm_layers,
        "lm_resid_slots": vlm.n_lm_layers + 1,
        "d_model": vlm.d_model,
        "n_vision_blocks": vlm.n_vision_blocks,
        "d_vision": vlm.d_vision,
        "vocab_size": len(vlm.tokenizer),
        "image_token": vlm.adapter.image_token,
        "image_token_id": vlm.image_token_id,
        "image_size": list(image_size),
        "processed_size": list(layout.transform.processed_size),
        "grid": [layout.grid.rows, layout.grid.cols],
        "cell_px": layout.cell_px,
        "image_tokens": layout.grid.n_cells,
        "first_image_position": int(layout.lm_positions[0]),
        "position_row_stride": int(layout.lm_positions[layout.grid.cols] - layout.lm_positions[0])
        if layout.grid.rows > 1 else None,
    }


def run(args: argparse.Namespace) -> int:
    refuse_remote(args, "info")
    if args.image_size:
        check_image_size(tuple(args.image_size), "--image-size")  # before the model loads
    vlm = load_model(args)
    size = tuple(args.image_size) if args.image_size else vlm.adapter.native_size
    info = describe(vlm, size)
    lines = [
        f"{model_name(args)}  ({info['arch']}, {info['class']})",
        f"  LM: {info['n_lm_layers']} layers (lm_resid 0..{info['n_lm_layers']}), d_model {info['d_model']}, "
        f"vocab {info['vocab_size']}",
        f"  vision: {info['n_vision_blocks']} blocks, width {info['d_vision']}; processor "
        f"{info['processor']} / {info['image_processor']}",
        f"  image {size[0]}x{size[1]} -> processed {info['processed_size'][0]}x{info['processed_size'][1]} -> "
        f"grid {info['grid'][0]}x{info['grid'][1]} cells of {info['cell_px']} px = {info['image_tokens']} "
        f"{info['image_token']} tokens (row stride {info['position_row_stride']} positions)",
    ]
    emit(args, info, lines)
    return 0
