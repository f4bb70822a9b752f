"""DyReLU phasing (EAST): train with ``beta * DyReLU(x) + (1 - beta) * ReLU(x)``, end with plain ReLUs.

DyReLU-B (Chen et al. 2020, "Dynamic ReLU"): per channel ``y_c = max_k(a_c^k(x) * x_c + b_c^k(x))``,
``K = 2``, the coefficients coming from a squeeze-excite style hyper-network on the input
(global average pool -> FC(C, C/r) -> ReLU -> FC(C/r, 2KC) -> 2*sigmoid - 1, scaled by
``lambda_a = 1``, ``lambda_b = 0.5`` around ``a^1 = 1, a^2 = b^k = 0``). ``beta`` falls linearly from
1 to 0 between ``start`` and ``end`` (fractions of training, default 25% and 50%), driven by
:class:`DyReLUPhasingCallback`; at the end of training :func:`remove_dyrelu` puts ``nn.ReLU`` back,
so the saved model is the original architecture (loadable without hf_sparse, no inference cost).

The hyper-network uses raw parameters (``F.linear``), not ``nn.Linear``: its weights are not
sparsification targets.
"""

from __future__ import annotations

import logging
import math
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F
from transformers import TrainerCallback

from ..core.module_surgery import set_module

logger = logging.getLogger(__name__)


class DyReLU(nn.Module):
    """DyReLU-B for (N, C, H, W) inputs: channel-wise dynamic piecewise-linear activation."""

    def __init__(self, channels: int, reduction: int = 4, k: int = 2):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.channels, self.k = channels, k
        self.fc1_weight = nn.Parameter(torch.empty(hidden, channels))
        self.fc1_bias = nn.Parameter(torch.zeros(hidden))
        self.fc2_weight = nn.Parameter(torch.empty(2 * k * channels, hidden))
        self.fc2_bias = nn.Parameter(torch.zeros(2 * k * channels))
        nn.init.kaiming_uniform_(self.fc1_weight, a=math.sqrt(5))
        nn.init.kaiming_uniform_(self.fc2_weight, a=math.sqrt(5))
        self.register_buffer("lambdas", torch.tensor([1.0] * k + [0.5] * k), persistent=False)
        self.register_buffer("init_v", torch.tensor([1.0] + [0.0] * (2 * k - 1)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta = x.mean(dim=(2, 3))
        theta = F.relu(F.linear(theta, self.fc1_weight, self.fc1_bias))
        theta = 2.0 * torch.sigmoid(F.linear(theta, self.fc2_weight, self.fc2_bias)) - 1.0
        coefs = theta.view(-1, self.channels, 2 * self.k) * self.lambdas + self.init_v  # (N, C, 2K)
        a = coefs[:, None, None, :, : self.k]  # (N, 1, 1, C, K) against x as (N, H, W, C, 1)
        b = coefs[:, None, None, :, self.k :]
        y = (x.permute(0, 2, 3, 1).unsqueeze(-1) * a + b).amax(dim=-1)
        return y.permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, k={self.k}"


class PhasedReLU(nn.Module):
    """``beta * DyReLU(x) + (1 - beta) * ReLU(x)``; at ``beta == 0`` only the ReLU is computed."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.dyrelu = DyReLU(channels, reduction)
        self.beta = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        relu = F.relu(x)
        if self.beta <= 0.0:
            if self.training and torch.is_grad_enabled():
                # DDP (find_unused_parameters=False) wants a gradient for every parameter
                relu = relu + 0.0 * sum(p.sum() for p in self.dyrelu.parameters())
            return relu
        if self.beta >= 1.0:
            return self.dyrelu(x)
        return self.beta * self.dyrelu(x) + (1.0 - self.beta) * relu

    def extra_repr(self) -> str:
        return f"beta={self.beta:g}"


def _relu_channels(model: nn.Module, relus: dict[str, nn.ReLU], image_size: int) -> dict[str, int]:
    """Channels seen by each ReLU, from one dummy forward in eval mode (no state changes)."""
    channels: dict[str, set[int]] = {name: set() for name in relus}
    hooks = []
    for name, module in relus.items():
        def hook(_m, inputs, _out, name=name):
            if inputs[0].dim() != 4:
                raise ValueError(f"DyReLU phasing needs (N, C, H, W) activations; {name} got {tuple(inputs[0].shape)}")
            channels[name].add(int(inputs[0].shape[1]))
        hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    config = getattr(model, "config", None)
    in_channels = int(getattr(config, "num_channels", 3) or 3)
    param = next(model.parameters())
    try:
        model.eval()
        with torch.no_grad():
            model(pixel_values=torch.zeros(2, in_channels, image_size, image_size, device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    result = {}
    for name, seen in channels.items():
        if len(seen) != 1:
            raise ValueError(f"ReLU {name!r} runs {len(seen)} times with channels {sorted(seen)}; DyReLU needs one call site")
        result[name] = seen.pop()
    return result


def install_dyrelu(model: nn.Module, reduction: int = 4, image_size: int = 64, seed: int = 0) -> list[str]:
    """Replace every ``nn.ReLU`` of a CNN with a :class:`PhasedReLU` (beta = 1); returns their names.

    Call before the optimizer is built (``SparseTrainer`` does, for ``method="east"``).
    """
    relus = {name: m for name, m in model.named_modules() if type(m) is nn.ReLU}
    if not relus:
        raise ValueError(
            f"DyReLU phasing found no nn.ReLU in {type(model).__name__}; it supports ReLU CNNs "
            "(transformers ResNet, timm ResNet)"
        )
    channels = _relu_channels(model, relus, image_size)
    param = next(model.parameters())
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for name, c in channels.items():
            set_module(model, name, PhasedReLU(c, reduction).to(device=param.device, dtype=param.dtype))
    finally:
        torch.random.set_rng_state(state)
    logger.info("DyReLU phasing: replaced %d ReLUs", len(channels))
    return sorted(channels)


def set_beta(model: nn.Module, beta: float) -> int:
    """Set beta of every :class:`PhasedReLU`; returns how many there are."""
    count = 0
    for module in model.modules():
        if isinstance(module, PhasedReLU):
            module.beta = float(beta)
            count += 1
    return count


def remove_dyrelu(model: nn.Module) -> int:
    """Put ``nn.ReLU`` back in place of every :class:`PhasedReLU` (the DyReLU branch is dropped)."""
    names = [name for name, m in model.named_modules() if isinstance(m, PhasedReLU)]
    for name in names:
        set_module(model, name, nn.ReLU())
    return len(names)


def beta_at(step: int, total_steps: int, start: float = 0.25, end: float = 0.5) -> float:
    """Linear 1 -> 0 between fractions ``start`` and ``end`` of ``total_steps``."""
    first, last = start * total_steps, end * total_steps
    if step <= first:
        return 1.0
    if step >= last:
        return 0.0
    return 1.0 - (step - first) / (last - first)


class DyReLUPhasingCallback(TrainerCallback):
    """Drives beta from the Trainer's step; removes the DyReLU branches at the end of training."""

    def __init__(self, start: float = 0.25, end: float = 0.5, remove_at_end: bool = True):
        if not 0.0 <= start <= end <= 1.0:
            raise ValueError(f"DyReLU window needs 0 <= start <= end <= 1, got start={start}, end={end}")
        self.start, self.end, self.remove_at_end = start, end, remove_at_end
        self.beta: Optional[float] = None

    def _update(self, state, model) -> None:
        self.beta = beta_at(state.global_step, state.max_steps, self.start, self.end)
        if model is not None:
            set_beta(model, self.beta)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._update(state, model)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self._update(state, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.remove_at_end and model is not None:
            removed = remove_dyrelu(model)
            logger.info("DyReLU phasing: removed %d DyReLU branches (plain ReLUs remain)", removed)
