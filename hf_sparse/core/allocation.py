"""How much per tensor: turn one overall sparsity into exact per-tensor masks or keep counts.

- uniform: every tensor at the same sparsity.
- global: one score threshold across all tensors (per-tensor sparsity falls out).
- erk: Erdos-Renyi-Kernel densities, proportional to sum(shape) / prod(shape) (Evci et al. 2020),
  capped at dense with the scale recomputed over the rest.
Counts are rounded by largest remainder so the overall count is exact.

**No tensor is pruned away.** Every allocation keeps at least ``floor`` x the overall density
(``SparsityConfig.layer_floor``) in each tensor. A global threshold can otherwise empty whole
tensors: on a tiny BERT at 90% with the fisher criterion the query/key weights of both layers kept
0 of 1,024 weights (their gradients, hence their Fisher scores, are near zero early in fine-tuning).
The floor's weights come out of the rest of the budget, so the total kept count stays exact, and a
tensor already above its floor keeps exactly what the allocation gave it: where no tensor falls
below the floor, the result is bitwise the allocation without one. The default and its measurement:
docs/finetuning.md ("No layer pruned away").
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import torch

from .choices import ALLOCATIONS
from .masks import nm_mask, threshold_masks, topk_mask
from .reduction import current
from .targets import Target

def _round_counts(exact: Sequence[float], total: int, caps: Sequence[int]) -> list[int]:
    """Round ``exact`` to integers summing to ``total`` (largest remainder), each within [0, cap]."""
    counts = [min(cap, max(0, math.floor(x))) for x, cap in zip(exact, caps)]
    order = sorted(range(len(exact)), key=lambda i: (-(exact[i] - math.floor(exact[i])), i))
    missing = total - sum(counts)
    while missing > 0:
        progressed = False
        for i in order:
            if missing == 0:
                break
            if counts[i] < caps[i]:
                counts[i] += 1
                missing -= 1
                progressed = True
        if not progressed:
            break
    return counts


def floor_counts(numels: Sequence[int], density: float, floor: float, total_keep: int) -> list[int]:
    """The fewest weights each tensor keeps: ``floor(floor * density * n)``, and at least 1 while the budget allows.

    Their sum never exceeds ``total_keep`` (= round(density * sum(numels))), so the floor is always
    feasible; a tensor too small for ``floor * density * n >= 1`` still keeps one weight when the
    budget has room for one per tensor (in target order, so every rank agrees).
    """
    if floor <= 0 or density <= 0:
        return [0] * len(numels)
    counts = [min(n, math.floor(floor * density * n + 1e-9)) for n in numels]  # 1 - 0.8 is 0.1999...
    room = total_keep - sum(counts)
    for i, n in enumerate(numels):
        if room <= 0:
            break
        if counts[i] == 0 and n > 0:
            counts[i] = 1
            room -= 1
    return counts


def erk_densities(targets: Sequence[Target], density: float, floor: float = 0.0) -> list[float]:
    """Per-tensor densities whose weighted mean is ``density``: ``clip(scale * raw, floor * density, 1)``.

    ``raw = sum(shape) / prod(shape)``; one ``scale`` is solved exactly (the weighted sum is
    piecewise linear and increasing in it), so layers above 1 are set dense and layers below the
    floor sit at it, the rest sharing what is left in proportion to ``raw``.
    """
    numels = [t.param.numel() for t in targets]
    raw = [sum(t.param.shape) / n for t, n in zip(targets, numels)]
    low = min(1.0, max(0.0, floor * density))
    total_keep = density * sum(numels)
    if total_keep >= sum(numels):
        return [1.0] * len(targets)

    def kept(scale: float) -> float:
        return sum(n * min(1.0, max(low, scale * r)) for n, r in zip(numels, raw))

    # Breakpoints of the piecewise-linear kept(scale): where a layer reaches the floor or dense.
    points = sorted({low / r for r in raw} | {1.0 / r for r in raw})
    below = 0.0
    for point in points:
        if kept(point) >= total_keep:
            break
        below = point
    else:
        return [1.0] * len(targets)
    # Inside (below, point] every layer's clip is fixed: solve the linear part exactly.
    mid = (below + point) / 2
    free = [i for i, r in enumerate(raw) if low < mid * r < 1.0]
    fixed = sum(numels[i] * min(1.0, max(low, mid * raw[i])) for i in range(len(raw)) if i not in free)
    slope = sum(numels[i] * raw[i] for i in free)
    scale = (total_keep - fixed) / slope if slope > 0 else point
    return [min(1.0, max(low, scale * r)) for r in raw]


class Allocation:
    """Per-tensor keep counts for an overall sparsity; one signature for every kind.

    ``floor``: each tensor keeps at least ``floor`` x the overall density (see the module docstring;
    0 here, the product's default comes from ``SparsityConfig.layer_floor``).
    """

    def __init__(self, kind: str, targets: Sequence[Target], floor: float = 0.0):
        if kind not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {kind!r}")
        if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0.0 <= floor <= 1.0:
            raise ValueError(f"layer_floor must be a number in [0, 1] (a fraction of the overall density), got {floor!r}")
        self.kind = kind
        self.targets = list(targets)
        self.floor = float(floor)

    def keep_counts(
        self, sparsity: float, scores: Optional[Mapping[str, torch.Tensor]] = None
    ) -> dict[str, int]:
        """Exact number of weights kept per tensor. ``global`` needs ``scores``."""
        if self.kind == "global":
            if scores is None:
                raise ValueError("global allocation needs scores to compare across tensors")
            masks = self.masks(scores, sparsity)
            return dict(zip(masks, _kept_counts(list(masks.values()))))
        numels = [t.param.numel() for t in self.targets]
        total_keep = int(round((1.0 - sparsity) * sum(numels)))
        if self.kind == "uniform":
            exact = [(1.0 - sparsity) * n for n in numels]
        else:
            exact = [d * n for d, n in zip(erk_densities(self.targets, 1.0 - sparsity, self.floor), numels)]
        counts = _round_counts(exact, total_keep, numels)
        # Rounding can leave a tensor a weight short of its floor: move it from the largest count.
        floors = floor_counts(numels, 1.0 - sparsity, self.floor, total_keep)
        for i, least in enumerate(floors):
            while counts[i] < least:
                donor = max(range(len(counts)), key=lambda j: (counts[j] - floors[j], -j))
                counts[donor] -= 1
                counts[i] += 1
        return {t.name: c for t, c in zip(self.targets, counts)}

    def masks(
        self,
        scores: Mapping[str, torch.Tensor],
        sparsity: float,
        nm: Optional[tuple[int, int]] = None,
    ) -> dict[str, torch.Tensor]:
        """Masks keeping the highest scores at ``sparsity`` overall.

        With an N:M pattern the ramp is gradual N':M: keep ``round(M * (1 - sparsity))`` of every
        M (never fewer than N), reaching exactly N:M at the final sparsity.
        """
        if nm is not None:
            n, m = nm
            keep = max(n, min(m, int(round(m * (1.0 - sparsity)))))
            by_name = {t.name: t for t in self.targets}
            return {name: nm_mask(s, keep, m, by_name[name].in_dim) for name, s in scores.items()}
        if self.kind == "global":
            return global_masks(scores, sparsity, self.floor)
        counts = self.keep_counts(sparsity)
        return {name: topk_mask(s, counts[name]) for name, s in scores.items()}


def global_masks(scores: Mapping[str, torch.Tensor], sparsity: float, floor: float) -> dict[str, torch.Tensor]:
    """One threshold over every tensor, with each tensor kept at or above its floor count.

    The best masks under the floors (the highest total score, exactly ``round((1 - s) * N)`` kept):
    a tensor the threshold leaves below its floor keeps its own top ``floor`` scores, and the
    threshold is taken again over the other tensors with what is left of the budget, until none
    falls below. Each round raises the threshold, so a tensor fixed at its floor would take nothing
    more; with no tensor below its floor this is one plain threshold. Every step is a sharded-exact
    selection (``threshold_masks``/``topk_mask``) and the counts are one all-reduce per round, so row
    chunks on several ranks get the unsharded masks bit for bit.
    """
    names = list(scores)
    numels = _whole_numels(list(scores.values()))
    total_keep = int(round((1.0 - sparsity) * sum(numels)))
    floors = dict(zip(names, floor_counts(numels, 1.0 - sparsity, floor, total_keep)))
    pool = dict(scores)
    fixed: dict[str, torch.Tensor] = {}
    budget = total_keep
    while True:
        masks = threshold_masks(pool, budget)
        short = [n for n, kept in zip(masks, _kept_counts(list(masks.values()))) if kept < floors[n]]
        if not short:
            break
        for name in short:
            fixed[name] = topk_mask(scores[name], floors[name])
            budget -= floors[name]
            del pool[name]
    return {name: fixed[name] if name in fixed else masks[name] for name in names}


def _kept_counts(masks: Sequence[torch.Tensor]) -> list[int]:
    """True entries of each mask, over every rank's rows: one all-reduce for all of them."""
    local = torch.tensor([int(torch.count_nonzero(m)) for m in masks], dtype=torch.int64)
    return [int(v) for v in current().all_reduce_sum(local)] if masks else []


def _whole_numels(tensors: Sequence[torch.Tensor]) -> list[int]:
    """Entries of each whole tensor (its row chunks on every rank summed): one all-reduce."""
    local = torch.tensor([t.numel() for t in tensors], dtype=torch.int64)
    return [int(v) for v in current().all_reduce_sum(local)] if tensors else []
