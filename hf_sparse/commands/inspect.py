"""``python -m hf_sparse inspect DIR``: layout, files and the per-tensor sparsity table of a saved folder."""

from __future__ import annotations

import argparse
import json

from ..io.load import describe


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("inspect", help="print the layout and sparsity table of a saved sparse model")
    parser.add_argument("path", help="saved model folder")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def format_table(info: dict) -> str:
    layers = info["layers"]
    width = max([len("parameter")] + [len(n) for n in layers])
    source = {
        "zeros": "no hf_sparse masks stored: sparsity from the exact zeros of the weights hf_sparse targets",
        "encoding": "masks implied by the compressed encoding",
        "masks file": "masks from sparse_masks.safetensors",
    }.get(info.get("masks_source"), "")
    lines = [
        f"format: {info['format']}" + (f" ({info['subformat']})" if info.get("subformat") else "")
        + f", hf_sparse format version: {info['format_version'] or '-'}",
        f"masks: {source}",
        "files: " + ", ".join(f"{name} ({size:,} B)" for name, size in info["files"].items()),
        f"{'parameter':<{width}}  {'shape':>14}  {'numel':>10}  {'kept':>10}  {'sparsity':>8}  encoding",
    ]
    for name, row in layers.items():
        shape = "x".join(map(str, row["shape"]))
        lines.append(
            f"{name:<{width}}  {shape:>14}  {row['numel']:>10,}  {row['kept']:>10,}  {row['sparsity']:>8.2%}  {row['encoding']}"
        )
    total = "-" if info["sparsity"] is None else f"{info['sparsity']:.2%}"
    lines.append(f"{'total':<{width}}  {'':>14}  {'':>10}  {'':>10}  {total:>8}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    info = describe(args.path)
    print(json.dumps(info, indent=1) if args.json else format_table(info))
    return 0
