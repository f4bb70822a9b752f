"""``python -m hf_sparse <command> ...``: each module in ``hf_sparse.commands`` adds one subcommand.

Only the command being run is imported: ``--help`` lists the commands from their module
docstrings (read, not imported), so it needs neither torch nor transformers, and ``inspect DIR``
loads what reading a folder needs, never the Trainer or peft.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import pkgutil
import sys
from typing import Collection, Optional, Sequence

from . import commands


def command_names() -> list[str]:
    return sorted(info.name for info in pkgutil.iter_modules(commands.__path__))


def _summary(name: str) -> str:
    """The first docstring line of a command module (its arguments and what it does), read without
    importing the module."""
    spec = importlib.util.find_spec(f"{commands.__name__}.{name}")
    try:
        with open(spec.origin, encoding="utf-8") as handle:  # type: ignore[union-attr, arg-type]
            doc = ast.get_docstring(ast.parse(handle.read())) or ""
    except (OSError, SyntaxError, AttributeError, TypeError):
        return ""
    first = doc.strip().splitlines()[0].replace("``", "") if doc.strip() else ""
    return first.removeprefix(f"python -m hf_sparse {name}").lstrip(": ").strip()


def build_parser(load: Optional[Collection[str]] = None) -> argparse.ArgumentParser:
    """The parser with the commands in ``load`` (default: all) registered in full; the others are
    listed with a one-line summary and load when named."""
    parser = argparse.ArgumentParser(prog="python -m hf_sparse", description="hf_sparse command line")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in command_names():
        if load is None or name in load:
            importlib.import_module(f"{commands.__name__}.{name}").register(subparsers)  # sets defaults(func=...)
        else:
            subparsers.add_parser(name, help=_summary(name), add_help=False)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)  # the top level takes no option values
    parser = build_parser(load=[command] if command else [])
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as err:  # bad input: the message, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
