"""Which sparsity engine a model gets: the ``Sparsifier``, or the ``PeftSparsifier`` that keeps a sparse
LoRA base sparse; plus the callbacks a method adds to the model (DyReLU phasing, weight sharing)."""

from __future__ import annotations

from typing import Any, Optional, Union

from ..config import SparsityConfig, as_sparsity_config
from ..core.peft_layout import is_peft_model
from ..sparsifier import Sparsifier
from ..lora.peft_sparsifier import PeftSparsifier
from ..methods.recipe_defaults import apply_recipe
from ..methods.registry import get_method_class


def build_engine(
    model: Any, sparsity_config: Union[SparsityConfig, dict, str, None], base_masks: Any = None
) -> tuple[Union[Sparsifier, PeftSparsifier], Optional[SparsityConfig], list]:
    """``(engine, its config, the method's model callbacks)``; the config is None for a sparse LoRA
    base given no ``sparsity_config`` (its masks are kept with the constant method, see ``lora/``). The config
    returned is the one the engine runs: the given one with its "auto" fields filled by the recipe."""
    if base_masks is not None or is_peft_model(model):
        given = None if sparsity_config is None else apply_recipe(as_sparsity_config(sparsity_config))
        engine = PeftSparsifier(model, given, base_masks)
        return engine, engine.config, []
    config = apply_recipe(as_sparsity_config(sparsity_config))
    callbacks = list(get_method_class(config.method).prepare_model(model, config))  # may change the model
    return Sparsifier(model, config), config, callbacks


def ignores_loss_kwargs(model: Any) -> bool:
    """Models whose forward takes ``**kwargs`` but ignores ``num_items_in_batch`` (transformers 5.24): the
    Trainer must not rely on them normalising the loss, else their gradients are GA times too large."""
    from transformers import ResNetForImageClassification

    return isinstance(model, ResNetForImageClassification)
