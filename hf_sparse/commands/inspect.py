"""``python -m hf_sparse inspect DIR [--verify]``: layout, files and the per-tensor sparsity table of a saved folder.

Answers in about a second: it reads headers, config.json and the masks without torch or a model
(:mod:`hf_sparse.reporting.folder_summary`). ``--verify`` runs the full check of a load instead
(every file belongs to one save, names and shapes match the model built from config.json on the
meta device, weights are zero where their masks prune), which imports torch and transformers.
"""

from __future__ import annotations

import argparse
import json
import os


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("inspect", help="print the layout and sparsity table of a saved sparse model")
    parser.add_argument("path", help="saved model folder")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--verify", action="store_true",
        help="full verification against the model config.json describes (slower: imports torch and transformers)",
    )
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


def plan_line(directory: str) -> str:
    """One line about a saved sparse inference plan (sparse_inference_plan.json), if the folder has one."""
    path = os.path.join(directory, "sparse_inference_plan.json")
    if not os.path.isfile(path):
        return ""
    try:
        with open(path, encoding="utf-8") as handle:
            plan = json.load(handle)
        layers = plan["layers"]
        converted = sum(1 for c in layers if c.get("kernel") != "dense")
        machine = plan.get("machine") or {}
        speed = plan.get("model_speedup")
        figure = f", whole model {speed:.2f}x" if isinstance(speed, (int, float)) else ""
        return (f"sparse inference plan: {converted}/{len(layers)} layers on CSR kernels{figure}, measured on "
                f"{machine.get('cpu', '?')}, {machine.get('threads', '?')} threads, torch {machine.get('torch', '?')}")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        return f"sparse inference plan: unreadable ({err})"


def run(args: argparse.Namespace) -> int:
    if args.verify:
        from ..io.load import describe

        info = describe(args.path)
    else:
        from ..reporting.folder_summary import summarize_folder

        info = summarize_folder(args.path)
    info["verified"] = bool(args.verify)
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(format_table(info))
    plan = plan_line(args.path)
    if plan:
        print(plan)
    if not args.verify:
        print("(read from headers and masks; --verify checks the folder against its model)")
    return 0
