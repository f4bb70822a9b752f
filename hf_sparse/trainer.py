"""SparseTrainer: a ``transformers.Trainer`` whose model ends sparse, with one extra argument.

Thin on purpose: it builds the ``Sparsifier``, hooks it into the loop (``SparsityCallback``),
masks gradients before clipping, logs sparsity, and saves/restores the masks with checkpoints.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional, Union

from transformers import Trainer

from .callback import SparsityCallback
from .checkpoint import has_sparsity_state, load_sparsity_state, save_sparsity_state
from .config import SparsityConfig
from .registry import get_method_class
from .sparsifier import Sparsifier

logger = logging.getLogger(__name__)


def _as_config(value: Union[SparsityConfig, dict, str, os.PathLike, None]) -> SparsityConfig:
    if value is None:
        logger.info("SparseTrainer: no sparsity_config given, using SparsityConfig() defaults")
        return SparsityConfig()
    if isinstance(value, SparsityConfig):
        return value
    if isinstance(value, dict):
        return SparsityConfig.from_dict(value)
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        return SparsityConfig.from_pretrained(path) if os.path.isdir(path) else SparsityConfig.from_json_file(path)
    raise TypeError(f"sparsity_config must be a SparsityConfig, dict or JSON path, got {type(value).__name__}")


def _ignores_loss_kwargs(model: Any) -> bool:
    """Models whose forward takes ``**kwargs`` but ignores ``num_items_in_batch`` (transformers 5.24)."""
    from transformers import ResNetForImageClassification

    return isinstance(model, ResNetForImageClassification)


class SparseTrainer(Trainer):
    """``Trainer(...)`` plus ``sparsity_config=SparsityConfig(...)``; ``trainer.masks`` holds the masks."""

    def __init__(self, *args: Any, sparsity_config: Union[SparsityConfig, dict, str, None] = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.model is None:
            raise ValueError("SparseTrainer needs a model (model_init is not supported)")
        self.sparsity_config = _as_config(sparsity_config)
        if _ignores_loss_kwargs(self.model):  # else its gradients are GA times too large
            self.model_accepts_loss_kwargs = False
        for callback in get_method_class(self.sparsity_config.method).prepare_model(self.model, self.sparsity_config):
            self.add_callback(callback)
        self.sparsifier = Sparsifier(self.model, self.sparsity_config)
        self.add_callback(SparsityCallback(self.sparsifier, lambda: self.accelerator.optimizer_step_was_skipped))

    @property
    def masks(self) -> dict:
        """Masks by parameter name (bool tensors, True = kept)."""
        return self.sparsifier.masks

    # -- gradients: mask before clipping so pruned weights do not count in the norm -----------
    def _clip_grad_norm(self, model):
        self.sparsifier.prepare_gradients(self.state.global_step + 1)
        return super()._clip_grad_norm(model)

    def _get_grad_norm(self, model, grad_norm=None):
        if grad_norm is None:
            self.sparsifier.prepare_gradients(self.state.global_step + 1)
        return super()._get_grad_norm(model, grad_norm=grad_norm)

    # -- logging -----------------------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time: Optional[float] = None) -> None:
        logs["sparsity"] = round(self.sparsifier.sparsity, 6)
        logs["target_sparsity"] = round(self.sparsifier.target_sparsity(), 6)
        logs.update(self.sparsifier.last_update_logs)
        self.sparsifier.last_update_logs = {}
        super().log(logs, start_time)

    # -- saving and resuming ---------------------------------------------------------------------
    def _save(self, output_dir: Optional[str] = None, state_dict: Optional[dict] = None) -> None:
        super()._save(output_dir, state_dict)
        if not self.args.should_save:
            return
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        self.sparsity_config.save_pretrained(output_dir)
        save_sparsity_state(output_dir, self.sparsifier.state_dict(), self.sparsity_config.to_dict())

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        self._load_sparsity_state(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        super()._load_best_model()
        self._load_sparsity_state(self.state.best_model_checkpoint)

    def _load_sparsity_state(self, checkpoint: str) -> None:
        if not has_sparsity_state(checkpoint):
            raise ValueError(
                f"{checkpoint} has no hf_sparse state (sparsity_state.json): it was not written by "
                "SparseTrainer. To start sparse training from its weights, load the model from it "
                "and train without resume_from_checkpoint."
            )
        state, saved_config = load_sparsity_state(checkpoint)
        current = self.sparsity_config.to_dict()
        differing = sorted(k for k in current if k in saved_config and saved_config[k] != current[k])
        if differing:
            logger.warning("resuming with a sparsity config that differs from the checkpoint's in %s", differing)
        self.sparsifier.load_state_dict(state)
