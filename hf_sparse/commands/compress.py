"""``python -m hf_sparse compress DIR [--out OUT]``: hf_sparse's native compressed layout (or compressed-tensors)."""

from __future__ import annotations

import argparse
import os

from ..io.resave import convert


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("compress", help="write a compressed copy of a sparse model folder")
    parser.add_argument("path", help="folder with a sparse model")
    parser.add_argument("--out", help="output folder (default: PATH-compressed)")
    parser.add_argument(
        "--compressed-tensors", action="store_true",
        help="write the compressed-tensors 0.14 sparse-bitmask layout (transformers >= 5.10 cannot read it)",
    )
    parser.add_argument("--max-shard-size", default="5GB", help="shard size, as in save_pretrained")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = args.out or os.path.normpath(args.path) + "-compressed"
    layout = convert(args.path, out, "compressed-tensors" if args.compressed_tensors else True, args.max_shard_size, card=True)
    sizes = [sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d) if f.endswith(".safetensors")) for d in (args.path, out)]
    print(f"wrote {layout} checkpoint to {out}: {sizes[1]:,} bytes of safetensors (input {sizes[0]:,})")
    return 0
