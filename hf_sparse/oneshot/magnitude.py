"""Magnitude one-shot pruning: keep the largest |w| of each weight (or of each N:M group).

The baseline every one-shot paper compares with; it needs no calibration data.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..core.masks import nm_mask, topk_mask


def magnitude_mask(weight: torch.Tensor, sparsity: float, nm: Optional[tuple[int, int]] = None, in_dim: int = 1) -> torch.Tensor:
    """Exactly ``round(numel * (1 - sparsity))`` largest |w| kept per tensor, or the ``n`` largest
    of every ``m`` consecutive weights along ``in_dim`` for N:M. Ties go to the lowest index."""
    scores = weight.detach().abs()
    if nm is not None:
        return nm_mask(scores, nm[0], nm[1], in_dim=in_dim)
    return topk_mask(scores, int(round(weight.numel() * (1.0 - sparsity))))
