"""Deprecated alias: the sparse-aware defaults live in ``hf_sparse.methods.recipe_defaults`` ("recipe" now
means only the ``SparsityConfig.recipe`` field that switches them on)."""

import warnings

from .methods.recipe_defaults import (  # noqa: F401
    AUTO,
    PLAIN_DEFAULTS,
    RECIPE_UPDATES,
    UNSET,
    recommend_schedule_scale,
    apply_recipe,
    recipe_values,
    resolve_recipe,
)

warnings.warn(
    "hf_sparse.recipe is deprecated: import from hf_sparse.methods.recipe_defaults", DeprecationWarning, stacklevel=2
)
