"""Subcommands of ``python -m hf_sparse``: one module each, exposing ``register(subparsers)``."""
