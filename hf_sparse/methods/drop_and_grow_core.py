"""Minimal RigL-style drop-and-grow used by ``cyclic``/``east`` after their cycles.

Per tensor, at a constant count: drop the ``k`` kept weights with the smallest |w|, grow the ``k``
pruned weights with the largest dense |grad| (Evci et al. 2020, "Rigging the Lottery").
"""

from __future__ import annotations

import math
from typing import Mapping

import torch

from ..masks import topk_mask


def cosine_drop_fraction(initial: float, step: int, span: int) -> float:
    """RigL's drop-fraction decay: ``initial / 2 * (1 + cos(pi * step / span))``, 0 after ``span``."""
    if step >= span:
        return 0.0
    return initial / 2.0 * (1.0 + math.cos(math.pi * max(step, 0) / span))


@torch.no_grad()
def drop_and_grow(
    weights: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    grads: Mapping[str, torch.Tensor],
    fraction: float,
) -> tuple[dict[str, torch.Tensor], int]:
    """Swap ``round(fraction * kept)`` weights per tensor; returns (new masks, weights regrown)."""
    new: dict[str, torch.Tensor] = {}
    regrown = 0
    for name, mask in masks.items():
        kept = int(mask.sum())
        n_swap = min(int(round(fraction * kept)), kept, mask.numel() - kept)
        if n_swap <= 0:
            new[name] = mask.clone()
            continue
        magnitude = weights[name].detach().abs().float().masked_fill(~mask, float("-inf"))
        after_drop = topk_mask(magnitude, kept - n_swap)
        growth = grads[name].detach().abs().float().masked_fill(mask, float("-inf"))
        grown = topk_mask(growth, n_swap)
        new[name] = after_drop | grown
        regrown += int(grown.sum())
    return new, regrown
