"""FLOPs and bytes of a sparse model: what its Linear/Conv layers would cost dense and sparse."""

from __future__ import annotations

from typing import Any, Mapping, Union

import torch
from torch import nn

from ..core.targets import SUPPORTED_MODULES
from ..inference.calls import call_model

Inputs = Union[Mapping[str, torch.Tensor], torch.Tensor]


def compressed_bytes(numel: int, nonzero: int, dtype_bytes: int) -> float:
    """Bitmask (1 bit per weight) + the nonzero values: what a bitmask export stores."""
    return nonzero * dtype_bytes + numel / 8.0


def _out_channel_dim(module: nn.Module) -> int:
    return 1 if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) else -1


@torch.no_grad()
def count_flops(model: nn.Module, inputs: Inputs) -> dict[str, dict[str, Any]]:
    """Multiply-add FLOPs (2 per MAC) of every Linear/Conv module in one forward pass of ``inputs``.

    For a weight of ``numel`` elements applied at ``positions`` output positions (tokens for a
    Linear, batch x spatial for a Conv): dense ``2 * numel * positions``; sparse the same times
    the weight's density (only nonzero weights multiply).
    """
    flops: dict[str, dict[str, Any]] = {}
    names = {id(m): n for n, m in model.named_modules()}

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if not isinstance(output, torch.Tensor):
            return
        weight = module.weight
        positions = output.numel() // max(output.shape[_out_channel_dim(module)], 1)
        dense = 2 * weight.numel() * positions
        density = int(torch.count_nonzero(weight)) / max(weight.numel(), 1)
        row = flops.setdefault(names[id(module)], {"dense": 0, "sparse": 0.0})
        row["dense"] += dense
        row["sparse"] += dense * density

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, SUPPORTED_MODULES)]
    try:
        call_model(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return flops


__all__ = ["compressed_bytes", "count_flops"]
