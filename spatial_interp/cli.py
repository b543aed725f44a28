"""``spatial-interp``: the command line.

Each subcommand lives in ``spatial_interp/commands/<name>.py`` and exposes ``add_parser(subparsers,
common)`` and ``run(args) -> int``. This module only assembles them and applies the shared
options (``--model``, ``--out``, ``--seed``, ``--device``, ``--dtype``, ``--remote``, ``--config``,
``--debug``).

Errors: a bad input the library refuses (a ValueError, TypeError or KeyError, e.g. ``GeometryError``,
``SiteError``, ``StoreError``, ``UnknownModelError``; or a missing file) is printed as one line
``error: <message>`` on stderr with exit status 2, like an argparse usage error; ``--debug`` re-raises
it with the full traceback instead.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

COMMANDS = ("info", "geometry", "eval", "sweep", "mechanism", "attribute", "vision_depth", "plan", "reproduce")
DEFAULT_MODEL = "organism-qwen2-vl-dual"

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
    group.add_argument("--debug", action="store_true",
                       help="on an error, show the full traceback instead of a one-line message")
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


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[command]
    raise KeyError(command)


def _given_on_command_line(sub: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """Dests of the options present in ``argv`` (long, short, ``--opt=value`` and unique abbreviations)."""
    options = sub._option_string_actions
    given = set()
    for token in argv:
        if token == "--":
            break
        if not token.startswith("-") or token == "-":
            continue
        flag = token.split("=", 1)[0]
        if flag in options:
            given.add(options[flag].dest)
        elif flag.startswith("--"):
            matches = {a.dest for name, a in options.items() if name.startswith(flag)}
            given |= matches if len(matches) == 1 else set()
    return given


def _config_value(sub: argparse.ArgumentParser, action: argparse.Action, value: object) -> object:
    """A YAML value converted exactly as the flag's command-line strings would be (type, nargs, choices)."""
    if action.nargs == 0:  # store_true / store_false / store_const
        if not isinstance(value, bool):
            raise argparse.ArgumentError(action, f"expected true or false, got {value!r}")
        return action.const if value else action.default
    if value is None:
        if action.default is None:
            return None
        raise argparse.ArgumentError(action, "cannot be null")
    many = action.nargs not in (None, "?")
    if isinstance(value, (list, tuple)):
        if not many:
            raise argparse.ArgumentError(action, f"expected one value, got the list {list(value)!r}")
        strings = [str(v) for v in value]
    elif isinstance(value, dict):
        raise argparse.ArgumentError(action, f"expected a value, got the mapping {value!r}")
    else:
        strings = [str(value)]
    if isinstance(action.nargs, int) and len(strings) != action.nargs:
        raise argparse.ArgumentError(action, f"expected {action.nargs} values, got {len(strings)}: {strings}")
    if action.nargs == "+" and not strings:
        raise argparse.ArgumentError(action, "expected at least one value")
    values = [sub._get_value(action, text) for text in strings]  # the flag's own type= conversion
    for converted in values:
        sub._check_value(action, converted)  # and its choices=
    return values if many else values[0]


def apply_config(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """Fill options from ``--config FILE.yaml`` unless given on the command line.

    Each value goes through its flag's own argparse ``type`` and ``choices`` (``batch_size: abc`` or
    ``task: nonsense`` is an error naming the option, as on the command line); flags take
    ``true``/``false``, multi-value options a list.
    """
    if args.config is None:
        return
    import yaml

    sub = _subparser(parser, args.command)
    if not args.config.is_file():
        sub.error(f"--config {args.config}: no such file")
    try:
        values = yaml.safe_load(args.config.read_text()) or {}
    except yaml.YAMLError as error:
        sub.error(f"--config {args.config}: not valid YAML ({' '.join(str(error).split())})")
    if not isinstance(values, dict):
        sub.error(f"--config {args.config}: expected a mapping of option names to values")
    actions = {a.dest: a for a in sub._actions if a.option_strings and a.dest != "help"}
    given = _given_on_command_line(sub, argv)
    for key, value in values.items():
        dest = str(key).replace("-", "_")
        action = actions.get(dest)
        if action is None or dest == "config":
            known = ", ".join(sorted(d for d in actions if d != "config"))
            sub.error(f"--config {args.config}: unknown option {key!r} for {args.command} (known: {known})")
        try:
            converted = _config_value(sub, action, value)
        except argparse.ArgumentError as error:
            sub.error(f"--config {args.config}: {key}: {error}")
        if dest not in given:
            setattr(args, dest, converted)


LIBRARY_ERRORS = (ValueError, TypeError, KeyError, FileNotFoundError, FileExistsError, NotADirectoryError,
                  IsADirectoryError, PermissionError)
"""Bad-input errors reported as one ``error:`` line (the package's own errors subclass ValueError)."""


def _one_line(error: BaseException) -> str:
    message = error.args[0] if isinstance(error, KeyError) and len(error.args) == 1 else error
    return " ".join(str(message).split()) or type(error).__name__


def _import_without_collections(name: str) -> None:
    """A first import of ``name`` with the cyclic garbage collector paused, then what it made frozen.

    torch, transformers and nnsight make millions of objects that live as long as the process; the
    collections that run during their import walk them over and over (0.6-0.9 s of a 5 s import here,
    measured), and every full collection of the run would walk them again. Frozen, collections skip
    them. A process that already imported ``name`` (a test calling :func:`main`) is left as it is.
    """
    if name in sys.modules:
        return
    enabled = gc.isenabled()
    gc.disable()
    try:
        importlib.import_module(name)
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    apply_config(args, parser, argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # The package's own progress lines (which experiment runs, what is reused) show by default, so a long
    # command is never silent; other libraries stay at warnings unless -v.
    logging.getLogger("spatial_interp").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if args.verbose:
        logging.getLogger().setLevel(logging.INFO)
    from threadpoolctl import threadpool_limits

    from .data.objects import MissingObjectsExtra  # an ImportError whose message says what to install

    _import_without_collections(f"{__package__}.models")  # every command loads a model
    try:
        # numpy's and scipy's BLAS only see probe- and statistics-sized arrays here (torch has its own
        # thread pool); their default one-thread-per-core pools beside torch's made the main job 9% slower
        # on 2 cores (85 s against 78 s), for nothing.
        with threadpool_limits(limits=1, user_api="blas"):
            return int(args.run(args) or 0)
    except (*LIBRARY_ERRORS, MissingObjectsExtra) as error:
        if args.debug:
            raise
        sys.stderr.write(f"error: {_one_line(error)}\n")
        return 2


def entry() -> NoReturn:
    """The ``spatial-interp`` program: :func:`main`, then an exit without the interpreter's last collections."""
    code = main()
    # Shutdown ends with full garbage collections over every object torch, transformers and the run made:
    # 1.1 s of each command's exit here, measured (1.45 s → 0.32 s after importing the package). The
    # command is over and everything it wrote is closed, so those objects are left to the process's end.
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    entry()
