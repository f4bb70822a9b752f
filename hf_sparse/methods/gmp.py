"""Gradual magnitude pruning and one-shot pruning."""

from __future__ import annotations

from typing import Mapping, Optional

import torch

from ..masks import masked_scores
from ..registry import register_method
from ..schedules import ConstantSparsity, PolynomialSparsity, UpdateSteps
from .base import Masks, PruningMethod


class MagnitudePruning(PruningMethod):
    """Prune the smallest |w| to the schedule's sparsity; pruned weights never come back."""

    def sparsity_schedule(self):
        raise NotImplementedError

    def target_sparsity(self, step: int) -> float:
        if self.updates is None:
            return self.config.initial_sparsity
        last = self.updates.last_before(step)
        return self.sparsity_schedule()(last) if last is not None else 0.0

    def init_masks(self, weights: Mapping[str, torch.Tensor], masks: Masks) -> Masks:
        return self.update_masks(0, weights, masks) if self.is_update_step(0) else masks

    def update_masks(
        self,
        step: int,
        weights: Mapping[str, torch.Tensor],
        masks: Masks,
        grads: Optional[Mapping[str, torch.Tensor]] = None,
    ) -> Masks:
        scores = {name: masked_scores(w.detach().abs(), masks[name]) for name, w in weights.items()}
        sparsity = self.sparsity_schedule()(step)
        new = self.allocation.masks(scores, sparsity, nm=self.config.nm)
        return {name: new[name] & masks[name] for name in masks}


@register_method("gmp")
class GMP(MagnitudePruning):
    """Gradual magnitude pruning, cubic schedule (Zhu & Gupta 2017, "To prune, or not to prune").

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t_end - t0))**3, pruning every ``update_every``
    steps between ``start`` (t0) and ``end`` (t_end); the mask is fixed after ``end``.
    """

    def sparsity_schedule(self) -> PolynomialSparsity:
        assert self.updates is not None, "setup() first"
        return PolynomialSparsity(
            self.config.initial_sparsity, self.config.sparsity, self.updates.start, self.updates.end
        )


@register_method("oneshot")
class OneShot(MagnitudePruning):
    """Prune once to ``sparsity`` at ``start`` (magnitude), then keep the mask fixed."""

    def setup(self, total_steps: int) -> None:
        super().setup(total_steps)
        assert self.updates is not None
        self.updates = UpdateSteps(self.updates.start, self.updates.start, 1)

    def sparsity_schedule(self) -> ConstantSparsity:
        return ConstantSparsity(self.config.sparsity)
