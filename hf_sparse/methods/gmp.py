"""Gradual magnitude pruning and one-shot pruning."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional

import torch

from ..core.masks import magnitude_scores, overall_sparsity
from ..core.calibration import GradientRequest
from .criteria import CRITERIA, FISHER_ESTIMATES, FISHER_GRADIENTS, FreshFisherCriterion, make_criterion
from .recipe_defaults import recommend_schedule_scale
from .registry import register_method
from .schedules import ConstantSparsity, PolynomialSparsity, UpdateSteps
from .base import Masks, PruningMethod

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from ..config import SparsityConfig


@dataclass
class GMPArgs:
    initial_jump: Optional[float] = field(
        default=None,
        metadata={
            "help": "Sparsity reached at the first pruning step (e.g. 0.7), then cubic to the target "
            "(GMP*, Kurtic & Alistarh 2022). None: start the cubic ramp at initial_sparsity."
        },
    )
    criterion: str = field(
        default="magnitude",
        metadata={
            "help": "Which weights go first: 'magnitude' (smallest |w|) or 'fisher' (smallest w**2 * F, the diagonal "
            "Optimal Brain Surgeon saliency with F a running mean of squared gradients; the recipe's choice)."
        },
    )
    fisher_estimate: str = field(
        default="running",
        metadata={
            "help": "How the fisher criterion estimates F: 'running' (a mean of the squared gradients of every "
            "optimizer step, decay 0.999; no extra cost) or 'fresh' (oBERT: re-estimated right before each pruning "
            "step from fisher_batches new training batches on the current masked model, eval mode; costs that many "
            "extra forward/backward passes per pruning step; not under FSDP2)."
        },
    )
    fisher_batches: int = field(
        default=16,
        metadata={"help": "With fisher_estimate='fresh': how many training batches (m) each estimate uses."},
    )
    fisher_gradients: str = field(
        default="batch",
        metadata={
            "help": "With fisher_estimate='fresh': square each batch's gradient ('batch', oBERT) or each example's "
            "('example', the empirical Fisher; one forward/backward per example, batch_size times the passes)."
        },
    )


class MagnitudePruning(PruningMethod):
    """Prune the smallest |w| to the schedule's sparsity; pruned weights never come back.

    Starting masks that are already sparse (an already sparse model) are kept, and the schedule
    continues from their sparsity: ``initial_sparsity`` is raised to it.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.initial_sparsity = self.config.initial_sparsity  # raised when continuing from sparse masks
        self.start_sparsity = 0.0  # sparsity of the masks training starts from

    def sparsity_schedule(self):
        raise NotImplementedError

    def target_sparsity(self, step: int) -> float:
        if self.updates is None:
            return self.initial_sparsity
        last = self.updates.last_before(step)
        return self.sparsity_schedule()(last) if last is not None else self.start_sparsity

    def init_masks(self, weights: Mapping[str, torch.Tensor], masks: Masks) -> Masks:
        self.start_sparsity = overall_sparsity(masks)
        if self.start_sparsity > self.initial_sparsity:
            if self.start_sparsity > self.config.sparsity:
                logger.warning(
                    "%s: the model is already %.2f%% sparse, above sparsity=%.2f%%; pruned weights are not "
                    "regrown, so it stays at %.2f%%", self.name, 100 * self.start_sparsity,
                    100 * self.config.sparsity, 100 * self.start_sparsity,
                )
            self.initial_sparsity = min(self.start_sparsity, self.config.sparsity)
            logger.info(
                "%s: continuing from the current sparsity %.2f%% to %.2f%%", self.name,
                100 * self.start_sparsity, 100 * self.config.sparsity,
            )
        return self.update_masks(0, weights, masks) if self.is_update_step(0) else masks

    def scores(self, weights: Mapping[str, torch.Tensor], masks: Masks) -> dict[str, torch.Tensor]:
        """Lower = pruned first; pruned entries at -inf. Magnitude here; GMP lets ``criterion`` choose."""
        return magnitude_scores(weights, masks)

    def update_masks(
        self,
        step: int,
        weights: Mapping[str, torch.Tensor],
        masks: Masks,
        grads: Optional[Mapping[str, torch.Tensor]] = None,
    ) -> Masks:
        scores = self.scores(weights, masks)
        sparsity = self.sparsity_schedule()(step)
        new = self.allocation.masks(scores, sparsity, nm=self.config.nm)
        return {name: new[name] & masks[name] for name in masks}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "initial_sparsity": self.initial_sparsity, "start_sparsity": self.start_sparsity}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.initial_sparsity = float(state.get("initial_sparsity", self.config.initial_sparsity))
        self.start_sparsity = float(state.get("start_sparsity", 0.0))


@register_method("gmp")
class GMP(MagnitudePruning):
    """Gradual magnitude pruning, cubic schedule (Zhu & Gupta 2017, "To prune, or not to prune").

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t_end - t0))**3, pruning every ``update_every``
    steps between ``start`` (t0) and ``end`` (t_end); the mask is fixed after ``end``.
    ``method_args={"initial_jump": s_j}``: the first pruning step (t0) goes straight to s_j and
    the cubic runs from s_j (s_i = s_j above).
    """

    Args = GMPArgs
    summary = ("gradual pruning on a cubic schedule; `criterion` `magnitude` (smallest |w|) or `fisher` "
               "(smallest w² F, the recipe's choice)")
    paper = "Zhu & Gupta 2017, *To prune, or not to prune*; GMP*: Kurtic & Alistarh 2022"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.criterion = make_criterion(self._criterion_for_targets(), self.args.fisher_estimate,
                                        self.args.fisher_batches, self.args.fisher_gradients)
        if isinstance(self.criterion, FreshFisherCriterion):  # an instance value: the class runs under FSDP2
            self.fsdp_refusal = ("gmp's fisher_estimate='fresh' draws extra batches through the whole model before each "
                                 "pruning step, which is not implemented for sharded parameters; use "
                                 "fisher_estimate='running' (exact under FSDP2)")

    def _criterion_for_targets(self) -> str:
        """``fisher`` needs gradients: frozen targets (a LoRA base) refuse it, or drop the recipe's choice."""
        frozen = [t.name for t in self.targets if not t.param.requires_grad]
        if self.args.criterion != "fisher" or not frozen:
            return self.args.criterion
        if self.config.recipe_choices.get("criterion") != "fisher":
            raise ValueError(
                f"method 'gmp': criterion 'fisher' ranks weights by their gradients, but {len(frozen)} targets are "
                f"frozen (requires_grad=False, e.g. a LoRA base), first {frozen[0]!r}; use criterion 'magnitude'"
            )
        logger.info("gmp: %d targets are frozen (first %r): the recipe's criterion is magnitude, not fisher",
                    len(frozen), frozen[0])
        self.config.method_args = {**self.config.method_args, "criterion": "magnitude"}
        self.config.recipe_choices["criterion"] = "magnitude"
        self.args = self.parse_args(self.config.method_args)
        return "magnitude"

    @classmethod
    def validate_config(cls, config: "SparsityConfig") -> None:
        super().validate_config(config)
        criterion = cls.parse_args(config.method_args or {}).criterion
        if criterion not in CRITERIA:
            raise ValueError(f"method 'gmp': criterion must be one of {CRITERIA}, got {criterion!r}")
        args = cls.parse_args(config.method_args or {})
        if args.fisher_estimate not in FISHER_ESTIMATES:
            raise ValueError(f"method 'gmp': fisher_estimate must be one of {FISHER_ESTIMATES}, got {args.fisher_estimate!r}")
        if args.fisher_gradients not in FISHER_GRADIENTS:
            raise ValueError(f"method 'gmp': fisher_gradients must be one of {FISHER_GRADIENTS}, got {args.fisher_gradients!r}")
        if args.fisher_batches < 1:
            raise ValueError(f"method 'gmp': fisher_batches must be >= 1, got {args.fisher_batches}")
        if args.fisher_gradients != "batch" and args.fisher_estimate != "fresh":
            raise ValueError("method 'gmp': fisher_gradients='example' needs fisher_estimate='fresh' (the running "
                             "estimate sees only the optimizer's mini-batch gradients)")
        if (args.fisher_estimate != "running" or args.fisher_gradients != "batch") and criterion != "fisher":
            raise ValueError(f"method 'gmp': fisher_estimate/fisher_gradients apply to criterion 'fisher', got "
                             f"criterion {criterion!r}")
        jump = args.initial_jump
        if jump is None:
            return
        if isinstance(jump, bool) or not isinstance(jump, (int, float)):
            raise ValueError(f"method 'gmp': initial_jump must be a number or None, got {jump!r}")
        if not config.initial_sparsity <= jump <= config.sparsity:
            raise ValueError(
                f"method 'gmp': initial_jump must lie in [initial_sparsity, sparsity] = "
                f"[{config.initial_sparsity}, {config.sparsity}], got {jump}"
            )

    @classmethod
    def recipe_defaults(cls, config: "SparsityConfig") -> dict[str, Any]:
        """GMP's sparse-aware recipe (why each value: docs/finetuning.md).

        One global magnitude threshold (unstructured only), a longer run (``recommend_schedule_scale``),
        few mask updates (``update_every=None``) each followed by a linear LR rewinding cycle, and the
        ``fisher`` criterion (better than magnitude at 90% in the GLUE example). No ``initial_jump``: from a fine-tuned
        model the cubic ramp from 0 loses less at the first update.
        """
        return {
            "allocation": "global" if config.nm is None else "uniform",
            "schedule_scale": recommend_schedule_scale(config.sparsity),
            "lr_rewinding": "linear",
            "update_every": None,  # RECIPE_UPDATES over the ramp, whatever the run's length
            "method_args": {"criterion": "fisher"},
        }

    # -- the criterion ----------------------------------------------------------------------------
    @property
    def observes_gradients(self) -> bool:
        return self.criterion.observes_gradients

    def observe_gradients(self, grads: Mapping[str, torch.Tensor]) -> None:
        self.criterion.observe(grads)

    def fresh_gradients_wanted(self, step: int) -> Optional[GradientRequest]:
        """With ``fisher_estimate='fresh'``: the batches to estimate F from, chosen by the run's seed and ``step``."""
        if not isinstance(self.criterion, FreshFisherCriterion):
            return None
        return self.criterion.request(seed=self.config.seed * 1_000_003 + step)

    def observe_fresh_gradients(self, gradients: Iterable[Mapping[str, torch.Tensor]]) -> None:
        self.criterion.estimate(gradients)  # type: ignore[attr-defined]

    def scores(self, weights: Mapping[str, torch.Tensor], masks: Masks) -> dict[str, torch.Tensor]:
        return self.criterion.scores(weights, masks)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), **self.criterion.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.criterion.load_state_dict(state)

    def sparsity_schedule(self) -> PolynomialSparsity:
        assert self.updates is not None, "setup() first"
        jump = self.args.initial_jump  # raised, like initial_sparsity, when the model is already sparser
        initial = self.initial_sparsity if jump is None else max(float(jump), self.initial_sparsity)
        return PolynomialSparsity(initial, self.config.sparsity, self.updates.start, self.updates.end)


@register_method("oneshot")
class OneShot(MagnitudePruning):
    """Prune once to ``sparsity`` at ``start`` (magnitude), then keep the mask fixed."""

    summary = "prune once at `start` by magnitude, keep the mask"

    def setup(self, total_steps: int) -> None:
        super().setup(total_steps)
        assert self.updates is not None
        self.updates = UpdateSteps(self.updates.start, self.updates.start, 1)

    def sparsity_schedule(self) -> ConstantSparsity:
        return ConstantSparsity(self.config.sparsity)
