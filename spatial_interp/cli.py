"""``spatial-interp``: the command line.

Each subcommand lives in ``spatial_interp/commands/<name>.py`` and exposes ``add_parser(subparsers,
common)`` and ``run(args) -> int``. This module only assembles them and applies the shared
options (``--model``, ``--out``, ``--seed``, ``--device``, ``--dtype``, ``--remote``, ``--config``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

COMMANDS = ("info", "geometry", "eval", "sweep", "mechanism", "reproduce")
DEFAULT_MODEL = "organism-qwen2-vl"

EPILOG = """examples:
  spatial-interp info tiny-gemma3
  spatial-interp geometry tiny-qwen2-vl --image-size 448 252 --box 28 28 112 84
  spatial-interp geometry --verify tiny-pixtral
  spatial-interp eval --task squares
"""


def common_options() -> argparse.ArgumentParser:
    """Options every command accepts (a parent parser)."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("common options")
    group.add_argument("--model", default=DEFAULT_MODEL,
                       help="hub id, local checkpoint folder, tiny-<arch> or organism-<arch> "
                       f"(default: {DEFAULT_MODEL})")
    group.add_argument("--out", type=Path, default=None, help="output folder or file")
    group.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    group.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    group.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16 (default: float32)")
    group.add_argument("--remote", action="store_true", help="run traces on NDIF (nnsight remote)")
    group.add_argument("--config", type=Path, default=None,
                       help="YAML file of option values (command-line flags override it)")
    group.add_argument("--json", action="store_true", help="print machine-readable JSON")
    group.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    return common


def _available_commands() -> list:
    modules = []
    for name in COMMANDS:
        try:
            modules.append(importlib.import_module(f"spatial_interp.commands.{name}"))
        except ModuleNotFoundError as error:
            if error.name != f"spatial_interp.commands.{name}":
                raise
    return modules


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spatial-interp",
        description="Mechanistic interpretability of spatial variable binding in vision-language models.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = common_options()
    for module in _available_commands():
        module.add_parser(subparsers, common)
    return parser


def apply_config(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """Fill options from ``--config FILE.yaml`` unless given on the command line."""
    if args.config is None:
        return
    import yaml

    if not args.config.is_file():
        parser.error(f"--config {args.config}: no such file")
    values = yaml.safe_load(args.config.read_text()) or {}
    if not isinstance(values, dict):
        parser.error(f"--config {args.config}: expected a mapping of option names to values")
    given = {a.split("=")[0].lstrip("-").replace("-", "_") for a in argv if a.startswith("--")}
    for key, value in values.items():
        dest = key.replace("-", "_")
        if not hasattr(args, dest):
            parser.error(f"--config {args.config}: unknown option {key!r}")
        if dest not in given:
            setattr(args, dest, value)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    apply_config(args, parser, argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
