"""The one way the package calls a model on example inputs (conversion, timing, reports)."""

from __future__ import annotations

from typing import Any, Mapping


def call_model(model: Any, inputs: Any) -> Any:
    """``model(**inputs)`` for a dict of keyword arguments, ``model(*inputs)`` for a tuple or list of
    positional ones, else ``model(inputs)`` (one tensor)."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


__all__ = ["call_model"]
