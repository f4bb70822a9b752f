"""Drop-and-grow dynamic sparse training: SET, RigL and DST-EE, one implementation.

Density stays constant; the connectivity changes. At every update step (``update_every``
steps from ``start`` to ``end``), in each layer independently:

1. drop ``k = round(f(t) * n_active)`` active weights with the smallest drop score (|w|);
2. grow exactly ``k`` weights that were inactive *before* this update (so a weight dropped now
   is never regrown in the same update), those with the largest grow score.

The three methods differ only in :meth:`DropAndGrow.grow_scores` (the JaxPruner layout):

- ``set``    (Mocanu et al. 2018): uniform random scores from the method's seeded generator.
- ``rigl``   (Evci et al. 2020): |g|, the dense gradient at the update step.
- ``dst_ee`` (Huang et al. 2023, "Dynamic Sparse Training via Balancing the
  Exploration-Exploitation Trade-off"): ``|g_i| + c * mean|g| * sqrt(ln(u + 1) / (N_i + eps))``.

Drop fraction ``f(t)`` decays over the update window ``p = (t - start) / (end - start)``:
cosine ``alpha/2 * (1 + cos(pi p))`` (RigL), linear ``alpha * (1 - p)`` or constant ``alpha``.

Grown weights are 0 (pruned weights are kept at exactly 0) and the engine zeroes their optimizer
state (``MaskEngine._set_masks`` zeroes state at pruned *and* regrown positions).

The tensor helpers (:func:`drop_fraction_at`, :func:`drop_and_grow_mask`, :func:`dst_ee_scores`)
are pure functions so other methods (e.g. cyclic sparsity, where drop and grow counts differ)
can reuse them; subclasses override the ``drop_scores`` / ``grow_scores`` / ``layer_counts`` hooks.

N:M patterns are not supported (``supports_nm = False``): an N:M mask fixes the count in every
group of M, so a grow must land in the group of its drop; that is a different algorithm.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Optional

import torch

from ..core.masks import all_kept, count_kept, numel, overall_sparsity, random_scores, topk_mask
from ..core.reduction import current as current_reduction
from .registry import register_method
from .base import Masks, PruningMethod

if TYPE_CHECKING:
    from ..config import SparsityConfig

logger = logging.getLogger(__name__)

DECAYS = ("cosine", "constant", "linear")
INITS = ("random", "magnitude")


# -- pure tensor helpers -------------------------------------------------------------------------
def drop_fraction_at(step: int, start: int, end: int, alpha: float, decay: str) -> float:
    """Fraction of active weights to drop at ``step``: ``alpha`` decayed over [start, end]."""
    if decay == "constant":
        return alpha
    progress = 1.0 if end <= start else min(1.0, max(0.0, (step - start) / (end - start)))
    if decay == "cosine":
        return alpha / 2.0 * (1.0 + math.cos(math.pi * progress))
    if decay == "linear":
        return alpha * (1.0 - progress)
    raise ValueError(f"drop_fraction_decay must be one of {DECAYS}, got {decay!r}")


def drop_and_grow_mask(
    mask: torch.Tensor,
    drop_scores: torch.Tensor,
    grow_scores: torch.Tensor,
    n_drop: int,
    n_grow: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Drop the ``n_drop`` lowest-scored active entries, grow the ``n_grow`` best inactive ones.

    Growth candidates are the entries inactive *before* the drop, so a dropped entry is never
    regrown in the same call. Counts are exact (``topk_mask`` breaks ties by position); asking for
    more than exist is an error. Returns ``(new_mask, dropped, grown)`` (bool, shaped like ``mask``).
    """
    mask = mask.to(torch.bool)
    n_active = count_kept(mask)
    n_inactive = numel(mask) - n_active
    if not 0 <= n_drop <= n_active:
        raise ValueError(f"n_drop={n_drop} outside [0, {n_active}] (active weights)")
    if not 0 <= n_grow <= n_inactive:
        raise ValueError(f"n_grow={n_grow} outside [0, {n_inactive}] (inactive weights)")
    # Keep the highest-scored active entries (inactive ones at -inf are never kept); grow among inactive.
    keep = topk_mask(drop_scores.float().masked_fill(~mask, float("-inf")), n_active - n_drop)
    keep &= mask
    grown = topk_mask(grow_scores.float().masked_fill(mask, float("-inf")), n_grow) & ~mask
    return keep | grown, mask & ~keep, grown


def dst_ee_scores(
    grad: torch.Tensor, active_counts: torch.Tensor, rounds: int, exploration: float, eps: float
) -> torch.Tensor:
    """DST-EE acquisition ``|g| + c * mean|g| * sqrt(ln(rounds + 1) / (N + eps))``.

    The bonus is scaled by the layer's mean |g| so ``c`` is unit-free: one default works across
    models, losses and gradient scales (AMP loss scaling, accumulation averaging, DDP averaging
    multiply every |g| alike and leave the ranking unchanged). ``rounds`` counts update intervals
    (the bandit's rounds, like ``N``), so the bonus does not depend on ``update_every``.
    """
    magnitude = grad.detach().abs().float()
    # mean over the whole tensor (all ranks' rows when sharded), summed in float64 so row chunks
    # summed per rank round to the same float32 as one sum
    reduction = current_reduction()
    total = reduction.sum_float(float(magnitude.double().sum()))
    scale = torch.tensor(total / max(reduction.sum_int(magnitude.numel()), 1), dtype=torch.float32)
    bonus = torch.sqrt(math.log(rounds + 1) / (active_counts.to(magnitude.device).float() + eps))
    return magnitude + exploration * scale * bonus


# -- method_args ---------------------------------------------------------------------------------
@dataclass
class DropAndGrowArgs:
    """``method_args`` shared by the drop-and-grow family."""

    drop_fraction: float = field(
        default=0.3, metadata={"help": "alpha: fraction of active weights dropped (and regrown) per update, in (0, 1)."}
    )
    drop_fraction_decay: str = field(
        default="cosine", metadata={"help": f"How the drop fraction decays from start to end: {DECAYS}."}
    )
    init: str = field(
        default="random",
        metadata={"help": "Initial mask inside each layer: 'random' (seeded) or 'magnitude' (top |w|, for pretrained models)."},
    )

    def __post_init__(self) -> None:
        frac = self.drop_fraction
        if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0.0 < frac < 1.0:
            raise ValueError(f"method_args.drop_fraction must be a number in (0, 1), got {frac!r}")
        if self.drop_fraction_decay not in DECAYS:
            raise ValueError(f"method_args.drop_fraction_decay must be one of {DECAYS}, got {self.drop_fraction_decay!r}")
        if self.init not in INITS:
            raise ValueError(f"method_args.init must be one of {INITS}, got {self.init!r}")


@dataclass
class DSTEEArgs(DropAndGrowArgs):
    """DST-EE adds the exploration coefficient ``c`` (relative to the layer's mean |g|)."""

    exploration: float = field(
        default=1.0,
        metadata={"help": "c >= 0: weight of the exploration bonus, in units of the layer's mean |gradient|; 0 = RigL."},
    )
    exploration_eps: float = field(
        default=1.0, metadata={"help": "eps > 0 in sqrt(ln t / (N + eps)): the bonus of a never-active weight."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        c = self.exploration
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not c >= 0 or math.isinf(c):
            raise ValueError(f"method_args.exploration must be a finite number >= 0, got {c!r}")
        eps = self.exploration_eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0 or math.isinf(eps):
            raise ValueError(f"method_args.exploration_eps must be a finite number > 0, got {eps!r}")


# -- the method family -------------------------------------------------------------------------
class DropAndGrow(PruningMethod):
    """Constant density; every update drops by |w| and grows by :meth:`grow_scores`."""

    Args = DropAndGrowArgs
    supports_nm = False
    needs_trainable_targets = True  # regrown weights must be able to train

    @classmethod
    def validate_config(cls, config: "SparsityConfig") -> None:
        super().validate_config(config)
        if config.initial_sparsity != 0.0:
            raise ValueError(
                f"method {cls.name!r} keeps density constant at `sparsity` from step 0; "
                f"initial_sparsity must be 0.0, got {config.initial_sparsity}"
            )

    def __init__(self, config: "SparsityConfig", targets: list) -> None:
        super().__init__(config, targets)
        self.last_logs: dict[str, float] = {}
        self.kept_sparsity: Optional[float] = None  # set when training starts from an already sparse model

    def target_sparsity(self, step: int) -> float:
        return self.config.sparsity if self.kept_sparsity is None else self.kept_sparsity

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.kept_sparsity is not None:
            state["kept_sparsity"] = self.kept_sparsity
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.kept_sparsity = float(state["kept_sparsity"]) if "kept_sparsity" in state else None

    # -- hooks ---------------------------------------------------------------------------------
    def drop_scores(self, name: str, weight: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Lower = dropped first. Magnitude, as in SET, RigL and DST-EE."""
        return weight.detach().abs()

    def grow_scores(
        self, name: str, weight: torch.Tensor, mask: torch.Tensor, grad: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """Higher = grown first (only inactive entries are considered)."""
        raise NotImplementedError

    def layer_counts(self, step: int, masks: Masks) -> dict[str, tuple[int, int]]:
        """(n_drop, n_grow) per layer: ``round(f(t) * n_active)`` each, capped by the inactive count."""
        assert self.updates is not None, "setup() first"
        fraction = drop_fraction_at(
            step, self.updates.start, self.updates.end, self.args.drop_fraction, self.args.drop_fraction_decay
        )
        counts = {}
        for name, mask in masks.items():
            n_active = count_kept(mask)
            k = min(int(round(fraction * n_active)), numel(mask) - n_active)
            counts[name] = (k, k)
        return counts

    # -- life cycle ----------------------------------------------------------------------------
    def init_masks(self, weights: Mapping[str, torch.Tensor], masks: Masks) -> Masks:
        """Masks at ``sparsity`` with the allocation's per-layer counts (random or by magnitude).

        A model that is already sparse (the engine passes its existing masks) keeps them: density
        stays where it is and only the connectivity changes from then on.
        """
        if not all_kept(masks):
            current = self.kept_sparsity = overall_sparsity(masks)
            logger.info("%s: starting from the model's existing masks (sparsity %.4f)", self.name, current)
            if abs(current - self.config.sparsity) > 1e-3:
                logger.warning(
                    "%s: the model is already %.2f%% sparse; keeping that density instead of sparsity=%s",
                    self.name, 100 * current, self.config.sparsity,
                )
            return masks
        magnitudes = {name: w.detach().abs().float() for name, w in weights.items()}
        counts = self.allocation.keep_counts(self.config.sparsity, magnitudes if self.allocation.kind == "global" else None)
        new = {}
        for target in self.targets:  # fixed order: the generator is consumed identically on every rank
            name = target.name
            if self.args.init == "magnitude":
                scores = magnitudes[name]
            else:
                scores = random_scores(magnitudes[name], self.generator)
            new[name] = topk_mask(scores, counts[name])
        return new

    @torch.no_grad()
    def update_masks(
        self,
        step: int,
        weights: Mapping[str, torch.Tensor],
        masks: Masks,
        grads: Optional[Mapping[str, torch.Tensor]] = None,
    ) -> Masks:
        self._require_gradients(grads)
        counts = self.layer_counts(step, masks)
        new: Masks = {}
        regrown = 0
        dropped_sum, dropped_n = 0.0, 0
        for target in self.targets:
            name = target.name
            mask, weight = masks[name], weights[name]
            n_drop, n_grow = counts[name]
            grad = grads.get(name) if grads is not None else None
            new[name], dropped, grown = drop_and_grow_mask(
                mask, self.drop_scores(name, weight, mask), self.grow_scores(name, weight, mask, grad), n_drop, n_grow
            )
            regrown += count_kept(grown)
            dropped_sum += current_reduction().sum_float(float(weight.detach().abs().float()[dropped].sum()))
            dropped_n += count_kept(dropped)
        self.last_logs = {
            "dst_regrown": float(regrown),
            "dst_dropped_mean_abs_w": dropped_sum / dropped_n if dropped_n else 0.0,
        }
        return new

    def update_logs(self) -> dict[str, float]:
        return dict(self.last_logs)

    def _require_gradients(self, grads: Optional[Mapping[str, torch.Tensor]]) -> None:
        if self.needs_gradients and grads is None:
            raise ValueError(
                f"method {self.name!r} grows by gradient: pass the dense gradients "
                "(Sparsifier.prepare_gradients(step) before clipping and optimizer.step())"
            )


@register_method("set")
class SET(DropAndGrow):
    """SET (Mocanu et al. 2018): drop smallest |w|, grow uniformly at random (seeded, same on every rank)."""

    summary = "constant density; drop smallest |w|, grow at random (seeded)"
    paper = "Mocanu et al. 2018, *Scalable training of artificial neural networks with adaptive sparse connectivity*"

    def grow_scores(self, name, weight, mask, grad):
        return random_scores(mask, self.generator)


@register_method("rigl")
class RigL(DropAndGrow):
    """RigL (Evci et al. 2020, "Rigging the Lottery"): drop smallest |w|, grow largest dense |g|."""

    summary = "constant density; drop smallest |w|, grow largest dense |gradient|"
    paper = "Evci et al. 2020, *Rigging the Lottery: Making All Tickets Winners*"

    needs_gradients = True

    def grow_scores(self, name, weight, mask, grad):
        return grad.detach().abs()


@register_method("dst_ee")
class DSTEE(DropAndGrow):
    """DST-EE (Huang et al. 2023): grow by ``|g_i| + c * mean|g| * sqrt(ln(u + 1) / (N_i + eps))``.

    ``N_i`` counts the update intervals weight ``i`` has been active and ``u`` the intervals so far
    (a UCB bandit over weights). The counters are updated from the masks the engine hands in (the
    synchronised ones), and saved in checkpoints.
    """

    Args = DSTEEArgs
    summary = "as RigL plus an exploration bonus for rarely active weights"
    paper = "Huang et al. 2023, *Dynamic Sparse Training via Balancing the Exploration-Exploitation Trade-off*"
    needs_gradients = True

    def __init__(self, config: "SparsityConfig", targets: list) -> None:
        super().__init__(config, targets)
        # Created at the first update, shaped like the masks (this rank's rows under FSDP2).
        self.active_counts: dict[str, torch.Tensor] = {}
        self.rounds = 0

    def update_masks(self, step, weights, masks, grads=None):
        self._require_gradients(grads)
        # The interval that ends now ran with ``masks``: count it before scoring.
        self.rounds += 1
        for name, mask in masks.items():
            counts = self.active_counts.get(name)
            if counts is None:
                counts = torch.zeros(mask.shape, dtype=torch.int32)
            if counts.device != mask.device:
                counts = counts.to(mask.device)
            self.active_counts[name] = counts + mask.to(torch.int32)
        new = super().update_masks(step, weights, masks, grads)
        explored = sum(count_kept((self.active_counts[n] > 0) | new[n].to(self.active_counts[n].device)) for n in new)
        total = sum(numel(m) for m in new.values())
        self.last_logs["dst_explored_fraction"] = explored / max(total, 1)
        return new

    def grow_scores(self, name, weight, mask, grad):
        return dst_ee_scores(grad, self.active_counts[name], self.rounds, self.args.exploration, self.args.exploration_eps)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["active_counts"] = {name: c.detach().cpu().clone() for name, c in self.active_counts.items()}
        state["rounds"] = self.rounds
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        if "active_counts" in state:
            loaded = {name: torch.as_tensor(c).to(torch.int32) for name, c in state["active_counts"].items()}
            names = {t.name for t in self.targets}
            if loaded and set(loaded) != names:
                raise ValueError(f"dst_ee state: counters for {sorted(loaded)} do not match the targets {sorted(names)}")
            self.active_counts = loaded
        self.rounds = int(state.get("rounds", 0))
