"""The gradient sampler ``SparseTrainer`` gives its engine: fresh batches of its own training set, its own loss.

A method that re-estimates something right before a mask update (gmp's ``fisher_estimate='fresh'``)
asks the engine for fresh gradients (``hf_sparse.core.calibration``); the engine knows neither data nor
loss, so the Trainer provides them here: batches drawn from ``train_dataset`` (the columns and collator
the training loader uses, moved to the device as training batches are) and ``compute_loss`` run with the
model in eval mode (so a teacher, if any, is not used: the loss is the task's own, as oBERT's Fisher).
"""

from __future__ import annotations

from typing import Any, Mapping

from ..core.calibration import GradientSampler, seeded_batches


def trainer_gradient_sampler(trainer: Any) -> GradientSampler:
    """A ``GradientSampler`` over ``trainer``'s training set and loss (built lazily: the set may change until training)."""

    def batches(n: int, seed: int):
        if trainer.train_dataset is None:
            raise ValueError("fresh gradients (gmp's fisher_estimate='fresh') need the Trainer's train_dataset")
        dataset, collate = trainer.train_dataset, trainer.data_collator
        try:
            import datasets

            is_hf_dataset = isinstance(dataset, datasets.Dataset)
        except ImportError:  # pragma: no cover - datasets is a transformers dependency
            is_hf_dataset = False
        if is_hf_dataset:
            dataset = trainer._remove_unused_columns(dataset, description="calibration")
        else:
            collate = trainer._get_collator_with_removed_columns(collate, description="calibration")
        return seeded_batches(dataset, trainer._train_batch_size, collate, trainer._prepare_inputs)(n, seed)

    def loss(model: Any, batch: Mapping[str, Any]):
        with trainer.compute_loss_context_manager():
            return trainer.compute_loss(model, dict(batch))

    return GradientSampler(trainer.model, batches, loss)
