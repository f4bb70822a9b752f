"""Exact selections over tensors split into rank-ordered row chunks (FSDP2 ``Shard(0)``).

Each rank passes its local chunks and a :class:`~hf_sparse.core.reduction.Reduction`; every rank
gets the same decision the unsharded engine takes on the whole tensors, bit for bit:

- :func:`kth_largest` finds the exact k-th largest value by radix selection on the float bits:
  four passes, each an all-reduce of a 256-bin histogram (2 KiB), never the values themselves.
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

_SIGN = 0x80000000
_ALL = 0xFFFFFFFF
_BITS = 8  # radix digit width: 4 passes over 32-bit keys, 256-bin histograms


def order_keys(values: torch.Tensor) -> torch.Tensor:
    """int64 keys in [0, 2**32) ordered like the float values (-0.0 and +0.0 share a key).

    float32 bits, sign flipped for positives and all bits flipped for negatives: the usual
    order-preserving map. bf16/fp16 values are exact in float32, so their order is kept too.
    """
    if values.dtype == torch.float64:
        raise ValueError("sharded selection supports float32/bfloat16/float16 scores, got float64")
    bits = values.detach().float().reshape(-1).view(torch.int32).to(torch.int64) & _ALL
    bits = torch.where(bits == _SIGN, torch.zeros_like(bits), bits)  # -0.0 == +0.0
    return torch.where(bits >= _SIGN, _ALL - bits, bits + _SIGN)


def key_value(key: int, dtype: torch.dtype) -> torch.Tensor:
    """The float (as a 0-dim tensor of ``dtype``) whose :func:`order_keys` key is ``key``."""
    bits = key - _SIGN if key >= _SIGN else _ALL - key
    signed = bits - (1 << 32) if bits >= _SIGN else bits
    return torch.tensor([signed], dtype=torch.int32).view(torch.float32)[0].to(dtype)


def kth_largest(flats: Sequence[torch.Tensor], k: int, reduction: Reduction) -> torch.Tensor:
    """The k-th largest value over the local parts of all ranks (1-based), exactly.

    Radix selection from the top digit: the all-reduced histogram of the candidates' next digit
    says which bin holds the k-th value; only candidates in that bin stay (kept as floats, so the
    memory is the size of one bin, and keys are recomputed per tensor, one at a time).
    """
    dtype = flats[0].dtype if flats else torch.float32
    for f in flats[1:]:
        dtype = torch.promote_types(dtype, f.dtype)
    candidates = [f.reshape(-1) for f in flats]
    prefix, remaining = 0, int(k)
    for shift in range(32 - _BITS, -1, -_BITS):
        histogram = torch.zeros(1 << _BITS, dtype=torch.int64)
        digits_of = []
        for values in candidates:
            digits = ((order_keys(values) >> shift) & ((1 << _BITS) - 1)).cpu()
            histogram += torch.bincount(digits, minlength=1 << _BITS)
            digits_of.append(digits)
        histogram = reduction.all_reduce_sum(histogram)
        from_top = histogram.flip(0).cumsum(0)
        index = int(torch.searchsorted(from_top, torch.tensor([remaining]))[0])
        if index >= from_top.numel():
            raise ValueError(f"k={k} exceeds the number of values ({int(from_top[-1])})")
        digit = (1 << _BITS) - 1 - index
        remaining -= int(from_top[index]) - int(histogram[digit])
        prefix |= digit << shift
        candidates = [values[(digits == digit).to(values.device)] for values, digits in zip(candidates, digits_of)]
    return key_value(prefix, dtype)


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
