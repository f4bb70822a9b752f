"""Resuming: the masks and method state of a ``SparseTrainer`` checkpoint back into the engine."""

from __future__ import annotations

import logging
from typing import Any, Optional

from ..io.training_state import has_sparsity_state, load_sparsity_state
from . import fsdp

logger = logging.getLogger(__name__)


def restore_sparsity_state(engine: Any, config: Optional[Any], checkpoint: str, sharded: bool = False) -> None:
    """Load ``checkpoint``'s sparsity state into ``engine`` (a Sparsifier); ``sharded`` (FSDP2) reads this
    rank's own masks first. A checkpoint not written by SparseTrainer is an error that says what to do."""
    if sharded and fsdp.load_rank_state(engine, checkpoint):
        return
    if not has_sparsity_state(checkpoint):
        raise ValueError(
            f"{checkpoint} has no hf_sparse state (sparsity_state.safetensors): it was not written by "
            "SparseTrainer. To start sparse training from its weights, load the model from it "
            "and train without resume_from_checkpoint."
        )
    expected = {name: param.shape for name, param in engine.params.items()}
    state, saved_config = load_sparsity_state(checkpoint, expected_masks=expected)
    current = config.to_dict() if config is not None else {}
    differing = sorted(k for k in current if k in saved_config and saved_config[k] != current[k])
    if differing:
        logger.warning("resuming with a sparsity config that differs from the checkpoint's in %s", differing)
    engine.load_state_dict(state)
