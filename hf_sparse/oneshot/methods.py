"""The one-shot criteria behind ``prune(method=...)``: what each needs from calibration and how it
turns a weight (laid out out_features x in_features) and that statistic into a mask and new weights.

A new criterion is a new entry in ``ONESHOT_METHODS``, not a branch in the driver.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Optional

import torch

from .magnitude import magnitude_mask
from .sparsegpt import dampened_inverse_cholesky, sparsegpt_prune
from .statistics import Gram, InputStatistic, SquaredNorms
from .wanda import wanda_mask

NM = Optional[tuple[int, int]]


@dataclass(frozen=True)
class LayerSettings:
    sparsity: float
    nm: NM
    block_size: int = 128
    dampening: float = 0.01


class OneShotMethod:
    """Base: ``statistic`` is None for criteria that need no calibration data."""

    name: ClassVar[str] = ""
    statistic: ClassVar[Optional[Callable[[int, torch.device], InputStatistic]]] = None

    @classmethod
    def prune_layer(
        cls, weight: torch.Tensor, statistic: Optional[InputStatistic], settings: LayerSettings, in_dim: int = 1
    ) -> tuple[Optional[torch.Tensor], torch.Tensor]:
        """(new weight or None when only masked, mask) for ``weight``: laid out (out, in) for criteria with a
        statistic; data-free criteria get the stored layout and its input dimension ``in_dim``."""
        raise NotImplementedError


class Magnitude(OneShotMethod):
    name = "magnitude"

    @classmethod
    def prune_layer(cls, weight, statistic, settings, in_dim=1):
        return None, magnitude_mask(weight, settings.sparsity, settings.nm, in_dim=in_dim)


class Wanda(OneShotMethod):
    name = "wanda"
    statistic = SquaredNorms

    @classmethod
    def prune_layer(cls, weight, statistic, settings, in_dim=1):
        return None, wanda_mask(weight, statistic.value, settings.sparsity, settings.nm)


class SparseGPT(OneShotMethod):
    name = "sparsegpt"
    statistic = Gram

    @classmethod
    def prune_layer(cls, weight, statistic, settings, in_dim=1):
        hessian = statistic.value / max(statistic.tokens, 1)
        key = ("inverse_cholesky", settings.dampening)
        if key not in statistic.cache:  # once per distinct input: q/k/v (and gate/up) share it
            statistic.cache[key] = dampened_inverse_cholesky(hessian, settings.dampening)
        return sparsegpt_prune(
            weight, hessian, settings.sparsity, settings.nm, block_size=settings.block_size,
            dampening=settings.dampening, inverse_cholesky=statistic.cache[key],
        )


ONESHOT_METHODS: dict[str, type[OneShotMethod]] = {m.name: m for m in (Magnitude, Wanda, SparseGPT)}


def get_oneshot_method(name: str) -> type[OneShotMethod]:
    try:
        return ONESHOT_METHODS[name]
    except KeyError:
        raise ValueError(f"prune: method must be one of {sorted(ONESHOT_METHODS)}, got {name!r}") from None
