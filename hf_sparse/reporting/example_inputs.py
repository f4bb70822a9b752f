"""Inputs and baselines a report needs when the user gives none: random token ids or pixels of
the model's own config, and a dense twin of a sparse model (its zeros refilled)."""

from __future__ import annotations

import copy
from typing import Mapping, Optional, Sequence, Union

import torch
from torch import nn

from ..core.targets import Target

Inputs = Union[Mapping[str, torch.Tensor], torch.Tensor]


def make_example_inputs(model: nn.Module, input_shape: Optional[Sequence[int]] = None, seed: int = 0) -> Inputs:
    """Random inputs of ``input_shape`` for a transformers model (token ids or pixel values)."""
    config = getattr(model, "config", None)
    main = getattr(model, "main_input_name", None)
    device = device_of(model)
    generator = torch.Generator().manual_seed(seed)
    if main == "input_ids" and getattr(config, "vocab_size", None):
        shape = tuple(input_shape or (1, 128))
        if len(shape) != 2:
            raise ValueError(f"input_shape for a text model is (batch, sequence length), got {shape}")
        ids = torch.randint(1, int(config.vocab_size), shape, generator=generator)
        return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}
    if main == "pixel_values":
        channels = int(getattr(config, "num_channels", 3) or 3)
        size = getattr(config, "image_size", 224) or 224
        size = int(size[0] if isinstance(size, (list, tuple)) else size)
        shape = tuple(input_shape or (1, channels, size, size))
        if len(shape) != 4:
            raise ValueError(f"input_shape for an image model is (batch, channels, height, width), got {shape}")
        return {"pixel_values": torch.randn(shape, generator=generator).to(device)}
    raise ValueError(
        f"cannot build example inputs for {type(model).__name__} (main_input_name={main!r}); "
        "pass example_inputs (a tensor or a dict of tensors)"
    )


def device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def densified_copy(model: nn.Module, targets: Sequence[Target], seed: int = 0) -> nn.Module:
    """A copy whose zeros in targeted weights hold small random values: the dense baseline."""
    dense = copy.deepcopy(model)
    params = dict(dense.named_parameters())
    generator = torch.Generator().manual_seed(seed)
    for target in targets:
        weight = params[target.name]
        zero = weight == 0
        if bool(zero.any()):
            scale = float(weight[~zero].float().std()) if bool((~zero).sum() > 1) else 0.02
            noise = torch.randn(weight.shape, generator=generator).to(weight.device, weight.dtype) * (scale or 0.02)
            weight.copy_(torch.where(zero, noise, weight))
    return dense


__all__ = ["densified_copy", "device_of", "make_example_inputs"]
