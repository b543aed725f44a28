"""Helpers shared by the subcommands: model loading from common options, JSON/table output."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def model_name(args: argparse.Namespace) -> str:
    """The positional MODEL if given, else ``--model``."""
    return getattr(args, "model_arg", None) or args.model


def load_model(args: argparse.Namespace, **kwargs: Any):
    from ..models import load

    return load(model_name(args), dtype=args.dtype, device=args.device, seed=args.seed, **kwargs)


def emit(args: argparse.Namespace, payload: dict, lines: list[str]) -> None:
    """Print ``payload`` as JSON with ``--json``, else the human-readable ``lines``."""
    if args.json:
        json.dump(payload, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write("\n".join(lines) + "\n")


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_arg", nargs="?", metavar="MODEL", help="model (overrides --model)")
