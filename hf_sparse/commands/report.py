"""``python -m hf_sparse report DIR``: size and measured speed of a saved model, with a verdict."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report", help="per-layer sparsity, FLOPs, size and measured latency of a saved model, with a verdict"
    )
    parser.add_argument("path", help="a model folder (save_pretrained / SparseTrainer.save_model)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of tables")
    parser.add_argument("--plot", metavar="PNG", help="also write a figure to this path")
    parser.add_argument(
        "--input-shape", default=None, metavar="BxS|BxCxHxW",
        help="input shape, e.g. 1x128 (text: batch x tokens) or 1x3x224x224 (images); default 1xL with L = 128 "
        "or the model's position limit if smaller / 1x3xHxW",
    )
    parser.add_argument("--repeats", type=int, default=10, help="timed forward passes (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed forward passes first")
    parser.add_argument("--no-measure", action="store_true", help="skip latency measurements")
    parser.add_argument("--no-sparse-kernels", action="store_true", help="do not try CPU sparse kernels")
    parser.add_argument("--targets", nargs="*", default=None, help="module-name regexes to report (default: hf_sparse targets)")
    parser.add_argument("--ignore", nargs="*", default=None, help="module-name regexes to leave out")
    parser.set_defaults(func=run)


def parse_shape(text: Optional[str]) -> Optional[tuple[int, ...]]:
    if text is None:
        return None
    try:
        shape = tuple(int(part) for part in text.lower().replace(",", "x").split("x"))
    except ValueError:
        shape = ()
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"--input-shape must look like 1x128 or 1x3x224x224 (positive integers), got {text!r}")
    return shape


def default_text_length(model, preferred: int = 128) -> Optional[int]:
    """The longest input up to ``preferred`` tokens the model's position embeddings allow (None: no limit found)."""
    import torch

    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    for name, module in model.named_modules():
        if name.endswith("position_embeddings") and isinstance(module, torch.nn.Embedding):
            padding = module.padding_idx  # RoBERTa-style positions start after the padding index
            usable = module.num_embeddings - (padding + 1 if padding is not None else 0)
            limit = usable if limit is None else min(limit, usable)
            break
    return min(preferred, limit) if isinstance(limit, int) and limit > 0 else None


def load_model(path: str):
    """The model in ``path``, with its saved head: hf_sparse's loader when installed, else transformers."""
    import transformers
    from transformers import AutoConfig, AutoModel, PreTrainedModel

    from ..io import load as sparse_io

    if not os.path.isdir(path):
        raise FileNotFoundError(f"report: {path!r} is not a folder")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"report: {path!r} has no config.json: not a saved transformers model")
    load_sparse = getattr(sparse_io, "load_sparse", None)  # reads compressed folders too (export feature)
    if callable(load_sparse):
        loaded = load_sparse(path)
        return loaded[0] if isinstance(loaded, tuple) else loaded
    config = AutoConfig.from_pretrained(path)
    # Allow-list: only a transformers model class named by the config, never an arbitrary import.
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if isinstance(arch, str) else None
    if not (isinstance(cls, type) and issubclass(cls, PreTrainedModel)):
        cls = AutoModel
    return cls.from_pretrained(path)


def run(args: argparse.Namespace) -> int:
    from ..reporting.size_speed import report

    try:
        shape = parse_shape(args.input_shape)
        model = load_model(args.path)
        if shape is None and getattr(model, "main_input_name", None) == "input_ids":
            length = default_text_length(model)
            shape = (1, length) if length is not None else None
        result = report(
            model,
            input_shape=shape,
            targets=args.targets,
            ignore=args.ignore,
            measure=not args.no_measure,
            repeats=args.repeats,
            warmup=args.warmup,
            sparse_kernels=not args.no_sparse_kernels,
        )
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.plot:
        result.plot(args.plot)
    if args.json:
        sys.stdout.write(result.to_json())
    else:
        result.print()
        if args.plot:
            print(f"figure: {args.plot}")
    return 0
