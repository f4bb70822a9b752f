"""How much per tensor: turn one overall sparsity into exact per-tensor masks or keep counts.

- uniform: every tensor at the same sparsity.
- global: one magnitude threshold across all tensors (per-tensor sparsity falls out).
- erk: Erdos-Renyi-Kernel densities, proportional to sum(shape) / prod(shape) (Evci et al. 2020),
  capped at dense with the scale recomputed over the rest.
Counts are rounded by largest remainder so the overall count is exact.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import torch

from .choices import ALLOCATIONS
from .masks import count_kept, nm_mask, numel, threshold_masks, topk_mask
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


def erk_densities(targets: Sequence[Target], density: float) -> list[float]:
    """Per-tensor densities whose weighted mean is ``density`` (layers above 1 set dense)."""
    numels = [t.param.numel() for t in targets]
    raw = [sum(t.param.shape) / n for t, n in zip(targets, numels)]
    total_keep = density * sum(numels)
    dense: set[int] = set()
    while True:
        budget = total_keep - sum(numels[i] for i in dense)
        divisor = sum(raw[i] * numels[i] for i in range(len(targets)) if i not in dense)
        if divisor <= 0:
            return [1.0] * len(targets)
        scale = budget / divisor
        over = [i for i in range(len(targets)) if i not in dense and scale * raw[i] > 1.0]
        if not over:
            return [1.0 if i in dense else scale * raw[i] for i in range(len(targets))]
        dense.add(max(over, key=lambda i: raw[i]))


class Allocation:
    """Per-tensor keep counts for an overall sparsity; one signature for every kind."""

    def __init__(self, kind: str, targets: Sequence[Target]):
        if kind not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {kind!r}")
        self.kind = kind
        self.targets = list(targets)

    def keep_counts(
        self, sparsity: float, scores: Optional[Mapping[str, torch.Tensor]] = None
    ) -> dict[str, int]:
        """Exact number of weights kept per tensor. ``global`` needs ``scores``."""
        numels = [t.param.numel() for t in self.targets]
        total_keep = int(round((1.0 - sparsity) * sum(numels)))
        if self.kind == "global":
            if scores is None:
                raise ValueError("global allocation needs scores to compare across tensors")
            return {name: count_kept(m) for name, m in threshold_masks(scores, total_keep).items()}
        if self.kind == "uniform":
            exact = [(1.0 - sparsity) * n for n in numels]
        else:
            exact = [d * n for d, n in zip(erk_densities(self.targets, 1.0 - sparsity), numels)]
        counts = _round_counts(exact, total_keep, numels)
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
            total_keep = int(round((1.0 - sparsity) * sum(numel(s) for s in scores.values())))
            return threshold_masks(scores, total_keep)
        counts = self.keep_counts(sparsity)
        return {name: topk_mask(s, counts[name]) for name, s in scores.items()}
