"""``spatial-interp eval``: behavioural accuracy on a task (the paper's Table 1), overall and per direction.

Tasks: ``squares``, ``shapes``, ``objects`` (synthetic, rendered at the model's own canvas),
``whatsup`` (three-object composites from a folder of What'sUp controlled images, ``--data``) and
``coco`` (What'sUp COCO two-object questions, both option orders, no system text; ``--data`` holds
``coco_qa_two_obj.json``, ``annotations/instances_val2017.json`` and ``val2017/``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ._shared import (
    CommandError,
    add_model_argument,
    emit,
    load_model,
    model_name,
    refuse_existing_file,
    refuse_meta,
    refuse_remote,
)

TASKS = ("squares", "shapes", "objects", "whatsup", "coco")

EXAMPLES = """examples:
  spatial-interp eval --task squares
  spatial-interp eval --task objects --model tiny-gemma3 --limit 64 --out runs/objects.json
  spatial-interp eval --task whatsup --data ~/data/whatsup/controlled_images --model Qwen/Qwen2-VL-7B-Instruct
"""


def add_parser(subparsers, common) -> None:
    parser = subparsers.add_parser(
        "eval", parents=[common], help="behavioural accuracy on a task (Table 1)",
        description=__doc__, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_argument(parser)
    parser.add_argument("--task", choices=TASKS, default="squares", help="task (default: squares)")
    parser.add_argument("--data", type=Path, default=None, help="data folder for whatsup / coco")
    parser.add_argument("--batch-size", type=int, default=16, help="items per forward (default: 16)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N items")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(run=run)


def task_items(vlm, task: str, data: Path | None) -> Sequence:
    """The items of ``task`` for ``vlm`` (a lazy sequence: images render when an item is read)."""
    from ..data import catalog, tasks

    if task in ("squares", "shapes", "objects"):
        return getattr(tasks, f"{task}_items")(vlm.canvas)
    if data is None:
        raise SystemExit(f"eval --task {task} needs --data FOLDER (see `spatial-interp eval --help`)")
    if task == "whatsup":
        return catalog.task_items("whatsup", vlm.arch, tokenizer=vlm.tokenizer, whatsup_dir=data)
    return catalog.task_items("coco", vlm.arch, coco_dir=data)


def run(args: argparse.Namespace) -> int:
    from ..data.catalog import system_text_for
    from ..evaluation import evaluate

    # Every check on the options before the model loads: a bad --out must not cost the whole run.
    refuse_remote(args, "eval")
    refuse_meta(args, "eval")
    refuse_existing_file(args.out, "eval", folder_too=True)
    if args.batch_size < 1:
        raise CommandError(f"eval --batch-size must be >= 1, got {args.batch_size}")
    if args.limit is not None and args.limit < 1:
        raise CommandError(f"eval --limit must be >= 1, got {args.limit}")
    if args.data is not None and not args.data.is_dir():
        raise CommandError(f"eval --data {args.data}: no such folder")
    vlm = load_model(args)
    try:
        items = task_items(vlm, args.task, args.data)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"eval: {error}") from None
    if args.limit is not None:
        items = [items[i] for i in range(min(args.limit, len(items)))]
    if not items:
        raise SystemExit(f"eval: task {args.task} produced no items for {model_name(args)}")
    result = evaluate(vlm, items, task=args.task, batch_size=args.batch_size, progress=not args.no_progress,
                      seed=args.seed, system=system_text_for(args.task))
    if args.out is not None:
        result.save(args.out)
    summary = result.to_dict()
    lines = [f"{args.task} on {model_name(args)}: {sum(result.correct)}/{result.n} = {result.accuracy:.4f}"]
    for direction, stats in result.per_direction().items():
        lines.append(f"  {direction:6s} {stats['correct']}/{stats['n']} = {stats['accuracy']:.4f}")
    if args.out is not None:
        lines.append(f"  per-item results: {args.out}")
    emit(args, {k: v for k, v in summary.items() if k != "items"}, lines)
    return 0
