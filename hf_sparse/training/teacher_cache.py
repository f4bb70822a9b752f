"""Teacher logits computed once, before training (offline distillation).

The teacher is frozen and in eval mode, so its logits for a training example never change. Computing
them in one inference pass instead of at every step saves the teacher's forward pass: 15% of a
distillation step in the GLUE example (teacher and student the same size), time the sparse phase can
spend on more steps. It is only right when the collator is deterministic (it
pads, nothing else): a collator that masks or crops at random would pair an input with the logits of
another input. ``DistillationConfig.cache_teacher_logits=None`` therefore turns it on only for
collators known to pad and nothing else.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

#: The training-set column that carries the cached logits (one row of ``num_labels`` floats per example).
TEACHER_LOGITS = "teacher_logits"


def is_deterministic_collator(collator: Callable) -> bool:
    """Collators that only pad and stack: the same example always gives the same tensors."""
    from transformers import DataCollatorWithPadding, DefaultDataCollator, default_data_collator

    return collator is default_data_collator or type(collator) in (DataCollatorWithPadding, DefaultDataCollator)


def cache_refusal(dataset: Any, collator: Callable, wanted: Optional[bool]) -> Optional[str]:
    """Why the logits cannot be cached for this run (None: they can).

    ``wanted=True`` (asked for explicitly) trusts the user about the collator; ``None`` (auto) does not.
    """
    if wanted is False:
        return "cache_teacher_logits=False"
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a transformers[torch] extra
        datasets = None
    if datasets is None or not isinstance(dataset, datasets.Dataset):
        return f"the training set is a {type(dataset).__name__}, not a datasets.Dataset (a column is added to it)"
    if wanted is None and not is_deterministic_collator(collator):
        return (f"the collator {type(collator).__name__} may change an example between epochs "
                "(pass DistillationConfig(cache_teacher_logits=True) if it only pads)")
    return None


@torch.no_grad()
def teacher_logits(
    teacher: torch.nn.Module,
    model_inputs: Any,
    collator: Callable,
    batch_size: int,
    device: torch.device,
    logits_key: str = "logits",
    autocast: Optional[Callable[[], Any]] = None,
    show_progress: bool = True,
) -> Optional[torch.Tensor]:
    """The teacher's logits for every row of ``model_inputs`` in order, shape ``(rows, num_labels)``.

    ``model_inputs`` holds only the model's input columns (and labels, which the teacher does not see).
    Returns None when the logits are not one vector per example (per-token logits vary in length).
    """
    # Its own generator: a DataLoader draws a seed from the global RNG, which would shift the run's
    # dropout and shuffling away from those of the same run without the cache.
    loader = DataLoader(model_inputs, batch_size=batch_size, shuffle=False, collate_fn=collator,
                        generator=torch.Generator())
    rows: list[torch.Tensor] = []
    for batch in tqdm(loader, desc="Teacher logits (once, before training)", disable=not show_progress):
        inputs = {k: v.to(device) for k, v in batch.items() if k not in ("labels", "label", "label_ids")}
        with autocast() if autocast is not None else torch.autocast(device.type, enabled=False):
            logits = teacher(**inputs)[logits_key]
        if logits.dim() != 2:
            return None
        rows.append(logits.float().cpu())
    return torch.cat(rows) if rows else None


def add_logits_column(dataset: Any, logits: torch.Tensor) -> Any:
    """``dataset`` plus the ``teacher_logits`` column (any previous one replaced)."""
    if len(logits) != len(dataset):
        raise ValueError(f"{len(logits)} teacher logit rows for a training set of {len(dataset)} rows")
    if TEACHER_LOGITS in dataset.column_names:
        dataset = dataset.remove_columns(TEACHER_LOGITS)
    return dataset.add_column(TEACHER_LOGITS, logits.tolist())


def with_teacher_logits(
    dataset: Any,
    teacher: torch.nn.Module,
    collator: Callable,
    config: Any,
    model_inputs: Callable[[Any], Any],
    batch_size: int,
    device: torch.device,
    autocast: Optional[Callable[[], Any]] = None,
    show_progress: bool = True,
) -> Any:
    """``dataset`` with the teacher's logits as a column, or unchanged where they cannot be cached.

    ``config`` is the run's ``DistillationConfig``; ``model_inputs(dataset)`` keeps the model's input
    columns (the Trainer's ``_remove_unused_columns``). Asking for the cache (``True``) where it cannot
    work is an error; under auto (``None``) the reason is logged and the teacher runs at every step.
    """
    wanted = config.cache_teacher_logits
    if config.hidden_states_weight > 0:  # the hidden states need the teacher at every step
        return dataset
    reason = cache_refusal(dataset, collator, wanted)
    if reason is not None:
        if wanted:
            raise ValueError(f"DistillationConfig(cache_teacher_logits=True) cannot be honoured: {reason}")
        logger.info("teacher logits computed at every step: %s", reason)
        return dataset
    if TEACHER_LOGITS in dataset.column_names:
        return dataset  # cached by an earlier train() of this trainer
    logits = teacher_logits(teacher, model_inputs(dataset), collator, batch_size, device, config.logits_key,
                            autocast, show_progress)
    if logits is None:
        if wanted:
            raise ValueError("DistillationConfig(cache_teacher_logits=True): the teacher's logits are not one vector "
                             "per example (per-token logits?); use cache_teacher_logits=None or False")
        logger.info("teacher logits computed at every step: they are not one vector per example")
        return dataset
    logger.info("teacher logits cached for %d training examples", len(logits))
    return add_logits_column(dataset, logits)
