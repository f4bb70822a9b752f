"""Pure tensor operations on masks (bool tensors, True = kept). No Trainer, no I/O.

Every function is exact in its counts: ``topk_mask(scores, k)`` keeps exactly ``k`` entries
whatever the ties, so per-layer and global targets hold to the weight.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch

from . import selection, sharding
from .reduction import Reduction, current


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

    In one process: :func:`hf_sparse.core.selection.select` (a sampled bound, then an exact
    selection among the few candidates beyond it); sharded: radix selection on the float bits
    (:func:`hf_sparse.core.sharding.kth_largest`).
    """
    reduction = reduction if reduction is not None else current()
    if reduction.sharded:
        return sharding.kth_largest(scores, k, reduction)
    return selection.select([s.reshape(-1) for s in scores], k).threshold


def threshold_masks(
    scores: Mapping[str, torch.Tensor], n_keep: int, reduction: Optional[Reduction] = None
) -> dict[str, torch.Tensor]:
    """Keep exactly the ``n_keep`` largest scores across all tensors (global magnitude).

    Entries above the threshold are kept; ties at the threshold are kept in order, tensors in turn
    and the lowest flat index first, so every rank computing this from equal scores agrees, and
    row chunks of the tensors on several ranks (``reduction``) give the same masks as one process.
    In one process :func:`hf_sparse.core.selection.select_masks` builds the masks in one pass over
    the scores; sharded, the threshold comes from a radix selection over all ranks, then one
    comparison pass (plus a partial one for the tensor whose ties are only partly kept).
    """
    reduction = reduction if reduction is not None else current()
    total = reduction.sum_int(sum(s.numel() for s in scores.values()))
    if n_keep >= total:
        return {name: torch.ones_like(s, dtype=torch.bool) for name, s in scores.items()}
    if n_keep <= 0:
        return {name: torch.zeros_like(s, dtype=torch.bool) for name, s in scores.items()}
    if not reduction.sharded:
        flat = selection.select_masks([s.reshape(-1) for s in scores.values()], n_keep)
        return {name: m.view(s.shape) for (name, s), m in zip(scores.items(), flat)}
    threshold = sharding.kth_largest(list(scores.values()), n_keep, reduction)
    greater = [int(torch.count_nonzero(s > threshold)) for s in scores.values()]
    tie_counts = [int(torch.count_nonzero(s == threshold)) for s in scores.values()]
    masks = {}
    for (name, s), allowed, count in zip(scores.items(), sharding.tie_allowances(greater, tie_counts, n_keep, reduction), tie_counts):
        if allowed > 0 and allowed == count:
            masks[name] = s >= threshold
        else:
            masks[name] = s > threshold
            if allowed > 0:
                selection.keep_first_ties(masks[name], s, threshold, allowed)
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
