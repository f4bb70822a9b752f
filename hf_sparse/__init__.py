"""hf_sparse: sparse training and fine-tuning inside the Hugging Face Trainer.

The public names are imported on first use (module ``__getattr__``), so ``import hf_sparse`` and
the command line (``python -m hf_sparse inspect DIR``) load neither the Trainer nor peft until a
name that needs them is asked for. ``from hf_sparse import X``, ``dir(hf_sparse)`` and ``__all__``
work as with eager imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module (relative to this package) that defines it
_EXPORTS: dict[str, str] = {
    "DistillationConfig": ".training.distill",
    "MaskedLoraDeltas": ".lora.peft_sparsifier",
    "MergeResult": ".lora.merge",
    "PeftSparsifier": ".lora.peft_sparsifier",
    "PruningMethod": ".methods.base",
    "SizeSpeedReport": ".reporting.size_speed",
    "SparseTrainer": ".training.trainer",
    "SparsityArguments": ".training.arguments",
    "Sparsifier": ".sparsifier",
    "SparsityCallback": ".training.callback",
    "SparsityConfig": ".config",
    "SparsityReport": ".reporting.sparsity_report",
    "UnderTrainingCallback": ".training.diagnostics",
    "apply_recipe": ".methods.recipe_defaults",
    "at_majority_rate": ".training.diagnostics",
    "available_methods": ".registry",
    "available_presets": ".presets",
    "from_sparse_inference": ".inference.convert",
    "get_method_class": ".registry",
    "load_masks": ".io.load",
    "load_sparse": ".io.load",
    "merge_and_unload": ".lora.merge",
    "prune": ".oneshot.api",
    "push_to_hub": ".io.hub",
    "read_masks": ".io.existing_masks",
    "recommend_schedule_scale": ".presets",
    "register_method": ".registry",
    "report": ".reporting.size_speed",  # the function: no module hf_sparse.report shadows it
    "save_sparse": ".io.save",
    "sparsity_report": ".reporting.sparsity_report",
    "to_semi_structured": ".inference.semi_structured",
    "to_sparse_inference": ".inference.convert",
    "train_dense_then_sparse": ".training.two_stage",
}

__all__ = sorted(_EXPORTS)


# subpackages and modules reachable as attributes after a bare ``import hf_sparse`` (``hf_sparse.io.load``)
_SUBMODULES = ("commands", "config", "core", "inference", "io", "lora", "methods", "oneshot", "registry", "reporting", "training", "vision")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # eager imports for type checkers and IDEs only
    from .config import SparsityConfig
    from .sparsifier import Sparsifier
    from .inference.convert import from_sparse_inference, to_sparse_inference
    from .inference.semi_structured import to_semi_structured
    from .io.existing_masks import read_masks
    from .io.hub import push_to_hub
    from .io.load import load_masks, load_sparse
    from .io.save import save_sparse
    from .lora.merge import MergeResult, merge_and_unload
    from .lora.peft_sparsifier import MaskedLoraDeltas, PeftSparsifier
    from .methods.base import PruningMethod
    from .methods.recipe_defaults import apply_recipe
    from .oneshot.api import prune
    from .registry import available_methods, get_method_class, register_method
    from .reporting.size_speed import SizeSpeedReport, report
    from .reporting.sparsity_report import SparsityReport, sparsity_report
    from .training.callback import SparsityCallback
    from .training.diagnostics import UnderTrainingCallback, at_majority_rate
    from .training.distill import DistillationConfig
    from .presets import available_presets, recommend_schedule_scale
    from .training.arguments import SparsityArguments
    from .training.trainer import SparseTrainer
    from .training.two_stage import train_dense_then_sparse
