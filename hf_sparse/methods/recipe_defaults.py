"""The sparse-aware defaults behind ``SparsityConfig(recipe="auto")``: what ``SparsityConfig(sparsity=0.9)``
means when the user sets nothing else. The config only holds and checks fields; :func:`apply_recipe`
fills its "auto" fields from outside (``Sparsifier``, ``SparseTrainer``, ``SparsityArguments`` and
``python -m hf_sparse config`` call it).

"Accurate Neural Network Pruning Requires Rethinking Sparse Optimization" (Kuznedelev et al.): recipes
tuned for dense training under-train sparse models. Fields a user leaves at ``"auto"`` are filled
here, under ``recipe="auto"`` with the values of the method's sparse recipe
(``PruningMethod.recipe_defaults``), under ``recipe="none"`` with the plain defaults. Which values,
and why: docs/finetuning.md. The ablation that chose them (2026-12) was measured on data splits that
later turned out to overlap (docs/measurement.md); they stay the defaults until re-decided on the dev set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from .registry import get_method_class

if TYPE_CHECKING:
    from ..config import SparsityConfig

AUTO = "auto"
Config = TypeVar("Config", bound="SparsityConfig")
#: Fields a recipe may fill, with their values under ``recipe="none"`` (the pre-recipe defaults).
PLAIN_DEFAULTS: dict[str, Any] = {"allocation": "uniform", "schedule_scale": 1.0, "lr_rewinding": None, "update_every": 100}
#: The value that means "not set by the user" for each field (lr_rewinding=None already means "off").
UNSET: dict[str, Any] = {"allocation": AUTO, "schedule_scale": None, "lr_rewinding": AUTO, "update_every": None}
#: Mask updates over the pruning ramp when ``update_every="auto"``: few, so that each LR-rewinding
#: cycle is long enough to recover (oBERT's 30-epoch recipe prunes 7 times).
RECIPE_UPDATES = 8

# (sparsity strictly below, recommended k). Rule: the sparser, the longer (Kuznedelev et al., above).
_SCALE_RULE = ((0.5, 1.0), (0.8, 2.0), (0.95, 3.0), (1.0, 4.0))


def recommend_schedule_scale(sparsity: float) -> float:
    """Recommended ``schedule_scale`` k for a target sparsity.

    k = 1 below 50%, 2 in [50%, 80%), 3 in [80%, 95%), 4 at 95% and above.
    """
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    for below, scale in _SCALE_RULE:
        if sparsity < below:
            return scale
    return _SCALE_RULE[-1][1]


def recipe_values(config: "SparsityConfig") -> tuple[dict[str, Any], dict[str, Any]]:
    """``(fields to set, what the recipe chose)`` for ``config``'s ``"auto"`` fields; ``config`` is not changed.

    Explicit values always win; ``method_args`` keys the recipe names are added when the user gave none. ``update_every``
    stays None ("auto") under the recipe: it depends on the run's length and is resolved by
    ``SparsityConfig.update_interval`` once the Trainer knows it. Under ``recipe="none"`` (or sparsity 0) the
    fields get their plain defaults and nothing counts as chosen.
    """
    filled: dict[str, Any] = {}
    if config.recipe != AUTO or config.sparsity == 0:
        for name, plain in PLAIN_DEFAULTS.items():
            if getattr(config, name) == UNSET[name]:
                filled[name] = plain
        return filled, {}
    recipe = get_method_class(config.method).recipe_defaults(config)
    chosen: dict[str, Any] = {}
    for name, plain in PLAIN_DEFAULTS.items():
        if getattr(config, name) != UNSET[name]:
            continue
        filled[name] = recipe.get(name, plain)
        if name in recipe:  # a method without a measured recipe keeps its plain defaults silently
            chosen[name] = recipe[name]
    added = {key: value for key, value in recipe.get("method_args", {}).items() if key not in config.method_args}
    if added:  # e.g. gmp's criterion
        filled["method_args"] = {**config.method_args, **added}
        chosen.update(added)
    return filled, chosen


def apply_recipe(config: Config) -> Config:
    """``config`` with its ``"auto"`` fields filled: a validated copy (``config`` itself is not changed) whose
    ``recipe_choices`` record what the recipe chose. A config already filled is returned as it is, so every
    layer may call this on what it is given."""
    if config.recipe_choices is not None:
        return config
    filled, chosen = recipe_values(config)
    applied = type(config).from_dict({**config.to_dict(), **filled})
    applied.recipe_choices = chosen
    return applied


def resolve_recipe(config: "SparsityConfig") -> dict[str, Any]:
    """Deprecated: fills ``config`` in place and returns what the recipe chose; use :func:`apply_recipe`."""
    filled, chosen = recipe_values(config)
    for name, value in filled.items():
        setattr(config, name, value)
    config.recipe_choices = chosen
    return chosen
