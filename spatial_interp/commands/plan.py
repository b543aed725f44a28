"""``spatial-interp plan MODEL``: what a run will cost before it runs — parameters, activation memory per
forward, the batch size that fits a GPU, and the forwards of ``reproduce`` (``--paper-sizes`` by default).

MODEL may be a hub id or local folder (loaded on the ``meta`` device: config and processor only, no
weights), ``meta-<arch>`` for the flagship checkpoint's written-out config (offline), or a tiny model or
organism.
"""

from __future__ import annotations

import argparse

from ._shared import add_model_argument, emit, model_name, refuse_remote

EXAMPLES = """examples:
  spatial-interp plan meta-qwen2_vl --gpu-memory 80          # Qwen2-VL-7B on an 80 GiB GPU, offline
  spatial-interp plan google/gemma-3-4b-it --dtype bfloat16 --gpu-memory 24
  spatial-interp plan meta-pixtral --default-sizes --batch-size 32 --json
"""


def add_parser(subparsers, common) -> None:
    parser = subparsers.add_parser(
        "plan", parents=[common], help="estimate memory, batch size and forwards before running",
        description=__doc__, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_argument(parser)
    parser.add_argument("--gpu-memory", type=float, default=None, metavar="GIB",
                        help="GPU memory in GiB: report the batch size that fits")
    parser.add_argument("--batch-size", type=int, default=None, help="rows per forward for the forward count "
                        "(default: what fits --gpu-memory, else reproduce's 32)")
    parser.add_argument("--default-sizes", action="store_true",
                        help="count reproduce at its default sizes instead of --paper-sizes")
    parser.set_defaults(run=run)


def _load_meta(args: argparse.Namespace):
    from ..models.load import load, meta_vlm, resolve_dtype

    name = model_name(args)
    if name.startswith("meta-"):
        vlm = meta_vlm(name[len("meta-"):])
        vlm.model.to(dtype=resolve_dtype(args.dtype))
        return vlm
    device = "meta" if not name.startswith(("tiny-", "organism-")) else args.device
    return load(name, dtype=args.dtype, device=device, seed=args.seed)


def _gib(n: float) -> str:
    return f"{n / 2 ** 30:.2f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:.1f} MiB"


def run(args: argparse.Namespace) -> int:
    from ..plan import plan

    refuse_remote(args, "plan")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    vlm = _load_meta(args)
    cost = plan(vlm, gpu_memory_gib=args.gpu_memory, batch_size=args.batch_size,
                paper_sizes=not args.default_sizes)
    p, a = cost["parameters"], cost["activations"]
    lines = [f"{model_name(args)} ({cost['arch']}, {cost['dtype']})",
             f"  parameters {p['total'] / 1e9:.3f} B (vision {p['vision'] / 1e9:.3f} B, LM "
             f"{p['language_model'] / 1e9:.3f} B): weights {_gib(cost['weights_bytes'])}",
             f"  one item at the paper canvas: {a['sequence_length']} tokens, {a['vision_patches']} vision patches; "
             f"peak activations ≈ {_gib(a['peak'])} per item (LM block {_gib(a['lm_block'])}, vision block "
             f"{_gib(a['vision_block'])}, logits {_gib(a['logits'])}; eager attention, an upper estimate)"]
    if "fits" in cost:
        fits = cost["fits"]
        lines.append(f"  on {fits['gpu_memory_gib']:g} GiB: batch size {fits['batch_size']} ({fits['note']})")
    rep = cost["reproduce"]
    lines.append(f"  reproduce {'--paper-sizes' if rep['paper_sizes'] else '(default sizes)'} at {rep['batch_size']} "
                 "rows per forward (pair filters: lower bounds):")
    for name, count in rep["experiments"].items():
        lines.append(f"    {name:24s} {count['rows']:7d} item rows, {count['forwards']:5d} forwards")
    emit(args, cost, lines)
    return 0
