"""``Sparsifier(model, config)``: the mask engine built from a ``SparsityConfig``.

Here, above the engine, are the lookups it must not do itself: its targets are found from the config's
regexes, its method is looked up by name in the registry, and the masks the model already carries are
read through ``hf_sparse.io`` (attached by a loader, or in the folder it was loaded from).
"""

from __future__ import annotations

from torch import nn

from .config import SparsityConfig
from .core.sparsifier import MaskEngine
from .core.targets import find_targets
from .io.existing_masks import read_masks
from .methods.recipe_defaults import apply_recipe
from .methods.registry import get_method_class


class Sparsifier(MaskEngine):
    """Masks by parameter name (bool, True = kept) and the method that evolves them, from ``config``
    (its "auto" fields filled by the sparse-aware recipe first: ``self.config`` is the filled copy)."""

    def __init__(self, model: nn.Module, config: SparsityConfig):
        config = apply_recipe(config)
        targets = find_targets(model, config.targets, config.ignore)
        method = get_method_class(config.method)(config, targets)
        super().__init__(model, config, method, existing_masks=lambda: read_masks(model))
