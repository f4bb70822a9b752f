"""Sparse inference: CSR SparseLinear layers, the dense <-> sparse model conversion and its plan, 2:4
semi-structured kernels, and timing (the one definition of speedup, also used by reporting).

``hf_sparse.inference.sparse_pipeline(task, folder)`` and ``load_sparse_inference(folder)`` serve a
saved sparse folder in one call (loaded lazily: importing this package imports no torch).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"load_sparse_inference": ".serving", "sparse_pipeline": ".serving"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value
