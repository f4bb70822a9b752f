"""EAST ("Pushing the limits of sparsity"): DyReLU phasing + weight sharing + cyclic sparsity.

``prepare_east(model, args, seed)`` does the model surgery (before the optimizer exists) and
returns the TrainerCallbacks that finish it; ``SparseTrainer`` calls it for ``method="east"``.
``east_config(sparsity)`` and ``EAST_TRAINING_ARGS`` hold the paper code's recipe defaults.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn
from transformers import TrainerCallback

from .dyrelu import DyReLUPhasingCallback, install_dyrelu
from .weight_sharing import materialize_shared_weights, share_weights

logger = logging.getLogger(__name__)

# Recipe of the EAST code (methods.md section 5, unverified): pass as TrainingArguments(**EAST_TRAINING_ARGS)
# plus an lr x0.1 step at 50% and 75% of training (a MultiStepLR via ``optimizers=``).
EAST_TRAINING_ARGS: dict[str, Any] = {
    "optim": "sgd",
    "optim_args": "momentum=0.9,nesterov=True",
    "learning_rate": 0.1,
    "weight_decay": 5e-4,
    "max_grad_norm": 1.0,
}


class MaterializeSharedWeightsCallback(TrainerCallback):
    """At the end of training, turn shared convs into plain ``nn.Conv2d`` so the model saves as a ResNet."""

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if model is not None:
            count = materialize_shared_weights(model)
            logger.info("weight sharing: materialised %d shared convs", count)


def prepare_east(model: nn.Module, args: Any, seed: int = 0) -> list[TrainerCallback]:
    """Apply the tricks ``args`` (EASTArgs) enable; returns the callbacks that phase and undo them."""
    callbacks: list[TrainerCallback] = []
    if args.weight_sharing:
        share_weights(model, seed=seed)
        callbacks.append(MaterializeSharedWeightsCallback())
    if args.dyrelu:
        install_dyrelu(model, reduction=args.dyrelu_reduction, seed=seed)
        callbacks.append(DyReLUPhasingCallback(args.dyrelu_start, args.dyrelu_end))
    return callbacks


def east_config(sparsity: float = 0.99, **overrides: Any):
    """A ``SparsityConfig`` with EAST's defaults: ERK allocation, updates every 100 steps until 75%."""
    from ..config import SparsityConfig

    values: dict[str, Any] = dict(method="east", sparsity=sparsity, allocation="erk", update_every=100, end=0.75)
    values.update(overrides)
    return SparsityConfig(**values)
