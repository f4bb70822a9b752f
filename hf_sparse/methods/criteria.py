"""Pruning criteria: how much each weight matters, for methods that remove the least important ones.

``magnitude`` is |w|. ``fisher`` is the diagonal Optimal Brain Surgeon saliency: removing weight i
raises the loss by about w_i**2 * F_ii / 2, with F the empirical Fisher (the mean of squared
gradients). oBERT (Kurtic et al. 2022) uses blocks of the inverse Fisher; the diagonal is its block
size 1. Two estimates of F:

- ``running`` (``FisherCriterion``): a running mean of the squared gradients of every optimizer step
  (decay ``FISHER_DECAY``); free (no extra forward pass), one tensor the size of one Adam moment, but it
  mixes gradients from before earlier pruning steps;
- ``fresh`` (``FreshFisherCriterion``, oBERT's): re-estimated right before each pruning step from m
  fresh gradients of the current masked model (``hf_sparse.core.calibration``), either of m mini-batches
  (oBERT's) or of every example of them (the empirical Fisher proper). Cost per pruning step: m extra
  forward/backward passes of a mini-batch (per example: m * batch_size passes of one example each).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Iterable, Mapping

import torch

from ..core.calibration import GradientRequest
from ..core.masks import magnitude_scores, masked_scores

logger = logging.getLogger(__name__)

CRITERIA = ("magnitude", "fisher")
#: How F is estimated: a running mean over optimizer steps, or fresh gradients right before each pruning step.
FISHER_ESTIMATES = ("running", "fresh")
#: Which gradients a fresh F squares: mini-batch gradients (oBERT) or per-example ones (the empirical Fisher).
FISHER_GRADIENTS = ("batch", "example")
#: Decay of the running mean of squared gradients: Adam's default beta2, whose second moment is
#: the estimate the recipe was measured with.
FISHER_DECAY = 0.999
#: Added to F before the square root: weights that never had a gradient rank by magnitude.
_TIE_BREAK = 1e-30


class MagnitudeCriterion:
    """|w|: needs nothing but the weights."""

    name: ClassVar[str] = "magnitude"
    observes_gradients: ClassVar[bool] = False

    def observe(self, grads: Mapping[str, torch.Tensor]) -> None:
        pass

    def scores(self, weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return magnitude_scores(weights, masks)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


class FisherCriterion(MagnitudeCriterion):
    """|w| * sqrt(F): ranks weights exactly as the diagonal OBS saliency w**2 * F / 2.

    F is an exponential moving average (decay ``FISHER_DECAY``) of the squared gradients the optimizer
    used (clipped, zero where pruned), fed after every optimizer step. Before the first step (an update
    at step 0) the scores are magnitudes; so they are, with a warning, while some target has never had
    a gradient (a layer the forward pass does not use). Frozen targets are refused earlier (``GMP``).
    """

    name: ClassVar[str] = "fisher"
    observes_gradients: ClassVar[bool] = True

    def __init__(self) -> None:
        self.fisher: dict[str, torch.Tensor] = {}
        self._warned = False

    @torch.no_grad()
    def observe(self, grads: Mapping[str, torch.Tensor]) -> None:
        for name, grad in grads.items():
            grad = grad.detach()
            average = self.fisher.get(name)
            if average is None:  # fused below: no squared-gradient temporary on the per-step path
                average = self.fisher[name] = torch.zeros_like(grad, dtype=torch.float32)
            elif average.shape != grad.shape:
                raise ValueError(f"criterion 'fisher': {name} has a gradient of shape {tuple(grad.shape)} but a "
                                 f"running mean of shape {tuple(average.shape)} (a state from another model?)")
            elif average.device != grad.device:
                average = self.fisher[name] = average.to(grad.device)
            average.mul_(FISHER_DECAY).addcmul_(grad, grad, value=1 - FISHER_DECAY)

    @torch.no_grad()
    def scores(self, weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if not self.fisher:  # an update before the first optimizer step (e.g. initial_sparsity at step 0)
            logger.info("criterion 'fisher': no optimizer step yet, this update ranks by magnitude")
            return super().scores(weights, masks)
        missing = [name for name in weights if name not in self.fisher]
        if missing:
            if not self._warned:
                logger.warning(
                    "criterion 'fisher': %d of %d targets never had a gradient (first: %r; not used in the forward "
                    "pass?): updates rank every target by magnitude", len(missing), len(weights), missing[0],
                )
                self._warned = True
            return super().scores(weights, masks)
        return {
            name: masked_scores(w.detach().float().abs() * (self.fisher[name].to(w.device) + _TIE_BREAK).sqrt(), masks[name])
            for name, w in weights.items()
        }

    def state_dict(self) -> dict[str, Any]:
        return {"fisher": {name: f.clone() for name, f in self.fisher.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.fisher = {name: torch.as_tensor(f).float().clone() for name, f in state.get("fisher", {}).items()}


class FreshFisherCriterion(FisherCriterion):
    """|w| * sqrt(F) with F = (1/m) * sum_j g_j**2 over m fresh gradients of the current masked model.

    ``request(seed)`` says which gradients to fetch right before a pruning step (``batches`` training
    batches, each one gradient, or one per example with ``per_example``); ``estimate`` turns them into
    F; ``scores`` uses it once and drops it, so no pruning step reuses another's estimate and nothing
    is kept in checkpoints.
    """

    observes_gradients: ClassVar[bool] = False

    def __init__(self, batches: int, per_example: bool = False) -> None:
        super().__init__()
        self.batches = batches
        self.per_example = per_example
        #: How many gradients the last estimate averaged (m), for logs and tests.
        self.last_count = 0

    def request(self, seed: int) -> GradientRequest:
        return GradientRequest(self.batches, self.per_example, seed)

    @torch.no_grad()
    def estimate(self, gradients: Iterable[Mapping[str, torch.Tensor]]) -> None:
        """F = the mean of the squared gradients given (all of them: one pass, summed in float32)."""
        sums: dict[str, torch.Tensor] = {}
        count = 0
        for grads in gradients:
            count += 1
            for name, grad in grads.items():
                total = sums.get(name)
                if total is None:
                    total = sums[name] = torch.zeros_like(grad, dtype=torch.float32)
                total.addcmul_(grad, grad)
        self.fisher = {name: total.div_(count) for name, total in sums.items()}
        self.last_count = count

    def observe(self, grads: Mapping[str, torch.Tensor]) -> None:
        pass  # optimizer-step gradients are not used: F comes from ``estimate`` only

    def scores(self, weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        try:
            return super().scores(weights, masks)
        finally:
            self.fisher = {}  # used once: the next pruning step estimates its own

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.fisher = {}


def make_criterion(name: str, fisher_estimate: str = "running", fisher_batches: int = 16,
                   fisher_gradients: str = "batch") -> MagnitudeCriterion:
    if name == "magnitude":
        return MagnitudeCriterion()
    if name == "fisher":
        if fisher_estimate == "running":
            return FisherCriterion()
        if fisher_estimate == "fresh":
            return FreshFisherCriterion(fisher_batches, per_example=fisher_gradients == "example")
        raise ValueError(f"fisher_estimate must be one of {FISHER_ESTIMATES}, got {fisher_estimate!r}")
    raise ValueError(f"criterion must be one of {CRITERIA}, got {name!r}")
