"""``python -m hf_sparse config``: print a validated SparsityConfig as JSON (defaults or from a file)."""

from __future__ import annotations

import argparse

from ..config import SparsityConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("config", help="validate and print a sparsity config")
    parser.add_argument("path", nargs="?", help="sparsity_config.json or a folder holding one")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    if args.path is None:
        config = SparsityConfig()
    elif os.path.isdir(args.path):
        config = SparsityConfig.from_pretrained(args.path)
    else:
        config = SparsityConfig.from_json_file(args.path)
    print(config.to_json_string(), end="")
    return 0
