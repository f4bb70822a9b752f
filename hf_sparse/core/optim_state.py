"""Zero optimizer state (momentum, Adam moments) at pruned positions.

A weight pruned with live momentum would be pushed off zero by the next step, and a weight
regrown later would inherit stale moments; both break the method's contract.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from .distributed import local


def _inner(optimizer: Any) -> torch.optim.Optimizer:
    """Unwrap accelerate's AcceleratedOptimizer (and similar wrappers)."""
    while hasattr(optimizer, "optimizer") and not isinstance(optimizer, torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


def zero_state_where(optimizer: Any, params: Mapping[str, torch.nn.Parameter], zero: Mapping[str, torch.Tensor]) -> None:
    """For each named parameter, set every same-shaped state tensor to 0 where ``zero`` is True.

    Under FSDP2 parameters and their state are DTensors and ``zero`` holds this rank's rows: the
    local shards of the state are zeroed.
    """
    if optimizer is None:
        return
    state = _inner(optimizer).state
    for name, where in zero.items():
        param_state = state.get(params[name])
        if not param_state:
            continue
        for value in param_state.values():
            if not isinstance(value, torch.Tensor):
                continue
            value = local(value)
            if value.shape == where.shape:
                value.masked_fill_(where.to(value.device), 0)
