"""Exact selections over tensors split into rank-ordered row chunks (FSDP2 ``Shard(0)``).

Each rank passes its local chunks and a :class:`~hf_sparse.core.reduction.Reduction`; every rank
gets the same decision the unsharded engine takes on the whole tensors, bit for bit:

- :func:`kth_largest` finds the exact k-th largest value by radix selection on the float bits:
  three passes, each an all-reduce of a histogram (48 KiB in all), never the values themselves.
- :func:`tie_allowances` says how many entries equal to the threshold this rank keeps, so that
  ties go to the lowest flat index of the whole tensor (rank order = row order under ``Shard(0)``).
- :func:`random_rows` draws the full tensor's seeded random scores and keeps this rank's rows,
  so the generator advances exactly as in an unsharded run.

Pure tensor code: the collectives are the reduction's, on small count tensors.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .reduction import Reduction

_INT32_MIN = -(1 << 31)
#: Radix digits from the top of the 32-bit key: sign, exponent and 3 mantissa bits first (no bin
#: of a smooth distribution holds more than ~1/8 of the values), then 10 + 10 bits. Histograms of
#: 4096 / 1024 / 1024 int64 counts: 48 KiB all-reduced per selection.
_DIGITS = ((20, 12), (10, 10), (0, 10))  # (shift, width)


def order_keys(values: torch.Tensor) -> torch.Tensor:
    """int32 keys ordered like the float values, as signed integers (-0.0 and +0.0 share a key).

    The float32 bits with the 31 value bits flipped for negatives: the usual order-preserving map.
    bf16/fp16 values are exact in float32, so their order is kept too. int32 throughout: the keys
    of a tensor cost as much memory as the tensor.
    """
    if values.dtype == torch.float64:
        raise ValueError("sharded selection supports float32/bfloat16/float16 scores, got float64")
    bits = values.detach().float().reshape(-1).view(torch.int32)
    bits = bits.masked_fill(bits == _INT32_MIN, 0)  # -0.0 == +0.0
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def key_value(key: int, dtype: torch.dtype) -> torch.Tensor:
    """The float (as a 0-dim tensor of ``dtype``) whose :func:`order_keys` key is ``key``."""
    bits = key ^ 0x7FFFFFFF if key < 0 else key
    return torch.tensor([bits], dtype=torch.int32).view(torch.float32)[0].to(dtype)


def _digit(keys: torch.Tensor, shift: int, width: int) -> torch.Tensor:
    """Digit ``width`` bits wide at ``shift`` of the unsigned key (key + 2**31), as int64 >= 0."""
    unsigned_top = (keys >> shift).to(torch.int64) + ((1 << 31) >> shift)  # arithmetic shift, then unbias
    return unsigned_top & ((1 << width) - 1)


def kth_largest(flats: Sequence[torch.Tensor], k: int, reduction: Reduction) -> torch.Tensor:
    """The k-th largest value over the local parts of all ranks (1-based), exactly.

    Radix selection from the top digit: the all-reduced histogram of the candidates' next digit
    says which bin holds the k-th value; only candidates in that bin stay (copied as floats: after
    the first digit a small share of the values). Keys are recomputed per tensor, one at a time,
    so the extra memory is one tensor's keys plus the candidates.
    """
    dtype = flats[0].dtype if flats else torch.float32
    for f in flats[1:]:
        dtype = torch.promote_types(dtype, f.dtype)
    candidates = [f.reshape(-1) for f in flats]
    prefix, remaining = 0, int(k)
    for shift, width in _DIGITS:
        histogram = torch.zeros(1 << width, dtype=torch.int64)
        for values in candidates:
            histogram += torch.bincount(_digit(order_keys(values), shift, width).cpu(), minlength=1 << width)
        histogram = reduction.all_reduce_sum(histogram)
        from_top = histogram.flip(0).cumsum(0)
        index = int(torch.searchsorted(from_top, torch.tensor([remaining]))[0])
        if index >= from_top.numel():
            raise ValueError(f"k={k} exceeds the number of values ({int(from_top[-1])})")
        digit = (1 << width) - 1 - index
        remaining -= int(from_top[index]) - int(histogram[digit])
        prefix |= digit << shift
        candidates = [values[_digit(order_keys(values), shift, width) == digit] for values in candidates]
    return key_value(prefix - (1 << 31), dtype)


def tie_allowances(greater: Sequence[int], ties: Sequence[int], n_keep: int, reduction: Reduction) -> list[int]:
    """How many local ties (entries equal to the threshold) to keep in each tensor.

    ``greater[j]`` / ``ties[j]``: this rank's count of entries above / at the threshold in tensor j.
    The ``n_keep - sum(greater)`` kept ties go to tensors in order, within a tensor to ranks in
    order (the row order under ``Shard(0)``), within a rank to the lowest flat index: the same rule
    as one process keeping the first ties in flat order of the tensors in turn.
    """
    local = torch.tensor([list(greater), list(ties)], dtype=torch.int64).reshape(2, len(ties))
    every = reduction.all_gather(local)  # [world] x [2, n_tensors]
    need = n_keep - sum(int(part[0].sum()) for part in every)
    allowances = []
    for j in range(len(ties)):
        for rank, part in enumerate(every):
            count = int(part[1, j])
            if rank == reduction.rank:
                allowances.append(max(0, min(need, count)))
            need -= min(max(need, 0), count)
    return allowances


def row_span(tensor: torch.Tensor, reduction: Reduction) -> tuple[int, int]:
    """(rows on lower ranks, rows in the whole tensor) for this rank's row chunk ``tensor``."""
    rows = torch.tensor([tensor.shape[0] if tensor.dim() else 1], dtype=torch.int64)
    every = [int(r[0]) for r in reduction.all_gather(rows)]
    return sum(every[: reduction.rank]), sum(every)


def random_rows(like: torch.Tensor, generator: torch.Generator, reduction: Reduction) -> torch.Tensor:
    """``torch.rand`` of the whole tensor from ``generator``, this rank's rows only.

    The full draw is transient (one tensor at a time, float32): the generator must advance as in
    an unsharded run, and a CPU generator cannot skip ahead.
    """
    if not reduction.sharded:
        return torch.rand(like.shape, generator=generator).to(like.device)
    before, total = row_span(like, reduction)
    full = torch.rand((total, *like.shape[1:]), generator=generator)
    return full[before: before + like.shape[0]].to(like.device)
