"""SparsityCallback: the per-step work, at the moments the Trainer offers.

``on_pre_optimizer_step`` (gradients all-reduced and clipped): keep dense gradients for growth,
zero the gradients of pruned weights. ``on_optimizer_step`` (new weights): update masks when
due, re-apply them. ``SparseTrainer`` also masks gradients *before* clipping; with a plain
``Trainer`` (``callbacks=[SparsityCallback(Sparsifier(model, config))]``) pruned weights'
gradients still count in the clip norm.
"""

from __future__ import annotations

from typing import Callable, Optional

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ..core.sparsifier import MaskEngine


class SparsityCallback(TrainerCallback):
    def __init__(self, sparsifier: MaskEngine, step_was_skipped: Optional[Callable[[], bool]] = None):
        self.sparsifier = sparsifier
        self.step_was_skipped = step_was_skipped or (lambda: False)

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        # ``model`` is the prepared one: under FSDP2 its parameters are new sharded DTensors.
        self.sparsifier.begin(state.max_steps, kwargs.get("model"))

    def on_pre_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self.sparsifier.prepare_gradients(state.global_step + 1)

    def on_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        self.sparsifier.after_optimizer_step(
            state.global_step + 1, kwargs.get("optimizer"), skipped=self.step_was_skipped()
        )


def sparsity_logs(sparsifier: MaskEngine) -> dict[str, float]:
    """What each Trainer log line gains: current and target sparsity, and the last mask update's figures
    (reported once, then cleared)."""
    logs = {"sparsity": round(sparsifier.sparsity, 6), "target_sparsity": round(sparsifier.target_sparsity(), 6)}
    logs.update(sparsifier.last_update_logs)
    sparsifier.last_update_logs = {}
    return logs
