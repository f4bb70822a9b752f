"""Reduction contexts: how a selection sees the parts of a tensor that live on other ranks.

Under FSDP2 every rank holds row chunks (``Shard(0)``) of each weight. A mask update must still
decide over the *whole* tensor (a per-layer top-k, one global threshold), so the selection
functions in :mod:`hf_sparse.core.masks` / :mod:`hf_sparse.core.sharding` take a ``Reduction``:

- ``LOCAL`` (the default): the tensor is whole here; every reduction is the identity.
- ``GroupReduction(group)``: the tensors are rank-ordered row chunks of one tensor each; sums and
  gathers run over ``group`` on small tensors (counts, histograms), never on weights.

Most methods never see it: the engine enters ``use(reduction)`` around a mask update, and the
selection functions read ``current()`` when no reduction is passed. A method that sums over a whole
tensor itself reads ``current()`` too (drop-and-grow: the scale of its growth scores, its logs). A context variable (not a
global) so concurrent threads (the unit tests simulate ranks with threads) each keep their own.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Optional

import torch
import torch.distributed as dist


class Reduction:
    """The whole tensor is here: ``world == 1`` and every collective is the identity."""

    world: int = 1
    rank: int = 0

    @property
    def sharded(self) -> bool:
        return self.world > 1

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of ``tensor`` over ranks (a new tensor; the input is untouched)."""
        return tensor.clone()

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """``tensor`` (same shape on every rank) from every rank, in rank order."""
        return [tensor.clone()]

    def sum_int(self, value: int) -> int:
        return int(self.all_reduce_sum(torch.tensor([int(value)], dtype=torch.int64))[0])

    def sum_float(self, value: float) -> float:
        return float(self.all_reduce_sum(torch.tensor([float(value)], dtype=torch.float64))[0])


LOCAL = Reduction()


class GroupReduction(Reduction):
    """Collectives over a ``torch.distributed`` process group (the FSDP2 shard group)."""

    def __init__(self, group: Optional[dist.ProcessGroup] = None):
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self._device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else None

    def _to_comm(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self._device) if self._device is not None else tensor.clone()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        buffer = self._to_comm(tensor)
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM, group=self.group)
        return buffer.to(tensor.device)

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        buffer = self._to_comm(tensor)
        parts = [torch.empty_like(buffer) for _ in range(self.world)]
        dist.all_gather(parts, buffer, group=self.group)
        return [part.to(tensor.device) for part in parts]


_CURRENT: contextvars.ContextVar[Reduction] = contextvars.ContextVar("hf_sparse_reduction", default=LOCAL)


def current() -> Reduction:
    """The reduction of the mask update in progress (``LOCAL`` outside one)."""
    return _CURRENT.get()


@contextlib.contextmanager
def use(reduction: Reduction) -> Iterator[Reduction]:
    """Run the selections inside with ``reduction`` (the engine wraps method calls in it)."""
    token = _CURRENT.set(reduction)
    try:
        yield reduction
    finally:
        _CURRENT.reset(token)
