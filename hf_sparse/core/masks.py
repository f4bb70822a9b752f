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
_SAMPLE_SIZE = 262_144


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

    A full selection over 100M values takes seconds on a CPU. Instead: bound the value from a
    seeded sample, keep only the smaller side of that bound (one comparison pass), and select
    exactly inside it. Falls back to the full selection if the sample's bounds miss.
    """
    flats = [s.reshape(-1) for s in scores]
    total = sum(f.numel() for f in flats)
    if not 1 <= k <= total:
        raise ValueError(f"k={k} outside [1, {total}]")
    if total <= _EXACT_SELECTION_LIMIT:
        return _exact_kth_largest(flats, k)
    generator = torch.Generator(device="cpu").manual_seed(0)
    sample = torch.cat(
        [
            f[torch.randint(f.numel(), (max(1, f.numel() * _SAMPLE_SIZE // total),), generator=generator).to(f.device)]
            for f in flats
        ]
    ).sort(descending=True).values
    size = sample.numel()
    p = k / total
    margin = 6.0 * math.sqrt(size * p * (1 - p)) + 16
    if k <= total // 2:  # few are kept: gather everything above a safe lower bound
        bound_rank = int(math.ceil(p * size + margin))
        if bound_rank >= size:
            return _exact_kth_largest(flats, k)
        top = torch.cat([f[f >= sample[bound_rank]] for f in flats])
        if top.numel() < k:
            return _exact_kth_largest(flats, k)
        upper_rank = int(p * size - margin)
        if upper_rank >= 0:  # narrow again from above: the answer lies in a thin band
            upper = sample[upper_rank]
            need = k - int(torch.count_nonzero(top > upper))
            band = top[top <= upper]
            if 1 <= need <= band.numel():
                return _exact_kth_largest([band], need)
        return _exact_kth_largest([top], k)
    # few are dropped: gather everything below a safe upper bound, count from the bottom
    j = total - k + 1  # the answer is the j-th smallest
    bound_rank = int(p * size - margin)
    if bound_rank < 0:
        return _exact_kth_largest(flats, k)
    bottom = torch.cat([f[f <= sample[bound_rank]] for f in flats])
    if bottom.numel() < j:
        return _exact_kth_largest(flats, k)
    lower_rank = int(math.ceil(p * size + margin))
    if lower_rank < size:  # narrow again from below
        lower = sample[lower_rank]
        need = j - int(torch.count_nonzero(bottom < lower))
        band = bottom[bottom >= lower]
        if 1 <= need <= band.numel():
            return _exact_kth_largest([band], band.numel() - need + 1)
    return _exact_kth_largest([bottom], bottom.numel() - j + 1)


def _exact_kth_largest(flats: Sequence[torch.Tensor], k: int) -> torch.Tensor:
    everything = torch.cat(list(flats))
    return torch.kthvalue(everything.float(), everything.numel() - k + 1).values.to(everything.dtype)


def threshold_masks(scores: Mapping[str, torch.Tensor], n_keep: int) -> dict[str, torch.Tensor]:
    """Keep exactly the ``n_keep`` largest scores across all tensors (global magnitude).

    Entries at or above the threshold are kept; surplus ties at the threshold are dropped from
    the last tensors first, so every rank computing this from equal scores agrees.
    """
    total = sum(s.numel() for s in scores.values())
    if n_keep >= total:
        return {name: torch.ones_like(s, dtype=torch.bool) for name, s in scores.items()}
    if n_keep <= 0:
        return {name: torch.zeros_like(s, dtype=torch.bool) for name, s in scores.items()}
    threshold = kth_largest(list(scores.values()), n_keep)
    masks = {name: s >= threshold for name, s in scores.items()}
    surplus = sum(int(torch.count_nonzero(m)) for m in masks.values()) - n_keep
    for name in reversed(list(scores)):
        if surplus <= 0:
            break
        ties = (scores[name] == threshold).reshape(-1).nonzero().squeeze(1)
        drop = ties[max(0, ties.numel() - surplus):]
        masks[name].view(-1)[drop] = False
        surplus -= drop.numel()
    return masks


def masked_scores(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scores with pruned entries at -inf, so pruning never brings a weight back."""
    return torch.where(mask, scores, float("-inf"))


def magnitude_scores(weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """|w| with pruned entries at -inf: the magnitude criterion of every pruning method."""
    return {name: masked_scores(w.detach().abs(), masks[name]) for name, w in weights.items()}


def check_masks_fit(params: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], where: str = "") -> None:
    """Every mask names one of ``params`` and has its shape; else a ValueError that says which
    (``where``, e.g. a folder, prefixes the message)."""
    prefix = f"{where}: " if where else ""
    for name, mask in masks.items():
        if name not in params:
            raise ValueError(f"{prefix}mask {name!r} names no parameter of the model (e.g. {next(iter(params), None)!r})")
        if tuple(mask.shape) != tuple(params[name].shape):
            raise ValueError(
                f"{prefix}mask/weight shape mismatch for {name}: mask {tuple(mask.shape)} vs weight {tuple(params[name].shape)}"
            )


def nonzero_mask(weight: torch.Tensor) -> torch.Tensor:
    """The mask a weight pruned in place implies: its exact nonzeros (a kept weight that is
    exactly 0 reads as pruned, which is why exact masks are stored where they are known)."""
    return weight.detach() != 0


def overall_sparsity(masks: Mapping[str, torch.Tensor]) -> float:
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(torch.count_nonzero(m)) for m in masks.values())
    return 1.0 - kept / max(total, 1)
