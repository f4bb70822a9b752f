"""The mask engine: owns the masks, asks the method for new ones, keeps weights exactly sparse.

Trainer-agnostic: ``SparsityCallback`` and ``SparseTrainer`` call it at the right moments,
and a hand-written training loop can too::

    sparsifier = Sparsifier(model, config); sparsifier.begin(total_steps)
    for step in range(1, total_steps + 1):
        loss.backward(); sparsifier.prepare_gradients(step); optimizer.step()
        sparsifier.after_optimizer_step(step, optimizer)
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Optional

import torch
from torch import nn

from . import distributed
from ..config import SparsityConfig
from ..io.existing_masks import ExistingMasks, log_masks, read_masks
from .masks import overall_sparsity
from .optim_state import zero_state_where
from ..registry import get_method_class
from .targets import find_targets

logger = logging.getLogger(__name__)


class Sparsifier:
    """Masks by parameter name (bool, True = kept) and the method that evolves them."""

    def __init__(self, model: nn.Module, config: SparsityConfig):
        self.config = config
        self.targets = find_targets(model, config.targets, config.ignore)
        self.params: dict[str, nn.Parameter] = {t.name: t.param for t in self.targets}
        self.method = get_method_class(config.method)(config, self.targets)
        self.masks: dict[str, torch.Tensor] = {
            name: torch.ones_like(p, dtype=torch.bool) for name, p in self.params.items()
        }
        self._pruned: dict[str, torch.Tensor] = {}
        self.step = 0
        self.started = False
        self.pending_update = False
        self.update_count = 0
        self._grads_ready_for: Optional[int] = None
        self._dense_grads: Optional[dict[str, torch.Tensor]] = None
        self._sparsity = 0.0
        self.last_update_logs: dict[str, float] = {}
        # Masks the model already carries (hf_sparse metadata), read only if a fresh run asks for them.
        self._read_metadata = lambda: read_masks(model)

    # -- views ------------------------------------------------------------------------------------
    def weights(self) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in self.params.items()}

    @property
    def sparsity(self) -> float:
        """Overall sparsity of the masks over targeted weights."""
        return self._sparsity

    def target_sparsity(self) -> float:
        return self.method.target_sparsity(self.step)

    # -- the training life cycle --------------------------------------------------------------------
    def begin(self, total_steps: int) -> None:
        """Resolve the schedule; on a fresh run, build the initial masks (step 0)."""
        self.method.setup(total_steps)
        if not self.started:
            if all(bool(m.all()) for m in self.masks.values()):  # no masks given: what does the model carry?
                raw = {name: p.detach() for name, p in self.params.items()}
                start, source = self.method.starting_masks(ExistingMasks(raw, self._read_metadata))
                log_masks(start, source, f"{self.config.method}")
                self._set_masks(start, optimizer=None)
            self._set_masks(self.method.init_masks(self.weights(), self.masks), optimizer=None)
            self.started = True
        self.apply_masks()

    @torch.no_grad()
    def prepare_gradients(self, step: int) -> None:
        """Before clipping and ``optimizer.step()`` of optimizer step ``step``.

        Keeps a copy of the dense gradient when the method grows by gradient on this step, then
        zeroes the gradient of pruned weights so they neither count in the clip norm nor move.
        Idempotent within a step.
        """
        if self._grads_ready_for == step:
            return
        self._grads_ready_for = step
        wants_update = self.pending_update or self.method.is_update_step(step)
        if self.method.needs_gradients and wants_update:
            self._dense_grads = {
                name: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
                for name, p in self.params.items()
            }
        for name, p in self.params.items():
            if p.grad is not None:
                p.grad.masked_fill_(self._pruned_of(name, p.grad.device), 0)

    @torch.no_grad()
    def after_optimizer_step(self, step: int, optimizer: Any = None, skipped: bool = False) -> bool:
        """After ``optimizer.step()`` of step ``step``: update masks when due, re-apply them.

        A step skipped by the AMP grad scaler moves no weight, so a due update waits for the next
        real step. Returns True when the masks were updated.
        """
        self.step = step
        updated = False
        due = self.pending_update or self.method.is_update_step(step)
        if skipped:
            self.pending_update = due
        elif due:
            grads = self._dense_grads if self.method.needs_gradients else None
            new = self.method.update_masks(step, self.weights(), self.masks, grads)
            self._set_masks(new, optimizer)
            self.pending_update = False
            self.update_count += 1
            self.last_update_logs = self.method.update_logs()
            updated = True
        self._dense_grads = None
        self.apply_masks()
        return updated

    @torch.no_grad()
    def apply_masks(self) -> None:
        for name, p in self.params.items():
            p.masked_fill_(self._pruned_of(name, p.device), 0.0)

    def _pruned_of(self, name: str, device: torch.device) -> torch.Tensor:
        pruned = self._pruned.get(name)
        if pruned is None or pruned.device != device:
            pruned = ~self.masks[name].to(device)
            self._pruned[name] = pruned
        return pruned

    def _set_masks(self, new: Mapping[str, torch.Tensor], optimizer: Any) -> None:
        if self.config.sync_masks:
            new = distributed.broadcast_masks(new)
        self._check_masks(new)
        if optimizer is not None:  # pruned and regrown positions both restart from clean state
            stale = {name: ~(self.masks[name] & new[name]) for name in new}
            zero_state_where(optimizer, self.params, stale)
        self.masks = {name: m.to(torch.bool) for name, m in new.items()}
        self._pruned = {}
        self._sparsity = overall_sparsity(self.masks)

    def _check_masks(self, masks: Mapping[str, torch.Tensor]) -> None:
        if set(masks) != set(self.params):
            missing = sorted(set(self.params) - set(masks))
            extra = sorted(set(masks) - set(self.params))
            raise ValueError(f"masks do not match the model's targets: missing {missing}, unexpected {extra}")
        bad = [
            f"{name}: mask {tuple(m.shape)} vs weight {tuple(self.params[name].shape)}"
            for name, m in masks.items()
            if m.shape != self.params[name].shape
        ]
        if bad:
            raise ValueError(f"mask shapes do not match the model: {bad}")

    # -- state for checkpoints ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "started": self.started,
            "pending_update": self.pending_update,
            "update_count": self.update_count,
            "masks": {name: m.clone() for name, m in self.masks.items()},
            "method": self.method.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        masks = {name: torch.as_tensor(m).to(torch.bool) for name, m in state["masks"].items()}
        self._check_masks(masks)
        self.masks = {name: m.to(self.params[name].device) for name, m in masks.items()}
        self._pruned = {}
        self._sparsity = overall_sparsity(self.masks)
        self.step = int(state["step"])
        self.started = bool(state["started"])
        self.pending_update = bool(state["pending_update"])
        self.update_count = int(state.get("update_count", 0))
        self.method.load_state_dict(state.get("method", {}))
        self.apply_masks()
