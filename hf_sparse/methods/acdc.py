"""AC/DC: alternating compressed / decompressed training (Peste et al. 2021, NeurIPS).

Timeline over a run of T optimizer steps::

    | dense warm-up | S | D | S | D | ... | D | final sparse phase (long) |
    0               w                          T - f                       T

A sparse phase (S) starts with masks from the magnitude of the current weights at the target
sparsity (global magnitude in the paper: use ``allocation="global"``) and keeps them fixed; a
dense phase (D) sets every mask True, so pruned weights (exactly 0, with zeroed optimizer state)
restart from 0 and train. The run always ends in the final sparse phase, so the model ends
exactly at the target. Phase starts are the method's update steps.

Defaults (fractions of the run; an int is a step, scaled by ``schedule_scale``): warm-up 10%,
phases 5% each, final sparse phase 15% - the paper's ImageNet recipe scaled to its 100 epochs
(from memory of the paper, unverified). When the alternation ends on a sparse phase (as with
these defaults: 15 phases of 5% between 10% and 85%) that phase runs straight into the final one,
so the last mask is chosen at 80% of the run. ``start``/``end``/``update_every`` are not used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Mapping, Optional, Union

import torch

from ..core.masks import magnitude_scores
from .registry import register_method
from .base import Masks, PruningMethod

if TYPE_CHECKING:
    from ..config import SparsityConfig

Length = Union[int, float]


@dataclass
class ACDCArgs:
    warmup: Length = field(default=0.1, metadata={"help": "Dense warm-up: fraction of the run or a step count."})
    phase: Length = field(default=0.05, metadata={"help": "Length of each sparse and dense phase."})
    final: Length = field(default=0.15, metadata={"help": "Length of the final sparse phase."})


def acdc_phases(warmup_end: int, phase: int, final_start: int) -> list[tuple[int, bool]]:
    """Phase starts as (step, is_sparse), alternating S/D from ``warmup_end``, then final S.

    A last alternating phase that is sparse simply runs into the final sparse phase.
    """
    phases: list[tuple[int, bool]] = []
    step, sparse = warmup_end, True
    while step < final_start:
        phases.append((step, sparse))
        step, sparse = step + phase, not sparse
    if not phases or not phases[-1][1]:
        phases.append((final_start, True))
    return phases


@register_method("acdc")
class ACDC(PruningMethod):
    """Alternating sparse/dense phases; masks from magnitude at each sparse phase start."""

    Args = ACDCArgs
    summary = ("dense warm-up, alternating sparse/dense phases (masks from magnitude at each sparse start; dense "
               "phases retrain pruned weights from 0), long final sparse phase")
    paper = "Peste et al. 2021, *AC/DC: Alternating Compressed/DeCompressed Training of Deep Neural Networks*"
    #: Dense phases train pruned weights back: frozen targets (a LoRA base) cannot do that, and their
    #: zeros would not be recoverable from the masks on resume.
    needs_trainable_targets: ClassVar[bool] = True

    @classmethod
    def validate_config(cls, config: "SparsityConfig") -> None:
        super().validate_config(config)
        args = cls.parse_args(config.method_args or {})
        for name in ("warmup", "phase", "final"):
            value = getattr(args, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"method 'acdc': {name} must be a fraction in [0, 1] or an int step, got {value!r}")
            if isinstance(value, float) and not 0.0 <= value <= 1.0:
                raise ValueError(f"method 'acdc': {name}={value}: a fraction must lie in [0, 1]; a step must be an int")
            if value < 0:
                raise ValueError(f"method 'acdc': {name} must be >= 0, got {value}")
        if isinstance(args.phase, (int, float)) and args.phase == 0:
            raise ValueError("method 'acdc': phase must be > 0")
        fractions = [getattr(args, n) for n in ("warmup", "final") if isinstance(getattr(args, n), float)]
        if sum(fractions) > 1.0:
            raise ValueError(f"method 'acdc': warmup + final ({sum(fractions)}) exceed the whole run")

    def __init__(self, config: "SparsityConfig", targets):
        super().__init__(config, targets)
        self.phases: list[tuple[int, bool]] = []
        self._starts: dict[int, bool] = {}

    def setup(self, total_steps: int) -> None:
        self.total_steps = total_steps
        resolve = self.config.resolve_step
        final_start = max(0, total_steps - resolve(self.args.final, total_steps))
        warmup_end = min(resolve(self.args.warmup, total_steps), final_start)
        phase = max(1, resolve(self.args.phase, total_steps))
        self.phases = acdc_phases(warmup_end, phase, final_start)
        self._starts = {step: sparse for step, sparse in self.phases}

    def is_update_step(self, step: int) -> bool:
        return step in self._starts

    def is_sparse_at(self, step: int) -> bool:
        """Whether the masks after optimizer step ``step`` are sparse."""
        current = False
        for start, sparse in self.phases:
            if start > step:
                break
            current = sparse
        return current

    def target_sparsity(self, step: int) -> float:
        return self.config.sparsity if self.is_sparse_at(step) else 0.0

    def init_masks(self, weights: Mapping[str, torch.Tensor], masks: Masks) -> Masks:
        return self.update_masks(0, weights, masks) if self.is_update_step(0) else masks

    def update_masks(
        self,
        step: int,
        weights: Mapping[str, torch.Tensor],
        masks: Masks,
        grads: Optional[Mapping[str, torch.Tensor]] = None,
    ) -> Masks:
        if not self._starts.get(step, False):  # dense phase: everything trains again
            return {name: torch.ones_like(m, dtype=torch.bool) for name, m in masks.items()}
        # Pruned weights are exactly 0 (never above a kept one); masked_scores keeps them last on ties.
        scores = magnitude_scores(weights, masks)
        return self.allocation.masks(scores, self.config.sparsity, nm=self.config.nm)
