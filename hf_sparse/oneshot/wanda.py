"""Wanda: pruning by weights and activations (Sun, Liu, Bair, Kolter, 2023, "A Simple and Effective
Pruning Approach for Large Language Models").

Score of weight ``W[i, j]`` = ``|W[i, j]| * ||X_j||_2``, where ``X_j`` is input feature ``j`` over
all calibration tokens. Scores are compared within each output row (each row keeps the same
number of weights), or within each N:M group along the input dimension. No weight is updated.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..core.masks import nm_mask


def wanda_scores(weight: torch.Tensor, input_sq_norms: torch.Tensor) -> torch.Tensor:
    """``|W| * ||X_j||`` for a weight laid out (out_features, in_features) and the per-feature sum of
    squared inputs (the squared norms; any positive scale gives the same masks)."""
    if input_sq_norms.shape != (weight.shape[1],):
        raise ValueError(f"wanda: {input_sq_norms.numel()} input norms for a weight with {weight.shape[1]} input features")
    return weight.detach().float().abs() * input_sq_norms.float().clamp_min(0).sqrt().unsqueeze(0)


def wanda_mask(
    weight: torch.Tensor, input_sq_norms: torch.Tensor, sparsity: float, nm: Optional[tuple[int, int]] = None
) -> torch.Tensor:
    """Masks (True = kept) for ``weight`` (out_features, in_features): per output row, the
    ``round(in_features * sparsity)`` lowest scores pruned; or the ``n`` largest of every ``m`` kept.
    Ties go to the lowest input index."""
    scores = wanda_scores(weight, input_sq_norms)
    if nm is not None:
        return nm_mask(scores, nm[0], nm[1], in_dim=1)
    n_prune = int(round(weight.shape[1] * sparsity))
    keep = torch.ones_like(scores, dtype=torch.bool)
    if n_prune == 0:
        return keep
    keep.scatter_(1, _prune_order(scores)[:, :n_prune], False)
    return keep


def _prune_order(scores: torch.Tensor) -> torch.Tensor:
    """Column indices of each row, lowest score first; among equal scores the highest index first,
    so ties are kept at the lowest index (the rule of ``hf_sparse.core.masks``)."""
    reversed_scores = scores.flip(1)  # a stable sort of the flipped row puts higher indices first among ties
    order = torch.sort(reversed_scores, dim=1, stable=True).indices
    return scores.shape[1] - 1 - order
