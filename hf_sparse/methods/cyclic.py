"""Cyclic sparsity (EAST, "Pushing the limits of sparsity"): density rises and falls in cosine cycles.

During the cycle window the density follows

    d(p) = d_min + (d_max - d_min) * (1 - cos(2 * pi * p)) / 2,   p = cycle progress in [0, 1)

with ``d_min = 1 - sparsity`` and ``d_max = min(1, ratio * d_min)``: when the density falls, weights
are pruned by magnitude down to the allocation's target; when it rises, the pruned weights with
the largest dense-gradient magnitude are grown back (they restart at 0 with clean optimizer state).
After the cycles, normal drop-and-grow (RigL) runs at ``d_min`` until ``end``; then masks are fixed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Optional

import torch

from ..core.masks import count_kept, masked_scores, numel, overall_sparsity
from .registry import register_method
from .base import Masks, PruningMethod
from .drop_and_grow import drop_and_grow_mask, drop_fraction_at


@dataclass
class CyclicArgs:
    """``method_args`` of ``cyclic``."""

    ratio: float = field(default=3.0, metadata={"help": "d_max / d_min (>= 1): how far the density rises in a cycle."})
    cycles: int = field(default=2, metadata={"help": "Number of cosine cycles in the cycle window (>= 0)."})
    cycle_fraction: float = field(
        default=0.5, metadata={"help": "Share of the [start, end] update window spent cycling, in [0, 1]."}
    )
    drop_fraction: float = field(
        default=0.3,
        metadata={"help": "Drop-and-grow phase: share of kept weights swapped per update, in [0, 1), cosine-decayed "
                          "to 0 at end."},
    )

    def __post_init__(self) -> None:
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or self.ratio < 1:
            raise ValueError(f"method_args.ratio (d_max / d_min) must be a number >= 1, got {self.ratio!r}")
        if isinstance(self.cycles, bool) or not isinstance(self.cycles, int) or self.cycles < 0:
            raise ValueError(f"method_args.cycles must be an int >= 0, got {self.cycles!r}")
        if not isinstance(self.cycle_fraction, (int, float)) or not 0.0 <= self.cycle_fraction <= 1.0:
            raise ValueError(f"method_args.cycle_fraction must be in [0, 1], got {self.cycle_fraction!r}")
        if not isinstance(self.drop_fraction, (int, float)) or not 0.0 <= self.drop_fraction < 1.0:
            raise ValueError(f"method_args.drop_fraction must be in [0, 1), got {self.drop_fraction!r}")


@dataclass(frozen=True)
class CyclicDensity:
    """The density curve as a pure function of the step (constant ``d_min`` outside the window)."""

    d_min: float
    d_max: float
    start: int
    end: int
    cycles: int

    def __call__(self, step: int) -> float:
        if self.cycles == 0 or step <= self.start or step >= self.end:
            return self.d_min
        p = ((step - self.start) / (self.end - self.start) * self.cycles) % 1.0
        return self.d_min + (self.d_max - self.d_min) * (1.0 - math.cos(2.0 * math.pi * p)) / 2.0


@register_method("cyclic")
class Cyclic(PruningMethod):
    """Cyclic sparsity then drop-and-grow; sparse from step 0 (magnitude masks at ``d_min``)."""

    Args = CyclicArgs
    summary = ("density follows cosine cycles between `d_min = 1 - sparsity` and `ratio * d_min` (prune by magnitude "
               "as it falls, grow by gradient as it rises), then RigL drop-and-grow")
    paper = "EAST: *Pushing the limits of sparsity*"
    supports_nm = False
    needs_gradients = True

    def final_sparsity(self) -> float:
        """Sparsity over the targeted (owned) weights at the end; EAST raises it for shared weights."""
        return float(self.config.sparsity)

    def setup(self, total_steps: int) -> None:
        super().setup(total_steps)
        assert self.updates is not None
        start, end = self.updates.start, self.updates.end
        self.cycle_end = start + int(round(self.args.cycle_fraction * (end - start)))
        d_min = 1.0 - self.final_sparsity()
        self.curve = CyclicDensity(d_min, min(1.0, self.args.ratio * d_min), start, self.cycle_end, self.args.cycles)
        self._logs: dict[str, float] = {}

    def target_sparsity(self, step: int) -> float:
        if self.updates is None:
            return self.final_sparsity()
        last = self.updates.last_before(step)
        return 1.0 - self.curve(last if last is not None and last <= self.cycle_end else self.cycle_end)

    def init_masks(self, weights: Mapping[str, torch.Tensor], masks: Masks) -> Masks:
        scores = {name: w.detach().abs().float() for name, w in weights.items()}
        return self.allocation.masks(scores, 1.0 - self.curve(0))

    def update_masks(
        self,
        step: int,
        weights: Mapping[str, torch.Tensor],
        masks: Masks,
        grads: Optional[Mapping[str, torch.Tensor]] = None,
    ) -> Masks:
        if grads is None:
            raise ValueError(f"method {self.name!r} grows by gradient: update_masks needs dense grads")
        if step <= self.cycle_end and self.args.cycles > 0:
            return self._move_to(self.curve(step), weights, masks, grads)
        total = sum(numel(m) for m in masks.values())
        if sum(count_kept(m) for m in masks.values()) != int(round(self.curve.d_min * total)):
            # the cycle window ended between update steps: settle at d_min first
            return self._move_to(self.curve.d_min, weights, masks, grads)
        return self._drop_and_grow(step, weights, masks, grads)

    def _drop_and_grow(self, step, weights, masks, grads) -> Masks:
        """RigL at constant density, drop fraction cosine-decayed from the cycles' end to ``end``."""
        fraction = drop_fraction_at(step, self.cycle_end, self.updates.end, self.args.drop_fraction, "cosine")
        new: Masks = {}
        regrown = 0
        for name, mask in masks.items():
            n_active = count_kept(mask)
            k = min(int(round(fraction * n_active)), numel(mask) - n_active)
            new[name], _, grown = drop_and_grow_mask(
                mask, weights[name].detach().abs(), grads[name].detach().abs(), k, k
            )
            regrown += count_kept(grown)
        self._logs = {"regrown": float(regrown)}
        return new

    def _move_to(self, density: float, weights, masks, grads) -> Masks:
        current = 1.0 - overall_sparsity(masks)
        if density < current:  # falling: prune by magnitude among the kept weights
            scores = {name: masked_scores(w.detach().abs().float(), masks[name]) for name, w in weights.items()}
            new = self.allocation.masks(scores, 1.0 - density)
            new = {name: new[name] & masks[name] for name in masks}
        else:  # rising: keep every kept weight, grow the pruned ones with the largest |grad|
            scores = {
                name: grads[name].detach().abs().float().masked_fill(masks[name], float("inf")) for name in masks
            }
            new = self.allocation.masks(scores, 1.0 - density)
            new = {name: new[name] | masks[name] for name in masks}
        grown = sum(count_kept(new[n] & ~masks[n]) for n in masks)
        self._logs = {"cyclic_density": density, "regrown": float(grown)}
        return new

    def update_logs(self) -> dict[str, float]:
        logs, self._logs = self._logs, {}
        return logs
