"""Which sparsity pattern a weight or a mask follows: the one N:M detector of the package.

Pure tensor code, no I/O. ``nm_pattern`` answers "does this mask keep exactly N of every M?"
(merging a LoRA delta into an N:M base must keep that pattern); ``detect_pattern`` classifies a
weight by its exact zeros for reports and kernel choices (dense / 2:4 / unstructured).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from .masks import nonzero_mask

#: A weight with a smaller fraction of exact zeros counts as dense (random inits hold a few zeros).
DENSE_BELOW = 0.01
#: The N:M patterns ``nm_pattern`` tries, most common first.
NM_CANDIDATES: tuple[tuple[int, int], ...] = ((2, 4), (1, 4), (4, 8), (1, 2))


def group_counts(mask: torch.Tensor, m: int, in_dim: int = 1) -> Optional[torch.Tensor]:
    """Kept entries in every group of ``m`` consecutive entries along ``in_dim`` (flat, one per group);
    None when the input dimension is not a multiple of ``m``."""
    moved = mask.movedim(in_dim, -1)
    if moved.shape[-1] == 0 or moved.shape[-1] % m != 0:
        return None
    return moved.reshape(-1, m).sum(dim=-1)


def nm_pattern(
    mask: torch.Tensor, in_dim: int = 1, candidates: Sequence[tuple[int, int]] = NM_CANDIDATES
) -> Optional[tuple[int, int]]:
    """The ``(N, M)`` a mask follows exactly (N kept in every group of M along ``in_dim``), if any."""
    if mask.dim() < 2:
        return None
    kept = mask.to(torch.bool)
    for n, m in candidates:
        counts = group_counts(kept, m, in_dim)
        if counts is not None and bool(torch.all(counts == n)):
            return n, m
    return None


def _fraction_full_24_groups(nonzero: torch.Tensor, in_dim: int) -> float:
    """Fraction of groups of 4 with exactly 2 nonzeros; -1 when some group holds more than 2."""
    counts = group_counts(nonzero, 4, in_dim)
    if counts is None or bool((counts > 2).any()):
        return -1.0
    return float((counts == 2).float().mean())


def is_24_compatible(weight: torch.Tensor, in_dim: int = 1) -> bool:
    """At most 2 nonzeros in every group of 4 along the input dim (2:4 kernels apply)."""
    return _fraction_full_24_groups(nonzero_mask(weight), in_dim) >= 0.0


def detect_pattern(weight: torch.Tensor, in_dim: int = 1) -> str:
    """'dense' (under 1% zeros: stray zeros of a dense init), '2:4' or 'unstructured'.

    '2:4': at most 2 nonzeros in every group of 4 along the input dimension, and at least 90%
    of the groups hold exactly 2 (a 2:4 mask; a 90%-sparse random layer is often 2:4-compatible
    by chance, but it is unstructured sparsity).
    """
    nonzero = nonzero_mask(weight)
    if 1.0 - int(nonzero.sum()) / max(nonzero.numel(), 1) < DENSE_BELOW:
        return "dense"
    return "2:4" if _fraction_full_24_groups(nonzero, in_dim) >= 0.9 else "unstructured"


def common_pattern(masks: Sequence[torch.Tensor], in_dims: Sequence[int]) -> str:
    """"N:M" when every mask follows the same exact N:M pattern, else "unstructured"."""
    found = {nm_pattern(mask, dim) for mask, dim in zip(masks, in_dims)}
    if len(found) == 1 and None not in found:
        n, m = found.pop()
        return f"{n}:{m}"
    return "unstructured"


__all__ = ["DENSE_BELOW", "NM_CANDIDATES", "common_pattern", "detect_pattern", "group_counts", "is_24_compatible", "nm_pattern"]
