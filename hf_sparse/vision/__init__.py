"""Vision helpers: DyReLU phasing and ResNet weight sharing (the model surgery EAST uses); EAST's own names
(``east_config``, ``prepare_east``, ``EAST_TRAINING_ARGS``) are re-exported from their homes."""

from .dyrelu import DyReLU, DyReLUPhasingCallback, PhasedReLU, install_dyrelu, remove_dyrelu, set_beta
from .weight_sharing import (
    MaterializeSharedWeightsCallback,
    SharedConv2d,
    materialize_shared_weights,
    owned_sparsity,
    share_weights,
)
from ..methods.east import EAST_TRAINING_ARGS, prepare_east
from ..presets import east_config

__all__ = [
    "EAST_TRAINING_ARGS",
    "DyReLU",
    "DyReLUPhasingCallback",
    "MaterializeSharedWeightsCallback",
    "PhasedReLU",
    "SharedConv2d",
    "east_config",
    "install_dyrelu",
    "materialize_shared_weights",
    "owned_sparsity",
    "prepare_east",
    "remove_dyrelu",
    "set_beta",
    "share_weights",
]
