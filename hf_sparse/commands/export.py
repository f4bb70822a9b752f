"""``python -m hf_sparse export DIR --out OUT [--layout dense|native|compressed-tensors]``: re-save + model card."""

from __future__ import annotations

import argparse

from ..io.resave import LAYOUTS, convert


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="re-save a sparse model folder in a layout, with a model card")
    parser.add_argument("path", help="folder written by save_sparse / SparseTrainer.save_model / compressed-tensors")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--layout", choices=sorted(LAYOUTS), default="dense", help="checkpoint layout to write")
    parser.add_argument("--max-shard-size", default="5GB", help="shard size, as in save_pretrained")
    parser.add_argument("--no-card", action="store_true", help="do not write README.md and plots")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    layout = convert(args.path, args.out, LAYOUTS[args.layout], args.max_shard_size, card=not args.no_card)
    print(f"wrote {layout} checkpoint to {args.out}")
    return 0
