"""Teacher logits computed once, before training (offline distillation).

The teacher is frozen and in eval mode, so its logits for a training example never change. Computing
them in one inference pass instead of at every step saves the teacher's forward pass: 15% of a
distillation step in the GLUE example (teacher and student the same size), time the sparse phase can
spend on more steps. It is only right when the collator is deterministic (it
pads, nothing else): a collator that masks or crops at random would pair an input with the logits of
another input. ``DistillationConfig.cache_teacher_logits=None`` therefore turns it on only for
collators known to pad and nothing else.

Per-token logits (token classification) are cached too: each example keeps the logits of its real
tokens (``attention_mask``), a ``(tokens, num_labels)`` list, and ``CachedLogitsCollator`` puts
them back at the real positions of the padded batch. Past ``MAX_CACHED_FLOATS`` (a vocabulary-sized
head, a very large set) the teacher runs at every step instead, and the log says so.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional, Union

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

#: The training-set column that carries the cached logits: ``num_labels`` floats per example, or per
#: real token of the example (a list of such rows) for per-token logits.
TEACHER_LOGITS = "teacher_logits"
#: Most floats the cache may hold (4 bytes each, twice: the tensor and the Arrow column); beyond, the
#: teacher runs at every step.
MAX_CACHED_FLOATS = 50_000_000


def is_deterministic_collator(collator: Callable) -> bool:
    """Collators that only pad and stack: the same example always gives the same tensors."""
    from transformers import (
        DataCollatorForTokenClassification,
        DataCollatorWithPadding,
        DefaultDataCollator,
        default_data_collator,
    )

    if isinstance(collator, CachedLogitsCollator):
        collator = collator.collator
    known = (DataCollatorWithPadding, DefaultDataCollator, DataCollatorForTokenClassification)
    return collator is default_data_collator or type(collator) in known


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
    max_floats: int = MAX_CACHED_FLOATS,
) -> Optional[Union[torch.Tensor, list[torch.Tensor]]]:
    """The teacher's logits for every row of ``model_inputs`` in order.

    One vector per example: a tensor ``(rows, num_labels)``. Per token: a list with one
    ``(real tokens, num_labels)`` tensor per row, the positions where ``attention_mask`` is 1 (every
    position when the batch has no mask). ``model_inputs`` holds only the model's input columns (and
    labels, which the teacher does not see). Returns None when the logits cannot be cached: neither
    shape, or more than ``max_floats`` floats.
    """
    # Its own generator: a DataLoader draws a seed from the global RNG, which would shift the run's
    # dropout and shuffling away from those of the same run without the cache.
    loader = DataLoader(model_inputs, batch_size=batch_size, shuffle=False, collate_fn=collator,
                        generator=torch.Generator())
    vectors: list[torch.Tensor] = []
    tokens: list[torch.Tensor] = []
    floats = 0
    for batch in tqdm(loader, desc="Teacher logits (once, before training)", disable=not show_progress):
        inputs = {k: v.to(device) for k, v in batch.items() if k not in ("labels", "label", "label_ids")}
        with autocast() if autocast is not None else torch.autocast(device.type, enabled=False):
            logits = teacher(**inputs)[logits_key]
        logits = logits.float().cpu()
        if logits.dim() == 2 and not tokens:
            vectors.append(logits)
            floats += logits.numel()
        elif logits.dim() == 3 and not vectors:
            real = batch.get("attention_mask")
            real = torch.ones(logits.shape[:2], dtype=torch.bool) if real is None else real.cpu().to(torch.bool)
            if tuple(real.shape) != tuple(logits.shape[:2]):
                return None
            tokens.extend(row[keep] for row, keep in zip(logits, real))
            floats += int(real.sum()) * logits.shape[-1]
        else:
            return None
        if floats > max_floats:
            return None
    if tokens:
        return tokens
    return torch.cat(vectors) if vectors else None


def add_logits_column(dataset: Any, logits: Union[torch.Tensor, list[torch.Tensor]]) -> Any:
    """``dataset`` plus the ``teacher_logits`` column (any previous one replaced)."""
    if len(logits) != len(dataset):
        raise ValueError(f"{len(logits)} teacher logit rows for a training set of {len(dataset)} rows")
    if TEACHER_LOGITS in dataset.column_names:
        dataset = dataset.remove_columns(TEACHER_LOGITS)
    column = logits.tolist() if isinstance(logits, torch.Tensor) else [row.tolist() for row in logits]
    return dataset.add_column(TEACHER_LOGITS, column)


class CachedLogitsCollator:
    """Wraps the run's collator: cached teacher logits leave the features before it and join the batch after.

    A row per example is stacked; per-token rows (the real tokens only) are put back at the positions
    where the padded batch's ``attention_mask`` is 1, zeros elsewhere (those positions are out of the
    distillation term, ``distill.kd_mask``). Features without the column pass through unchanged.
    """

    def __init__(self, collator: Callable) -> None:
        self.collator = collator

    def __call__(self, features: list) -> Any:
        if not features or not isinstance(features[0], dict) or TEACHER_LOGITS not in features[0]:
            return self.collator(features)
        cached = [torch.as_tensor(f[TEACHER_LOGITS], dtype=torch.float32) for f in features]
        batch = self.collator([{k: v for k, v in f.items() if k != TEACHER_LOGITS} for f in features])
        if cached[0].dim() == 1:
            batch[TEACHER_LOGITS] = torch.stack(cached)
            return batch
        real = batch.get("attention_mask")
        if real is None:
            real = torch.ones((len(features), max(len(c) for c in cached)), dtype=torch.bool)
        real = real.to(torch.bool)
        logits = torch.zeros((*real.shape, cached[0].shape[-1]), dtype=torch.float32)
        for row, (keep, values) in enumerate(zip(real, cached)):
            if int(keep.sum()) != len(values):
                raise ValueError(
                    f"cached teacher logits: example {row} has {len(values)} real tokens cached but "
                    f"{int(keep.sum())} in the batch; the collator changes examples (cache_teacher_logits=False)"
                )
            logits[row, keep] = values
        batch[TEACHER_LOGITS] = logits
        return batch


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
    columns (the Trainer's ``_remove_unused_columns``). The run's collator must then be wrapped in
    ``CachedLogitsCollator`` (``SparseTrainer`` does it), which turns the column into batch tensors. Asking for the cache (``True``) where it cannot
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
        reason = (f"the teacher's logits are neither one vector per example nor one per token, or exceed "
                  f"{MAX_CACHED_FLOATS:,} floats")
        if wanted:
            raise ValueError(f"DistillationConfig(cache_teacher_logits=True) cannot be honoured: {reason}; "
                             "use cache_teacher_logits=None or False")
        logger.info("teacher logits computed at every step: %s", reason)
        return dataset
    kind = "per token" if isinstance(logits, list) else "per example"
    logger.info("teacher logits cached (%s) for %d training examples", kind, len(logits))
    return add_logits_column(dataset, logits)
