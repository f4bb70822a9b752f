"""Vision helpers: DyReLU phasing, ResNet weight sharing, the EAST preset."""

from .dyrelu import DyReLU, DyReLUPhasingCallback, PhasedReLU, install_dyrelu, remove_dyrelu, set_beta
from .east import EAST_TRAINING_ARGS, MaterializeSharedWeightsCallback, east_config, prepare_east
from .weight_sharing import SharedConv2d, materialize_shared_weights, owned_sparsity, share_weights

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
