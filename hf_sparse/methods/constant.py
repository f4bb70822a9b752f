"""Constant masks: fine-tune an already sparse model and keep exactly the zeros it has."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Optional

import torch

from ..core.masks import overall_sparsity
from .registry import register_method
from .base import Masks, PruningMethod

if TYPE_CHECKING:
    from ..config import SparsityConfig
    from ..core.starting_masks import ExistingMasks

logger = logging.getLogger(__name__)

MASKS_FROM = ("auto", "metadata", "zeros")


@dataclass
class ConstantArgs:
    masks_from: str = field(
        default="auto",
        metadata={
            "help": "'metadata' (hf_sparse masks attached to the model or saved in its folder), 'zeros' (exact "
            "zeros of the targeted weights) or 'auto' (metadata when present, else zeros)."
        },
    )

    def __post_init__(self) -> None:
        if self.masks_from not in MASKS_FROM:
            raise ValueError(f"method_args.masks_from must be one of {MASKS_FROM}, got {self.masks_from!r}")


@register_method("constant")
class Constant(PruningMethod):
    """Keep the masks the model already has, fixed, for the whole run.

    Masks come from hf_sparse metadata or from exact zeros (``method_args.masks_from``); the
    engine keeps pruned weights at exactly 0 after every optimizer step and their optimizer
    state at 0. ``sparsity``, ``allocation`` and the schedule fields are not used: the model's
    own sparsity is the target (logged per layer at the start).
    """

    Args = ConstantArgs
    summary = "keep the masks the model already has, fixed (fine-tune a sparse checkpoint)"

    def __init__(self, config: "SparsityConfig", targets: list) -> None:
        super().__init__(config, targets)
        self.kept_sparsity: Optional[float] = None  # the masks' sparsity, known once training starts

    def setup(self, total_steps: int) -> None:
        self.total_steps = total_steps
        self.updates = None  # never updates

    def target_sparsity(self, step: int) -> float:
        return self.kept_sparsity if self.kept_sparsity is not None else 0.0

    def starting_masks(self, existing: "ExistingMasks") -> tuple[Masks, str]:
        if self.args.masks_from == "auto":
            return existing.metadata_or_zeros()
        return existing.resolve(self.args.masks_from)

    def init_masks(self, weights: Mapping[str, torch.Tensor], masks: Masks) -> Masks:
        self.kept_sparsity = overall_sparsity(masks)
        if self.kept_sparsity == 0.0:
            logger.warning(
                "constant: the targeted weights have no zeros (masks_from=%r): nothing to keep sparse, "
                "training is dense", self.args.masks_from,
            )
        return masks

    def update_masks(self, step: int, weights: Mapping[str, torch.Tensor], masks: Masks, grads=None) -> Masks:
        return masks

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "kept_sparsity": self.kept_sparsity}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        value = state.get("kept_sparsity")
        self.kept_sparsity = float(value) if value is not None else None
