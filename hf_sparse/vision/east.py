"""Deprecated alias: EAST has one home, ``hf_sparse.methods.east`` (the method, ``prepare_east``,
``EAST_TRAINING_ARGS``); ``east_config`` is a preset (``hf_sparse.presets``) and the shared-weights
callback sits with weight sharing (``hf_sparse.vision.weight_sharing``)."""

from ..methods.east import EAST_TRAINING_ARGS, prepare_east  # noqa: F401
from ..presets import east_config  # noqa: F401
from .weight_sharing import MaterializeSharedWeightsCallback  # noqa: F401
