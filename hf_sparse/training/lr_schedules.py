"""Learning-rate rewinding aligned to pruning steps (sparse-aware fine-tuning, ``docs/finetuning.md``).

After each mask update the LR jumps back to its peak and decays (linearly or by a half cosine)
to ``floor * peak`` by the next mask update, so the network recovers from every pruning step
(GMP* of Kurtic & Alistarh 2022; "How to Prune Your Language Model", 2023). After the last mask
update a final decay runs from the peak to 0 at the end of training. Before the first mask update
the LR stays at the peak (after an optional linear warm-up).

``rewinding_factor`` is a pure function of the step; ``RewindingLambda`` wraps it as a plain
callable object with plain attributes, so ``LambdaLR.state_dict()`` stores ints/floats/str only
and the Trainer reloads ``scheduler.pt`` with ``weights_only=True`` (transformers 5 does; a pickled function
would not load).
"""

from __future__ import annotations

import bisect
import math
from typing import Callable, Sequence

import torch

from ..core.choices import LR_SHAPES


def _decay(progress: float, shape: str) -> float:
    """1 at progress 0, 0 at progress 1."""
    progress = min(1.0, max(0.0, progress))
    if shape == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def rewinding_factor(
    step: int,
    pruning_steps: Sequence[int],
    total_steps: int,
    floor: float = 0.1,
    shape: str = "linear",
    warmup_steps: int = 0,
    final_floor: float = 0.0,
) -> float:
    """LR multiplier for the optimizer step that follows ``step`` completed steps.

    ``pruning_steps``: sorted mask-update steps. Step ``p`` in it means the masks change right
    after optimizer step ``p``, so the next step (scheduler count ``p``) runs at the peak again.
    """
    if shape not in LR_SHAPES:
        raise ValueError(f"shape must be one of {LR_SHAPES}, got {shape!r}")
    warm = min(1.0, step / warmup_steps) if warmup_steps > 0 else 1.0
    steps = [p for p in pruning_steps if p < total_steps]
    if not steps or step < steps[0]:
        return warm
    i = bisect.bisect_right(steps, step) - 1
    begin = steps[i]
    if i + 1 < len(steps):  # inside a pruning interval: peak -> floor
        end, low = steps[i + 1], floor
    else:  # after the last mask update: peak -> final_floor at the end of training
        end, low = total_steps, final_floor
    progress = (step - begin) / max(1, end - begin)
    return warm * (low + (1.0 - low) * _decay(progress, shape))


class RewindingLambda:
    """``rewinding_factor`` with its arguments as plain attributes (pickles as a plain dict)."""

    def __init__(
        self,
        pruning_steps: Sequence[int],
        total_steps: int,
        floor: float = 0.1,
        shape: str = "linear",
        warmup_steps: int = 0,
        final_floor: float = 0.0,
    ):
        if shape not in LR_SHAPES:
            raise ValueError(f"lr_rewinding shape must be one of {LR_SHAPES}, got {shape!r}")
        if not 0.0 <= floor <= 1.0 or not 0.0 <= final_floor <= 1.0:
            raise ValueError(f"floor and final_floor must lie in [0, 1], got {floor}, {final_floor}")
        self.pruning_steps = sorted(int(p) for p in pruning_steps)
        self.total_steps = int(total_steps)
        self.floor = float(floor)
        self.shape = str(shape)
        self.warmup_steps = int(warmup_steps)
        self.final_floor = float(final_floor)

    def __call__(self, step: int) -> float:
        return rewinding_factor(
            step, self.pruning_steps, self.total_steps, self.floor, self.shape, self.warmup_steps, self.final_floor
        )


def pruning_steps_of(is_update_step: Callable[[int], bool], total_steps: int) -> list[int]:
    """Every step in [0, total_steps] at which a method updates its masks."""
    return [step for step in range(total_steps + 1) if is_update_step(step)]


def rewinding_scheduler(optimizer: torch.optim.Optimizer, schedule: RewindingLambda) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
