"""``python -m hf_sparse presets [NAME]``: list the named presets, or print one as a SparsityConfig."""

from __future__ import annotations

import argparse

from ..config import SparsityConfig
from ..presets import available_presets, preset_description


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("presets", help="list sparse fine-tuning presets or print one")
    parser.add_argument("name", nargs="?", help="a preset name: print its validated SparsityConfig as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.name is None:
        for name in available_presets():
            print(f"{name}: {preset_description(name)}")
        return 0
    print(SparsityConfig.from_preset(args.name).to_json_string(), end="")
    return 0
