"""Helpers shared by the subcommands: model loading from common options, JSON/table output."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


class CommandError(ValueError):
    """A command-line choice the command cannot honour (reported by ``main`` as ``error: ...``, exit 2)."""


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


def refuse_remote(args: argparse.Namespace, command: str) -> None:
    """``--remote`` on a command that only runs locally is an error, not silently ignored."""
    if args.remote:
        raise CommandError(f"{command} runs locally and has no --remote mode; drop --remote (the Python primitives "
                           "collect/patch/sweep/steer take remote=True for NDIF, as does `spatial-interp sweep`)")


def refuse_meta(args: argparse.Namespace, command: str, *, remote_ok: bool = False) -> None:
    """``--device meta`` builds a model without weights: fine for ``info``/``geometry`` (and, with
    ``remote_ok``, for ``--remote`` runs, where NDIF holds the weights), useless for a local forward."""
    if str(args.device).strip().lower().startswith("meta") and not (remote_ok and args.remote):
        raise CommandError(f"{command} runs the model, but --device meta loads no weights; use --device cpu or "
                           "--device cuda" + (", or add --remote to run on NDIF" if remote_ok else "")
                           + " (meta is for `spatial-interp info` and `geometry`)")


def refuse_existing_file(out: Path | None, command: str, *, folder_too: bool = False) -> None:
    """Refuse ``--out`` naming an existing file (or, with ``folder_too``, an existing folder) before any work."""
    if out is None:
        return
    if out.is_file() or (out.exists() and not out.is_dir()):
        raise CommandError(f"{command} --out {out}: a file of that name already exists; "
                           + ("choose a new path or delete it" if folder_too
                              else "--out names a results folder, so choose a folder path"))
    if folder_too and out.is_dir():
        raise CommandError(f"{command} --out {out} is an existing folder; --out names the JSON file to write, "
                           f"e.g. --out {out / 'eval.json'}")
