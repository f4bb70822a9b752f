"""A dense teacher in the training loop: its arguments checked, its model frozen, the distillation
loss of one training step, and its logits cached on the training set where they can be
(losses in ``distill.py``, the cache in ``teacher_cache.py``)."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from .distill import DistillationConfig, distillation_loss, hidden_states_loss, kd_mask
from .teacher_cache import TEACHER_LOGITS, CachedLogitsCollator, with_teacher_logits


def prepare_teacher(
    teacher: Optional[torch.nn.Module], config: Optional[DistillationConfig], device: Any
) -> Optional[DistillationConfig]:
    """The run's ``DistillationConfig`` (defaults when only a teacher is given; None without a teacher),
    after checking the pair and moving the teacher to ``device``, frozen in eval mode."""
    if config is not None and not isinstance(config, DistillationConfig):
        raise TypeError(f"distillation must be a DistillationConfig, got {type(config).__name__}")
    if config is not None and teacher is None:
        raise ValueError("distillation=DistillationConfig(...) needs teacher_model=<the dense model>")
    if teacher is None:
        return None
    teacher.to(device).eval().requires_grad_(False)
    return config if config is not None else DistillationConfig()


def distillation_step(
    task_loss: Callable[[dict], tuple[torch.Tensor, Any]],
    teacher: torch.nn.Module,
    config: DistillationConfig,
    inputs: dict,
    cached_logits: Optional[torch.Tensor],
    autocast: Callable[[], Any],
) -> tuple[torch.Tensor, Any]:
    """``(loss, student outputs)`` of one training step; ``task_loss(inputs)`` is the Trainer's own
    ``(loss, outputs)``. The teacher runs only when its logits are not cached or its hidden states are used."""
    layerwise = config.hidden_states_weight > 0
    if layerwise:
        inputs = {**inputs, "output_hidden_states": True}
    loss, outputs = task_loss(inputs)
    key = config.logits_key
    teacher_outputs = None
    if cached_logits is None or layerwise:
        teacher_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        with torch.no_grad(), autocast():
            teacher_outputs = teacher(**teacher_inputs)
        cached_logits = teacher_outputs[key]
    mask = kd_mask(outputs[key], inputs.get("labels"), inputs.get("attention_mask"))  # per token: real, labelled
    loss = distillation_loss(loss, outputs[key], cached_logits, config, mask)
    if layerwise:
        loss = loss + config.hidden_states_weight * hidden_states_loss(
            outputs["hidden_states"], teacher_outputs["hidden_states"], inputs.get("attention_mask")
        )
    return loss, outputs


def training_set_with_teacher_logits(trainer: Any, model_inputs: Callable[[Any], Any]) -> tuple[Any, Callable]:
    """``(training set, collator)``: the trainer's training set carrying the teacher's logits when they can
    be cached (one teacher pass before training instead of one per step), and a collator that turns that
    column into batch tensors. ``model_inputs(dataset)`` keeps the model's columns."""
    dataset = with_teacher_logits(
        trainer.train_dataset, trainer.teacher_model, trainer.data_collator, trainer.distillation,
        model_inputs=model_inputs, batch_size=trainer.args.per_device_eval_batch_size, device=trainer.args.device,
        autocast=trainer.accelerator.autocast,
        show_progress=not trainer.args.disable_tqdm and trainer.is_local_process_zero(),
    )  # fmt: skip
    collator = trainer.data_collator
    if TEACHER_LOGITS in getattr(dataset, "column_names", ()) and not isinstance(collator, CachedLogitsCollator):
        collator = CachedLogitsCollator(collator)
    return dataset, collator
