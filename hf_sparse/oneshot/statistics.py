"""Input statistics of a Linear layer over calibration tokens, gathered by forward hooks.

Wanda needs the squared norm of each input feature, SparseGPT the Gram matrix ``X^T X``. Both are
sums over tokens, so they accumulate batch by batch without keeping activations. Padding tokens
(``attention_mask == 0``) are left out when the layer's input is laid out (batch, sequence, features).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn


class InputStatistic:
    """A sum over calibration tokens of some function of a layer's input rows (fp32)."""

    def __init__(self, features: int, device: torch.device):
        self.features = features
        self.device = device
        self.tokens = 0
        self.cache: dict = {}  # what a criterion derives from the statistic once for every layer sharing it

    def release(self) -> None:
        """Free the sum and the cache once the last layer that reads them is pruned."""
        self.value = None
        self.cache = {}

    def add(self, rows: torch.Tensor) -> None:
        """``rows``: (tokens, features) inputs of one batch."""
        raise NotImplementedError


class SquaredNorms(InputStatistic):
    """Per input feature ``j``: ``sum_t x_tj^2`` (Wanda's ``||X_j||^2``)."""

    def __init__(self, features: int, device: torch.device):
        super().__init__(features, device)
        self.value = torch.zeros(features, dtype=torch.float32, device=device)

    def add(self, rows: torch.Tensor) -> None:
        rows = rows.float()
        self.value += rows.pow(2).sum(0)
        self.tokens += rows.shape[0]


class Gram(InputStatistic):
    """``X^T X`` over calibration tokens (SparseGPT's Hessian up to a factor of 2)."""

    def __init__(self, features: int, device: torch.device):
        super().__init__(features, device)
        self.value = torch.zeros(features, features, dtype=torch.float32, device=device)

    def add(self, rows: torch.Tensor) -> None:
        rows = rows.float()
        self.value.addmm_(rows.t(), rows)
        self.tokens += rows.shape[0]


class InputCollector:
    """Forward hooks that feed one statistic per distinct input of the hooked layers.

    Layers that receive the same tensor (a block's query, key and value projections) share one
    statistic: SparseGPT's ``X^T X`` is computed once for them. Sameness is object identity within
    a batch (the collector holds the tensors until the next batch, so their ids are not reused).
    """

    def __init__(self, make: Callable[[int, torch.device], InputStatistic]):
        self.make = make
        self.statistics: dict[str, InputStatistic] = {}
        self.token_mask: Optional[torch.Tensor] = None
        self._seen: dict[int, tuple[torch.Tensor, InputStatistic]] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def begin_batch(self, token_mask: Optional[torch.Tensor]) -> None:
        """Before each calibration batch: its ``attention_mask`` (None: every token counts)."""
        self.token_mask = token_mask
        self._seen = {}

    def rows(self, inputs: torch.Tensor) -> torch.Tensor:
        """``inputs`` (..., features) as (tokens, features), padding left out where the shape allows."""
        mask = self.token_mask
        if mask is not None and inputs.dim() == 3 and tuple(mask.shape) == tuple(inputs.shape[:2]):
            return inputs[mask.to(inputs.device, torch.bool)]
        return inputs.reshape(-1, inputs.shape[-1])

    def attach(self, name: str, module: nn.Module, features: int) -> None:
        """Feed the statistic of ``name`` with the inputs of ``module`` (nn.Linear or transformers' Conv1D)."""

        def hook(_module: nn.Module, args: tuple, _output: object) -> None:
            inputs = args[0].detach()
            if inputs.shape[-1] != features:
                raise ValueError(
                    f"one-shot calibration: {name} received {inputs.shape[-1]} input features, expected {features}"
                )
            seen = self._seen.get(id(inputs))
            if seen is not None and seen[0] is inputs:
                if name not in self.statistics:
                    self.statistics[name] = seen[1]
                if self.statistics[name] is seen[1]:
                    return  # already counted for the layer that shares this input
            statistic = self.statistics.get(name)
            if statistic is None:
                statistic = self.statistics[name] = self.make(features, inputs.device)
            statistic.add(self.rows(inputs))
            self._seen[id(inputs)] = (inputs, statistic)

        self._handles.append(module.register_forward_hook(hook))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._seen = {}
