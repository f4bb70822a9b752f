"""The mask engine: owns the masks, asks the method for new ones, keeps weights exactly sparse.

``MaskEngine`` receives a built method and a reader of the masks the model already carries; it looks
up nothing by name (``hf_sparse.Sparsifier`` builds both from a ``SparsityConfig``). Trainer-agnostic:
``SparsityCallback`` and ``SparseTrainer`` call it at the right moments, and a hand-written training
loop can too::

    sparsifier = hf_sparse.Sparsifier(model, config); sparsifier.begin(total_steps)
    for step in range(1, total_steps + 1):
        loss.backward(); sparsifier.prepare_gradients(step); optimizer.step()
        sparsifier.after_optimizer_step(step, optimizer)

Under FSDP2 (``fully_shard``) ``begin(total_steps, model)`` re-resolves the parameters by name (the
sharded DTensors replace the ones captured here), masks become this rank's row chunks, and every
mask update runs its selections through the shard group (:mod:`hf_sparse.core.reduction`), so the
masks are bitwise those of one process holding the whole model.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

import torch
from torch import nn

from . import distributed
from .masks import all_kept, overall_sparsity
from .optim_state import zero_state_where
from .reduction import LOCAL, Reduction, use
from .starting_masks import ExistingMasks, Masks, log_masks

if TYPE_CHECKING:
    from ..config import SparsityConfig
    from ..methods.base import PruningMethod

logger = logging.getLogger(__name__)


class MaskEngine:
    """Masks by parameter name (bool, True = kept) and the method that evolves them.

    ``method`` is built (its ``targets`` are the weights masked here); ``existing_masks()`` returns the
    masks the model already carries (hf_sparse metadata) or None, and is called only if a fresh run
    asks for them.
    """

    def __init__(
        self,
        model: nn.Module,
        config: "SparsityConfig",
        method: "PruningMethod",
        existing_masks: Optional[Callable[[], Optional[Masks]]] = None,
    ):
        self.config = config
        self.method = method
        self.targets = method.targets
        self.params: dict[str, nn.Parameter] = {t.name: t.param for t in self.targets}
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
        self._model = model
        #: LOCAL, or the FSDP2 shard group once ``bind`` finds sharded parameters.
        self.reduction: Reduction = LOCAL
        self._read_metadata = existing_masks if existing_masks is not None else (lambda: None)
        #: Where fresh gradients come from when the method asks for them before an update
        #: (``PruningMethod.fresh_gradients_wanted``); ``SparseTrainer`` sets it, a hand-written loop may
        #: set a ``hf_sparse.core.calibration.GradientSampler``.
        self.gradient_sampler: Optional[Callable[..., Any]] = None

    # -- views ------------------------------------------------------------------------------------
    def weights(self) -> dict[str, torch.Tensor]:
        """The targeted weights (this rank's rows under FSDP2)."""
        return {name: distributed.local(p).detach() for name, p in self.params.items()}

    @property
    def sharded(self) -> bool:
        return self.reduction.sharded

    @property
    def sparsity(self) -> float:
        """Overall sparsity of the masks over targeted weights."""
        return self._sparsity

    def target_sparsity(self) -> float:
        return self.method.target_sparsity(self.step)

    # -- FSDP2 -----------------------------------------------------------------------------------
    def bind(self, model: Optional[nn.Module] = None) -> None:
        """Resolve the targeted parameters by name from ``model`` as it is now (idempotent).

        accelerate's FSDP2 preparation replaces every parameter by a new sharded DTensor: the
        objects captured at construction are stale (masks applied to them change nothing) and would
        keep the unsharded weights alive. Sharded parameters make masks this rank's row chunks and
        mask updates run over the shard group. Unsharded models are left as they are.
        """
        model = model if model is not None else self._model
        self._model = model
        distributed.reshard_fsdp(model)  # after evaluate() the root group's parameters may be unsharded
        current = dict(model.named_parameters())
        if not any(distributed.is_sharded(current.get(name)) for name in self.params):
            return
        missing = sorted(set(self.params) - set(current))
        if missing:
            raise ValueError(f"the prepared model has no parameters {missing[:3]} (targets found before sharding)")
        if all(current[name] is p for name, p in self.params.items()):
            return
        params = {name: current[name] for name in self.params}
        self.reduction = distributed.shard_reduction(params.values())
        for target in self.targets:
            # Target is frozen; every holder (method, allocation) must see the sharded parameter.
            object.__setattr__(target, "param", params[target.name])
        self.params = params
        self.masks = {name: self._local(name, m) for name, m in self.masks.items()}
        self._pruned = {}
        self._dense_grads = None

    def _local(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` (shaped like this rank's rows, or like the whole weight) as this rank's rows."""
        param = self.params[name]
        part = distributed.local(param)
        tensor = torch.as_tensor(tensor)
        if tensor.is_meta:  # initial all-kept masks of a model loaded on meta (cpu_ram_efficient_loading)
            return torch.ones(part.shape, dtype=torch.bool, device=part.device)
        if tuple(tensor.shape) == tuple(part.shape):
            return tensor.to(part.device)
        if tuple(tensor.shape) == tuple(param.shape):
            return distributed.cut_rows(tensor, param).to(part.device)
        raise ValueError(f"{name}: tensor {tuple(tensor.shape)} fits neither the weight {tuple(param.shape)} nor its shard {tuple(part.shape)}")

    def _metadata_masks(self) -> Optional[dict[str, torch.Tensor]]:
        """The model's hf_sparse metadata masks (whole tensors on disk), cut to this rank's rows."""
        saved = self._read_metadata()
        if not saved or not self.sharded:
            return saved
        return {
            name: (self._local(name, m) if name in self.params and tuple(m.shape) == tuple(self.params[name].shape) else m)
            for name, m in saved.items()
        }

    def _map_weight_tensors(self, state: Any, fn: Any) -> Any:
        """``state`` with ``fn(name, tensor)`` applied to every tensor keyed by a targeted weight's name."""
        if isinstance(state, Mapping):
            return {
                key: fn(key, value) if key in self.params and isinstance(value, torch.Tensor)
                else self._map_weight_tensors(value, fn)
                for key, value in state.items()
            }
        return state

    # -- the training life cycle --------------------------------------------------------------------
    def begin(self, total_steps: int, model: Optional[nn.Module] = None) -> None:
        """Resolve the parameters (FSDP2) and the schedule; on a fresh run, build the initial masks."""
        self.bind(model)
        self.method.setup(total_steps)
        with use(self.reduction):
            if not self.started:
                if self.method.is_update_step(0):
                    self._fresh_gradients(0)
                if all_kept(self.masks):  # no masks given: what does the model carry?
                    start, source = self.method.starting_masks(ExistingMasks(self.weights(), self._metadata_masks))
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
        local = distributed.local
        if self.method.needs_gradients and wants_update:
            self._dense_grads = {
                name: (local(p.grad).detach().clone() if p.grad is not None else torch.zeros_like(local(p)))
                for name, p in self.params.items()
            }
        for name, p in self.params.items():
            if p.grad is not None:
                grad = local(p.grad)
                grad.masked_fill_(self._pruned_of(name, grad.device), 0)

    @torch.no_grad()
    def after_optimizer_step(self, step: int, optimizer: Any = None, skipped: bool = False) -> bool:
        """After ``optimizer.step()`` of step ``step``: update masks when due, re-apply them.

        A step skipped by the AMP grad scaler moves no weight, so a due update waits for the next
        real step. Returns True when the masks were updated.
        """
        self.step = step
        updated = False
        if not skipped and self.method.observes_gradients:  # the gradients this step used are still there
            self.method.observe_gradients(
                {name: distributed.local(p.grad) for name, p in self.params.items() if p.grad is not None}
            )
        due = self.pending_update or self.method.is_update_step(step)
        if skipped:
            self.pending_update = due
        elif due:
            grads = self._dense_grads if self.method.needs_gradients else None
            self._fresh_gradients(step)
            with use(self.reduction):
                new = self.method.update_masks(step, self.weights(), self.masks, grads)
            self._set_masks(new, optimizer)
            self.pending_update = False
            self.update_count += 1
            self.last_update_logs = self.method.update_logs()
            updated = True
        self._dense_grads = None
        self.apply_masks()
        return updated

    def _fresh_gradients(self, step: int) -> None:
        """Hand the method the fresh gradients it wants before the update of ``step`` (if any)."""
        request = self.method.fresh_gradients_wanted(step)
        if request is None:
            return
        if self.gradient_sampler is None:
            raise RuntimeError(
                f"method {self.config.method!r} wants {request.batches} fresh training batches before the mask update "
                f"of step {step} (e.g. gmp's fisher_estimate='fresh'), but this engine has no gradient_sampler: "
                "SparseTrainer sets one; a hand-written loop sets sparsifier.gradient_sampler = "
                "hf_sparse.core.calibration.GradientSampler(model, batches, loss)"
            )
        self.apply_masks()  # the gradients are those of the masked model
        gradients = self.gradient_sampler(request, self.params)
        try:
            self.method.observe_fresh_gradients(gradients)
        finally:
            close = getattr(gradients, "close", None)
            if close is not None:
                close()

    @torch.no_grad()
    def apply_masks(self) -> None:
        for name, p in self.params.items():
            weight = distributed.local(p)
            weight.masked_fill_(self._pruned_of(name, weight.device), 0.0)

    def _pruned_of(self, name: str, device: torch.device) -> torch.Tensor:
        pruned = self._pruned.get(name)
        if pruned is None or pruned.device != device:
            pruned = ~self.masks[name].to(device)
            self._pruned[name] = pruned
        return pruned

    def _set_masks(self, new: Mapping[str, torch.Tensor], optimizer: Any) -> None:
        if self.config.sync_masks and not self.sharded:  # shards differ by design; selections are exact
            new = distributed.broadcast_masks(new)
        self._check_masks(new)
        if optimizer is not None:  # pruned and regrown positions both restart from clean state
            stale = {name: ~(self.masks[name] & new[name]) for name in new}
            zero_state_where(optimizer, self.params, stale)
        self.masks = {name: m.to(torch.bool) for name, m in new.items()}
        self._pruned = {}
        self._sparsity = overall_sparsity(self.masks, self.reduction)

    def _check_masks(self, masks: Mapping[str, torch.Tensor]) -> None:
        if set(masks) != set(self.params):
            missing = sorted(set(self.params) - set(masks))
            extra = sorted(set(masks) - set(self.params))
            raise ValueError(f"masks do not match the model's targets: missing {missing}, unexpected {extra}")
        bad = [
            f"{name}: mask {tuple(m.shape)} vs weight {tuple(distributed.local(self.params[name]).shape)}"
            for name, m in masks.items()
            if m.shape != distributed.local(self.params[name]).shape
        ]
        if bad:
            raise ValueError(f"mask shapes do not match the model: {bad}")

    # -- state for checkpoints ------------------------------------------------------------------
    def full_state_dict(self) -> dict[str, Any]:
        """``state_dict()`` with whole tensors (masks, per-weight counters) gathered from every rank.

        A collective under FSDP2 (every rank calls it, every rank gets the whole state); for the
        saved folder, which must read like an unsharded run's.
        """
        state = self.state_dict()
        if not self.sharded:
            return state
        return self._map_weight_tensors(state, lambda name, t: distributed.gather_rows(t, self.params[name]))

    def state_dict(self) -> dict[str, Any]:
        """Masks and method state; under FSDP2 this rank's rows (a per-rank resume file)."""
        return {
            "step": self.step,
            "started": self.started,
            "pending_update": self.pending_update,
            "update_count": self.update_count,
            "masks": {name: m.clone() for name, m in self.masks.items()},
            "method": self.method.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state; under FSDP2 whole tensors (an unsharded run's state) are cut to this rank's rows."""
        self.bind()
        if self.sharded:
            state = self._map_weight_tensors(state, self._local)
        masks = {name: torch.as_tensor(m).to(torch.bool) for name, m in state["masks"].items()}
        self._check_masks(masks)
        self.masks = {name: m.to(distributed.local(self.params[name]).device) for name, m in masks.items()}
        self._pruned = {}
        self._sparsity = overall_sparsity(self.masks, self.reduction)
        self.step = int(state["step"])
        self.started = bool(state["started"])
        self.pending_update = bool(state["pending_update"])
        self.update_count = int(state.get("update_count", 0))
        self.method.load_state_dict(state.get("method", {}))
        self.apply_masks()


def __getattr__(name: str) -> Any:
    """``hf_sparse.core.sparsifier.Sparsifier``, deprecated: the config-built engine is ``hf_sparse.Sparsifier``
    (one layer up, where the registry and the checkpoint readers are); ``MaskEngine`` is this module's class."""
    if name == "Sparsifier":
        import warnings

        from ..sparsifier import Sparsifier  # the one upward import, allowed for this alias in tests/test_layers.py

        warnings.warn("hf_sparse.core.sparsifier.Sparsifier is deprecated: use hf_sparse.Sparsifier",
                      DeprecationWarning, stacklevel=2)
        return Sparsifier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
