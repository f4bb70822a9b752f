"""EAST ("Pushing the limits of sparsity"): cyclic sparsity + DyReLU phasing + weight sharing; the method's
one home (its model preparation included; the ResNet surgery it uses is in ``hf_sparse.vision``).

Masks follow :class:`~hf_sparse.methods.cyclic.Cyclic` (cosine density cycles, then RigL
drop-and-grow). ``prepare_model`` (called by ``SparseTrainer`` before the optimizer exists) makes
blocks 3.. of each ResNet stage share block 2's convs and swaps ReLUs for phased DyReLUs; the
returned callbacks drive beta 1 -> 0 over ``[dyrelu_start, dyrelu_end]`` and restore a plain
ResNet at the end of training. With sharing, ``sparsity`` is the budget over the *unshared*
model's conv weights, and the owned weights get the matching higher density.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from .registry import register_method
from .cyclic import Cyclic, CyclicArgs

logger = logging.getLogger(__name__)

# Training settings of the EAST authors' code (not re-checked): pass as TrainingArguments(**EAST_TRAINING_ARGS)
# plus an lr x0.1 step at 50% and 75% of training (a MultiStepLR via ``optimizers=``).
EAST_TRAINING_ARGS: dict[str, Any] = {
    "optim": "sgd",
    "optim_args": "momentum=0.9,nesterov=True",
    "learning_rate": 0.1,
    "weight_decay": 5e-4,
    "max_grad_norm": 1.0,
}


@dataclass
class EASTArgs(CyclicArgs):
    """``method_args`` of ``east``: the cyclic options plus the two architectural tricks."""

    dyrelu: bool = field(default=True, metadata={"help": "Swap ReLUs for DyReLUs phased out to plain ReLUs."})
    dyrelu_start: float = field(default=0.25, metadata={"help": "Fraction of the run where DyReLU's beta starts to fall."})
    dyrelu_end: float = field(default=0.5, metadata={"help": "Fraction of the run where beta reaches 0 (a plain ReLU)."})
    dyrelu_reduction: int = field(default=4, metadata={"help": "Channel reduction (>= 1) of DyReLU's coefficient MLP."})
    weight_sharing: bool = field(
        default=True, metadata={"help": "Blocks 3.. of each ResNet stage share block 2's convs (counted once)."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("dyrelu", "weight_sharing"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"method_args.{name} must be true or false, got {getattr(self, name)!r}")
        if not 0.0 <= self.dyrelu_start <= self.dyrelu_end <= 1.0:
            raise ValueError(
                f"method_args needs 0 <= dyrelu_start <= dyrelu_end <= 1, got {self.dyrelu_start}, {self.dyrelu_end}"
            )
        if isinstance(self.dyrelu_reduction, bool) or not isinstance(self.dyrelu_reduction, int) or self.dyrelu_reduction < 1:
            raise ValueError(f"method_args.dyrelu_reduction must be an int >= 1, got {self.dyrelu_reduction!r}")


@register_method("east")
class EAST(Cyclic):
    """Cyclic sparsity whose budget counts shared weights once per use; see the module docstring."""

    Args = EASTArgs
    summary = ("`cyclic` + DyReLU phasing + ResNet weight sharing; `hf_sparse.vision.east_config(sparsity)` sets "
               "the recipe defaults")
    paper = "EAST: *Pushing the limits of sparsity*"
    fsdp_refusal = (
        "east makes ResNet blocks share conv weights (FSDP2 cannot shard one parameter used by several "
        "FSDP groups) and swaps activations on the model at the end of training; train it with DDP"
    )

    @classmethod
    def prepare_model(cls, model: Any, config: Any) -> list:
        return prepare_east(model, cls.parse_args(config.method_args or {}), seed=config.seed)

    def final_sparsity(self) -> float:
        from ..vision.weight_sharing import owned_sparsity

        return owned_sparsity(float(self.config.sparsity), [t.param for t in self.targets])


def prepare_east(model: Any, args: Any, seed: int = 0) -> list:
    """Apply the tricks ``args`` (EASTArgs) enable, before the optimizer exists; returns the TrainerCallbacks
    that phase and undo them. The ResNet surgery (and transformers) is imported only for ``east``."""
    from ..vision.dyrelu import DyReLUPhasingCallback, install_dyrelu
    from ..vision.weight_sharing import MaterializeSharedWeightsCallback, share_weights

    callbacks: list = []
    if args.weight_sharing:
        share_weights(model, seed=seed)
        callbacks.append(MaterializeSharedWeightsCallback())
    if args.dyrelu:
        install_dyrelu(model, reduction=args.dyrelu_reduction, seed=seed)
        callbacks.append(DyReLUPhasingCallback(args.dyrelu_start, args.dyrelu_end))
    return callbacks
