"""Exact global selection in one process: the k-th largest value, and masks keeping exactly k.

A full selection (``torch.kthvalue``) over 100M values takes seconds on a CPU, while one pass of
``abs()`` takes ~0.13 s. So the k-th value is bounded from a seeded sample (a 6-sigma margin on its
rank) and selected exactly among the few entries inside that band:

- :func:`select_masks` (global masks, what a mask update needs): one pass over the scores, slice by
  slice, writes each mask as ``score > high`` and collects the positions and values inside
  ``[low, high]`` (~1% of them); the threshold is chosen among those, and only their positions are
  set afterwards, ties included (tensors in turn, lowest flat index first).
- :func:`select` (the value and per-tensor counts, for :func:`hf_sparse.core.masks.kth_largest`):
  the candidates beyond one bound, then the band inside them; counts taken on the candidates.

If the sample's bounds miss, the full selection runs: the result is always exact. Ties: when the
sample's two bounds are the same value ``v`` (a block of equal scores, e.g. pruned entries at
``-inf`` or quantised weights), ``v`` is checked by two counting passes (``> v`` and ``== v``) and
taken without any selection; the partly kept ties are found slice by slice: the degenerate case
costs about what the normal one does (``benchmarks/mask_update_speed.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

#: Below this many values an exact selection over everything is fast enough.
EXACT_SELECTION_LIMIT = 4_000_000
SAMPLE_SIZE = 262_144
#: Sigmas of the sample rank's binomial spread kept on each side of the k-th value.
MARGIN_SIGMAS = 6.0


#: Entries compared and gathered at a time when picking candidates: in 4M-entry slices the
#: comparison mask is reused while still in cache (1.3-3x faster than one masked select over a
#: 100M tensor on a busy 2-core machine, in paired rounds).
CANDIDATE_CHUNK = 1 << 22


def _at_least(f: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
    """``f[f >= bound]``, slice by slice."""
    if f.numel() <= CANDIDATE_CHUNK:
        return f[f >= bound]
    return torch.cat([c[c >= bound] for c in f.split(CANDIDATE_CHUNK)])


def _at_most(f: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
    """``f[f <= bound]``, slice by slice."""
    if f.numel() <= CANDIDATE_CHUNK:
        return f[f <= bound]
    return torch.cat([c[c <= bound] for c in f.split(CANDIDATE_CHUNK)])


@dataclass
class Selection:
    """The k-th largest value, and per tensor how many entries are above it and equal to it."""

    threshold: torch.Tensor
    greater: list[int]
    ties: list[int]


def _counts(flats: Sequence[torch.Tensor], value: torch.Tensor) -> Selection:
    greater = [int(torch.count_nonzero(f > value)) for f in flats]
    ties = [int(torch.count_nonzero(f == value)) for f in flats]
    return Selection(value, greater, ties)


def exact_kth_largest(flats: Sequence[torch.Tensor], k: int) -> torch.Tensor:
    """``torch.kthvalue`` over everything (the reference; also the fallback)."""
    everything = torch.cat([f.reshape(-1) for f in flats])
    if everything.numel() > 1 and bool(everything.min() == everything.max()):  # all equal: nothing to select
        return everything[0].clone()
    return torch.kthvalue(everything.float(), everything.numel() - k + 1).values.to(everything.dtype)


def _sample(flats: Sequence[torch.Tensor], total: int) -> torch.Tensor:
    generator = torch.Generator(device="cpu").manual_seed(0)
    parts = [
        f[torch.randint(f.numel(), (max(1, f.numel() * SAMPLE_SIZE // total),), generator=generator).to(f.device)]
        for f in flats
    ]
    return torch.cat(parts).sort(descending=True).values


def select(flats: Sequence[torch.Tensor], k: int) -> Selection:
    """The exact ``k``-th largest value over ``flats`` (1-D tensors) and the per-tensor counts."""
    total = sum(f.numel() for f in flats)
    if not 1 <= k <= total:
        raise ValueError(f"k={k} outside [1, {total}]")
    if total <= EXACT_SELECTION_LIMIT:
        return _counts(flats, exact_kth_largest(flats, k))
    sample = _sample(flats, total)
    size = sample.numel()
    p = k / total
    margin = MARGIN_SIGMAS * math.sqrt(size * p * (1 - p)) + 16
    low_rank = min(int(math.ceil(p * size + margin)), size - 1)  # sample[low_rank] <= the k-th value, almost surely
    high_rank = max(int(p * size - margin), 0)  # sample[high_rank] >= it
    if bool(sample[low_rank] == sample[high_rank]):  # a block of ties spans the k-th rank
        guess = _counts(flats, sample[low_rank])
        above = sum(guess.greater)
        if above < k <= above + sum(guess.ties):
            return guess
    if k <= total // 2:
        found = _select_from_top(flats, k, sample, low_rank, high_rank, size)
    else:
        found = _select_from_bottom(flats, k, total, sample, low_rank, high_rank, size)
    return found if found is not None else _counts(flats, exact_kth_largest(flats, k))


def _select_from_top(flats, k, sample, low_rank, high_rank, size):
    """Few are kept: the candidates are every entry >= a safe lower bound of the k-th value."""
    if low_rank >= size - 1:
        return None
    low = sample[low_rank]
    candidates = [_at_least(f, low) for f in flats]
    top = torch.cat(candidates)
    if top.numel() < k:  # the bound missed
        return None
    high = sample[high_rank]
    if high_rank > 0 and bool(high > low):  # select inside the band (low, high]
        need = k - int(torch.count_nonzero(top > high))
        band = top[top <= high]
        value = exact_kth_largest([band], need) if 1 <= need <= band.numel() else exact_kth_largest([top], k)
    else:
        value = exact_kth_largest([top], k)
    return Selection(value, [int(torch.count_nonzero(c > value)) for c in candidates],
                     [int(torch.count_nonzero(c == value)) for c in candidates])


def _select_from_bottom(flats, k, total, sample, low_rank, high_rank, size):
    """Few are dropped: the candidates are every entry <= a safe upper bound; count from the bottom."""
    if high_rank <= 0:
        return None
    high = sample[high_rank]
    candidates = [_at_most(f, high) for f in flats]
    bottom = torch.cat(candidates)
    j = total - k + 1  # the answer is the j-th smallest
    if bottom.numel() < j:
        return None
    low = sample[low_rank]
    if low_rank < size - 1 and bool(low < high):  # select inside the band [low, high)
        need = j - int(torch.count_nonzero(bottom < low))
        band = bottom[bottom >= low]
        value = exact_kth_largest([band], band.numel() - need + 1) if 1 <= need <= band.numel() else exact_kth_largest([bottom], bottom.numel() - j + 1)
    else:
        value = exact_kth_largest([bottom], bottom.numel() - j + 1)
    # every entry <= value is a candidate: count above as numel - (below or equal)
    at_most = [int(torch.count_nonzero(c <= value)) for c in candidates]
    ties = [int(torch.count_nonzero(c == value)) for c in candidates]
    return Selection(value, [f.numel() - n for f, n in zip(flats, at_most)], ties)


_TIE_CHUNK = 1 << 20


def keep_first_ties(mask: torch.Tensor, scores: torch.Tensor, threshold: torch.Tensor, allowed: int) -> None:
    """Set the first ``allowed`` entries (flat order) of ``scores`` equal to ``threshold`` in ``mask``,
    reading ``scores`` chunk by chunk only up to the last one kept."""
    flat_mask, flat = mask.view(-1), scores.reshape(-1)
    for start in range(0, flat.numel(), _TIE_CHUNK):
        ties = flat[start : start + _TIE_CHUNK] == threshold
        count = int(torch.count_nonzero(ties))
        if count < allowed:
            flat_mask[start : start + _TIE_CHUNK] |= ties
            allowed -= count
            continue
        first = ties.nonzero().squeeze(1)[:allowed] + start
        flat_mask[first] = True
        return


def select_masks(flats: Sequence[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Masks (flat bool) keeping exactly the ``k`` largest of ``flats``; ties at the threshold are
    kept tensors in turn, lowest flat index first. One pass over the scores, slice by slice: each
    slice (in cache) gives its part of the mask (``> high``, the sample's upper bound) and the
    positions and values of its entries inside the band ``[low, high]``; the exact threshold is
    selected among the band's values, and only band positions are set afterwards."""
    total = sum(f.numel() for f in flats)
    if not 1 <= k <= total:
        raise ValueError(f"k={k} outside [1, {total}]")
    banded = _banded_masks(flats, k, total) if total > EXACT_SELECTION_LIMIT else None
    if banded is not None:
        return banded
    chosen = select(flats, k)
    masks = [f > chosen.threshold for f in flats]
    need = k - sum(chosen.greater)
    for f, mask, ties in zip(flats, masks, chosen.ties):
        allowed = min(max(need, 0), ties)
        if allowed == ties and allowed:
            mask |= f == chosen.threshold
        elif allowed:
            keep_first_ties(mask, f, chosen.threshold, allowed)
        need -= allowed
    return masks


def _banded_masks(flats: Sequence[torch.Tensor], k: int, total: int) -> list[torch.Tensor] | None:
    sample = _sample(flats, total)
    size = sample.numel()
    p = k / total
    margin = MARGIN_SIGMAS * math.sqrt(size * p * (1 - p)) + 16
    low_rank, high_rank = int(math.ceil(p * size + margin)), int(p * size - margin)
    low = sample[low_rank] if low_rank < size else torch.tensor(float("-inf"), dtype=sample.dtype)
    high = sample[high_rank] if high_rank >= 0 else torch.tensor(float("inf"), dtype=sample.dtype)
    if bool(low == high):  # a block of ties spans the k-th rank: the tie path of select() handles it
        return None
    masks, positions, values, above = [], [], [], 0
    for f in flats:
        mask = torch.empty(f.numel(), dtype=torch.bool, device=f.device)
        where, what = [], []
        for start in range(0, f.numel(), CANDIDATE_CHUNK):
            chunk = f[start : start + CANDIDATE_CHUNK]
            part = mask[start : start + CANDIDATE_CHUNK]
            torch.gt(chunk, high, out=part)
            inside = (chunk >= low) & ~part
            index = inside.nonzero().squeeze(1)
            where.append(index + start)
            what.append(chunk[index])
        above += int(torch.count_nonzero(mask))
        masks.append(mask)
        positions.append(torch.cat(where))
        values.append(torch.cat(what))
    band = torch.cat(values)
    need = k - above  # how many to keep from the band
    if not 1 <= need <= band.numel():
        return None  # the sample's bounds missed (or ties at a bound): the exact path decides
    threshold = exact_kth_largest([band], need)
    left = need - sum(int(torch.count_nonzero(v > threshold)) for v in values)
    for mask, where, what in zip(masks, positions, values):
        mask[where[what > threshold]] = True
        ties = where[what == threshold]
        take = min(max(left, 0), ties.numel())
        mask[ties[:take]] = True
        left -= take
    return masks


__all__ = ["EXACT_SELECTION_LIMIT", "SAMPLE_SIZE", "Selection", "exact_kth_largest", "keep_first_ties", "select", "select_masks"]
