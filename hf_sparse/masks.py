"""Pure tensor operations on masks (bool tensors, True = kept). No Trainer, no I/O.

Every function is exact in its counts: ``topk_mask(scores, k)`` keeps exactly ``k`` entries
whatever the ties, so per-layer and global targets hold to the weight.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

# Below this many scores an exact selection over everything is fast enough.
_EXACT_SELECTION_LIMIT = 4_000_000
_SAMPLE_SIZE = 1_000_000


def topk_mask(scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Keep exactly ``n_keep`` entries with the largest scores (ties broken by position)."""
    numel = scores.numel()
    if not 0 <= n_keep <= numel:
        raise ValueError(f"n_keep={n_keep} outside [0, {numel}]")
    flat = scores.reshape(-1)
    mask = torch.zeros(numel, dtype=torch.bool, device=scores.device)
    if n_keep == numel:
        mask.fill_(True)
    elif n_keep > numel // 2:  # cheaper to find the few to drop
        drop = torch.topk(flat, numel - n_keep, largest=False, sorted=False).indices
        mask.fill_(True)
        mask[drop] = False
    elif n_keep > 0:
        mask[torch.topk(flat, n_keep, sorted=False).indices] = True
    return mask.view_as(scores)


def nm_mask(scores: torch.Tensor, n: int, m: int, in_dim: int = 1) -> torch.Tensor:
    """Keep the ``n`` largest scores of every ``m`` consecutive entries along ``in_dim``."""
    moved = scores.movedim(in_dim, -1)
    if moved.shape[-1] % m != 0:
        raise ValueError(
            f"N:M sparsity needs the input dimension ({moved.shape[-1]}) to be a multiple of M={m}"
        )
    groups = moved.reshape(-1, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, torch.topk(groups, n, dim=1, sorted=False).indices, True)
    return keep.view(moved.shape).movedim(-1, in_dim).contiguous()


def kth_largest(scores: Sequence[torch.Tensor], k: int) -> torch.Tensor:
    """The ``k``-th largest value over several tensors, exactly.

    A full sort of 100M values takes seconds on a CPU; instead bound the value from a seeded
    sample, count once, and select exactly inside the narrow band that must contain it.
    """
    flats = [s.reshape(-1) for s in scores]
    total = sum(f.numel() for f in flats)
    if not 1 <= k <= total:
        raise ValueError(f"k={k} outside [1, {total}]")
    if total <= _EXACT_SELECTION_LIMIT:
        return torch.topk(torch.cat(flats), k, sorted=True).values[-1]
    generator = torch.Generator(device="cpu").manual_seed(0)
    sample = torch.cat(
        [
            f[torch.randint(f.numel(), (max(1, f.numel() * _SAMPLE_SIZE // total),), generator=generator).to(f.device)]
            for f in flats
        ]
    ).sort(descending=True).values
    size = sample.numel()
    p = k / total
    rank = p * size
    margin = 6.0 * math.sqrt(size * p * (1 - p)) + 16
    hi_rank, lo_rank = int(rank - margin), int(math.ceil(rank + margin))
    hi = sample[hi_rank] if hi_rank >= 0 else None
    lo = sample[lo_rank] if lo_rank < size else None
    above = sum(int((f > hi).sum()) for f in flats) if hi is not None else 0
    band = []
    for f in flats:
        inside = f >= lo if lo is not None else torch.ones_like(f, dtype=torch.bool)
        if hi is not None:
            inside &= f <= hi
        band.append(f[inside])
    band_values = torch.cat(band)
    need = k - above
    if need < 1 or need > band_values.numel():  # the sample missed (vanishingly rare): be exact
        return torch.topk(torch.cat(flats), k, sorted=True).values[-1]
    return torch.topk(band_values, need, sorted=True).values[-1]


def threshold_masks(scores: Mapping[str, torch.Tensor], n_keep: int) -> dict[str, torch.Tensor]:
    """Keep exactly the ``n_keep`` largest scores across all tensors (global magnitude).

    Entries above the threshold are kept; ties at the threshold are kept in tensor order
    until the count is exact, so every rank computing this from equal scores agrees.
    """
    total = sum(s.numel() for s in scores.values())
    if n_keep >= total:
        return {name: torch.ones_like(s, dtype=torch.bool) for name, s in scores.items()}
    if n_keep <= 0:
        return {name: torch.zeros_like(s, dtype=torch.bool) for name, s in scores.items()}
    threshold = kth_largest(list(scores.values()), n_keep)
    masks = {name: s > threshold for name, s in scores.items()}
    ties_left = n_keep - sum(int(m.sum()) for m in masks.values())
    for name, s in scores.items():
        if ties_left <= 0:
            break
        ties = (s == threshold).reshape(-1)
        positions = ties.nonzero().squeeze(1)[:ties_left]
        masks[name].view(-1)[positions] = True
        ties_left -= positions.numel()
    return masks


def masked_scores(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scores with pruned entries at -inf, so pruning never brings a weight back."""
    return scores.masked_fill(~mask, float("-inf"))


def sparsity(mask: torch.Tensor) -> float:
    return 1.0 - int(mask.sum()) / max(mask.numel(), 1)


def overall_sparsity(masks: Mapping[str, torch.Tensor]) -> float:
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    return 1.0 - kept / max(total, 1)
