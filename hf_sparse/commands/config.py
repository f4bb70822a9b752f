"""``python -m hf_sparse config [PATH] [--method NAME] [--explain] [--methods [--readme FILE]]``: print a validated config or the methods' options.

The config is printed as JSON as the run will use it: its "auto" fields filled by the sparse-aware recipe
and its ``method_args`` complete (every option of the method, the defaults included); ``--explain``
describes the method's options instead, and what the recipe chose; ``--methods`` prints the
methods table (the README's, generated from each method's ``Args`` dataclass) and ``--readme FILE``
rewrites that table in FILE.
"""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("config", help="validate and print a sparsity config, or the methods' options")
    parser.add_argument("path", nargs="?", help="sparsity_config.json or a folder holding one")
    parser.add_argument("--method", help="print the default config of this method (with a PATH: override its method)")
    parser.add_argument("--explain", action="store_true", help="describe the config's method and its method_args")
    parser.add_argument("--methods", action="store_true", help="print the methods table (markdown)")
    parser.add_argument("--readme", help="with --methods: rewrite the generated table in this README file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..config import SparsityConfig, as_sparsity_config
    from ..io.files import atomic_write_text
    from ..methods.recipe_defaults import apply_recipe
    from ..methods.settings import describe_method, methods_table, replace_table, resolved_method_args
    from ..methods.registry import available_methods, get_method_class

    if args.readme and not args.methods:
        raise ValueError("--readme FILE rewrites the methods table: give --methods too")
    if args.methods:
        table = methods_table([get_method_class(name) for name in available_methods()])
        if args.readme:
            with open(args.readme, encoding="utf-8") as handle:
                text = handle.read()
            atomic_write_text(args.readme, replace_table(text, table))
            print(f"methods table written to {args.readme}")
        else:
            print(table)
        return 0
    fields = {} if args.path is None else as_sparsity_config(args.path).to_dict()
    if args.method is not None and args.method != fields.get("method"):
        fields = {**fields, "method": args.method, "method_args": {}}  # another method's options do not carry over
    config = apply_recipe(SparsityConfig.from_dict(fields))
    method_class = get_method_class(config.method)
    if args.explain:
        print(describe_method(method_class))
        chosen = ", ".join(f"{name}={value!r}" for name, value in config.recipe_choices.items())
        print(f"recipe={config.recipe!r} chose: {chosen}" if chosen else f"recipe={config.recipe!r} chose nothing")
        return 0
    data = config.to_dict()
    data["method_args"] = resolved_method_args(method_class, config.method_args)
    print(json.dumps(data, indent=2, sort_keys=True))
    return 0
