"""What the sparse-aware recipe changed about a user's run, said once at the start and kept.

``SparsityConfig(recipe="auto")`` may train longer (``schedule_scale``) and replace the LR schedule
(``lr_rewinding``). A user must never discover that from the clock: ``describe_run_changes`` says it
in a warning at ``SparseTrainer`` construction, ``RunChangesCallback`` records it in
``state.log_history`` (``recipe_*`` keys) and the model card lists it. ``recipe="none"`` turns it off.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from transformers import TrainerCallback

logger = logging.getLogger(__name__)


def describe_run_changes(config: Any, args_before: Any, args_after: Any) -> list[str]:
    """One line per change: recipe choices, then the run length and LR schedule they imply."""
    if config is None:
        return []
    lines = [f"recipe='auto' set {name}={value!r}" for name, value in config.recipe_choices.items()]
    if config.schedule_scale != 1.0:
        if args_before.max_steps > 0:
            lines.append(f"max_steps {args_before.max_steps} -> {args_after.max_steps} (schedule_scale={config.schedule_scale:g})")
        else:
            lines.append(
                f"num_train_epochs {args_before.num_train_epochs:g} -> {args_after.num_train_epochs:g} "
                f"(schedule_scale={config.schedule_scale:g})"
            )
    if config.lr_rewinding is not None:
        lines.append(
            f"LR schedule: {config.lr_rewinding} rewinding to {config.lr_floor:g} x peak after every mask update "
            f"replaces lr_scheduler_type={getattr(args_before.lr_scheduler_type, 'value', args_before.lr_scheduler_type)}"
        )
    return lines


class RunChangesCallback(TrainerCallback):
    """Puts the run changes into ``state.log_history`` once per run (a resumed run already has them)."""

    def __init__(self, recipe: Optional[str], lines: list[str]):
        self.recipe = recipe
        self.lines = lines

    def on_train_begin(self, args, state, control, **kwargs):
        if any("recipe" in entry for entry in state.log_history):
            return
        state.log_history.append({"step": state.global_step, "recipe": self.recipe, "recipe_changes": list(self.lines)})


def announce_run_changes(config: Any, args_before: Any, args_after: Any) -> RunChangesCallback:
    """Warn once about the changes (if any) and return the callback that records them in the run's logs."""
    lines = describe_run_changes(config, args_before, args_after)
    if lines:
        logger.warning(
            "hf_sparse changed your run for sparse training (SparsityConfig(recipe='none') keeps exactly your "
            "TrainingArguments):\n  %s", "\n  ".join(lines),
        )
    return RunChangesCallback(config.recipe if config is not None else None, lines)
