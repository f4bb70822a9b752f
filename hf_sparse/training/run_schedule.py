"""The run's schedule under sparse training: its length stretched by ``schedule_scale``, and the LR
rewound after every mask update (``lr_rewinding``); both are asked for by ``SparsityConfig``."""

from __future__ import annotations

import copy
from typing import Any, Optional

import torch

from .lr_schedules import RewindingLambda, pruning_steps_of, rewinding_scheduler


def scaled_arguments(args: Any, config: Optional[Any]) -> Any:
    """``args`` stretched by ``config.schedule_scale`` (a copy: never the caller's object); fractions of the
    run (start/end) stretch with it. ``args`` itself when there is nothing to scale."""
    k = 1.0 if config is None else config.schedule_scale
    if k == 1.0:
        return args
    args = copy.copy(args)
    if args.max_steps > 0:
        args.max_steps = int(round(args.max_steps * k))
    else:
        args.num_train_epochs = args.num_train_epochs * k
    if args.warmup_steps >= 1:
        args.warmup_steps = int(round(args.warmup_steps * k))
    return args


def wants_rewinding(config: Optional[Any]) -> bool:
    return config is not None and config.lr_rewinding is not None


def rewinding_lr_scheduler(
    method: Any, config: Any, optimizer: torch.optim.Optimizer, num_training_steps: int, warmup_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """LR rewinding aligned to ``method``'s mask updates over a run of ``num_training_steps``."""
    method.setup(num_training_steps)  # the engine does it again at train begin with the same length
    schedule = RewindingLambda(
        pruning_steps_of(method.is_update_step, num_training_steps),
        num_training_steps,
        floor=config.lr_floor,
        shape=config.lr_rewinding,
        warmup_steps=warmup_steps,
    )
    return rewinding_scheduler(optimizer, schedule)
