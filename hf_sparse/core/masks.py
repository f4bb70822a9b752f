"""Pure tensor operations on masks (bool tensors, True = kept). No Trainer, no I/O.

Every function is exact in its counts: ``topk_mask(scores, k)`` keeps exactly ``k`` entries
whatever the ties, so per-layer and global targets hold to the weight.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import torch

from . import sharding
from .reduction import Reduction, current

# Below this many scores an exact selection over everything is fast enough.
_EXACT_SELECTION_LIMIT = 4_000_000
_SAMPLE_SIZE = 262_144


def topk_mask(scores: torch.Tensor, n_keep: int, reduction: Optional[Reduction] = None) -> torch.Tensor:
    """Keep exactly ``n_keep`` entries with the largest scores; ties go to the lowest flat index.

    The tie rule is explicit (``torch.topk`` leaves it undefined) so that a tensor split into row
    chunks across ranks (``reduction``, see :mod:`hf_sparse.core.reduction`) gets bitwise the same
    mask as the whole tensor in one process.
    """
    reduction = reduction if reduction is not None else current()
    numel = reduction.sum_int(scores.numel())
    if not 0 <= n_keep <= numel:
        raise ValueError(f"n_keep={n_keep} outside [0, {numel}]")
    return threshold_masks({"": scores}, n_keep, reduction)[""]


def nm_mask(scores: torch.Tensor, n: int, m: int, in_dim: int = 1, reduction: Optional[Reduction] = None) -> torch.Tensor:
    """Keep the ``n`` largest scores of every ``m`` consecutive entries along ``in_dim``.

    Ties go to the lowest index in the group (a stable sort). Groups never cross rows of dim 0
    unless ``in_dim == 0``; then row chunks of a sharded tensor must hold whole groups.
    """
    reduction = reduction if reduction is not None else current()
    if reduction.sharded and in_dim == 0:
        rows = [int(r[0]) for r in reduction.all_gather(torch.tensor([scores.shape[0]]))]
        if any(r % m for r in rows):
            raise ValueError(
                f"N:M groups run along dim 0 here, but the FSDP2 shards hold {rows} rows: each must be a multiple "
                f"of M={m} for the groups to stay whole (pick a world size that divides the rows into multiples of M)"
            )
    moved = scores.movedim(in_dim, -1)
    if moved.shape[-1] % m != 0:
        raise ValueError(
            f"N:M sparsity needs the input dimension ({moved.shape[-1]}) to be a multiple of M={m}"
        )
    groups = moved.reshape(-1, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    order = torch.sort(groups, dim=1, descending=True, stable=True).indices
    keep.scatter_(1, order[:, :n], True)
    return keep.view(moved.shape).movedim(-1, in_dim).contiguous()


def kth_largest(scores: Sequence[torch.Tensor], k: int, reduction: Optional[Reduction] = None) -> torch.Tensor:
    """The ``k``-th largest value over several tensors, exactly (over all ranks' chunks when sharded).

    A full selection over 100M values takes seconds on a CPU. Instead: bound the value from a
    seeded sample, keep only the smaller side of that bound (one comparison pass), and select
    exactly inside it. Falls back to the full selection if the sample's bounds miss.
    """
    reduction = reduction if reduction is not None else current()
    if reduction.sharded:
        return sharding.kth_largest(scores, k, reduction)
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


def threshold_masks(
    scores: Mapping[str, torch.Tensor], n_keep: int, reduction: Optional[Reduction] = None
) -> dict[str, torch.Tensor]:
    """Keep exactly the ``n_keep`` largest scores across all tensors (global magnitude).

    Entries above the threshold are kept; ties at the threshold are kept in order, tensors in turn
    and the lowest flat index first, so every rank computing this from equal scores agrees, and
    row chunks of the tensors on several ranks (``reduction``) give the same masks as one process.
    """
    reduction = reduction if reduction is not None else current()
    total = reduction.sum_int(sum(s.numel() for s in scores.values()))
    if n_keep >= total:
        return {name: torch.ones_like(s, dtype=torch.bool) for name, s in scores.items()}
    if n_keep <= 0:
        return {name: torch.zeros_like(s, dtype=torch.bool) for name, s in scores.items()}
    threshold = kth_largest(list(scores.values()), n_keep, reduction)
    masks = {name: s > threshold for name, s in scores.items()}
    ties = {name: s == threshold for name, s in scores.items()}
    greater = [int(torch.count_nonzero(m)) for m in masks.values()]
    tie_counts = [int(torch.count_nonzero(t)) for t in ties.values()]
    for name, allowed, count in zip(scores, sharding.tie_allowances(greater, tie_counts, n_keep, reduction), tie_counts):
        if allowed == count:
            masks[name] |= ties[name]
        elif allowed > 0:
            first = ties[name].reshape(-1).nonzero().squeeze(1)[:allowed]
            masks[name].view(-1)[first] = True
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


def count_kept(mask: torch.Tensor, reduction: Optional[Reduction] = None) -> int:
    """True entries of ``mask`` (over all ranks' chunks when sharded)."""
    reduction = reduction if reduction is not None else current()
    return reduction.sum_int(int(torch.count_nonzero(mask)))


def numel(tensor: torch.Tensor, reduction: Optional[Reduction] = None) -> int:
    """Entries of the whole tensor (over all ranks' chunks when sharded)."""
    reduction = reduction if reduction is not None else current()
    return reduction.sum_int(tensor.numel())


def all_kept(masks: Mapping[str, torch.Tensor], reduction: Optional[Reduction] = None) -> bool:
    """Whether every mask keeps everything (the same answer on every rank; True for no masks)."""
    total, kept = _totals(masks, reduction)
    return kept == total


def overall_sparsity(masks: Mapping[str, torch.Tensor], reduction: Optional[Reduction] = None) -> float:
    total, kept = _totals(masks, reduction)
    return 1.0 - kept / max(total, 1)


def _totals(masks: Mapping[str, torch.Tensor], reduction: Optional[Reduction]) -> tuple[int, int]:
    """(entries, kept entries) over all masks and, when sharded, all ranks: one small all-reduce."""
    reduction = reduction if reduction is not None else current()
    local = torch.tensor(
        [sum(m.numel() for m in masks.values()), sum(int(torch.count_nonzero(m)) for m in masks.values())],
        dtype=torch.int64,
    )
    total, kept = (int(v) for v in reduction.all_reduce_sum(local))
    return total, kept


def random_scores(like: torch.Tensor, generator: torch.Generator, reduction: Optional[Reduction] = None) -> torch.Tensor:
    """Uniform scores shaped like ``like`` from a seeded ``generator`` (this rank's rows when sharded)."""
    return sharding.random_rows(like, generator, reduction if reduction is not None else current())
