"""Under-training diagnostic: was the training loss still falling when the run ended?

The seed paper's central lesson: sparse models trained on dense recipes are under-trained. A
loss that still falls steeply over the last 10% of logged steps says "train longer" (a larger
``SparsityConfig.schedule_scale``). ``undertraining_verdict`` is a pure function of the Trainer's
``log_history``; ``UnderTrainingCallback`` runs it at the end of training.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

from scipy.stats import linregress
from transformers import TrainerCallback

logger = logging.getLogger(__name__)


@dataclass
class UnderTrainingVerdict:
    undertrained: Optional[bool]  # None: too few logged losses to tell
    slope: float  # loss change per optimizer step over the window (least squares)
    relative_drop: float  # fitted drop over the window / mean loss in the window
    p_value: float
    points: int
    window_steps: int

    def to_logs(self) -> dict[str, Any]:
        return {f"undertraining_{k}": v for k, v in asdict(self).items()}


def undertraining_verdict(
    log_history: Sequence[dict],
    tail_fraction: float = 0.1,
    min_points: int = 4,
    drop_threshold: float = 0.02,
    max_p_value: float = 0.05,
) -> UnderTrainingVerdict:
    """Fit a line to the training loss over the last ``tail_fraction`` of the logged steps.

    Under-trained when the fitted loss falls by more than ``drop_threshold`` (relative to the
    window's mean loss) across the window and the fall is significant (``p < max_p_value``).
    """
    if not 0 < tail_fraction <= 1:
        raise ValueError(f"tail_fraction must lie in (0, 1], got {tail_fraction}")
    points = [(e["step"], float(e["loss"])) for e in log_history if "loss" in e and "step" in e]
    if not points:
        return UnderTrainingVerdict(None, 0.0, 0.0, 1.0, 0, 0)
    last = points[-1][0]
    cutoff = last - tail_fraction * last
    window = [p for p in points if p[0] >= cutoff]
    if len(window) < min_points:
        window = points[-min_points:]
    steps = [p[0] for p in window]
    losses = [p[1] for p in window]
    span = steps[-1] - steps[0]
    if len(window) < min_points or span <= 0:
        return UnderTrainingVerdict(None, 0.0, 0.0, 1.0, len(window), span)
    fit = linregress(steps, losses)
    mean = sum(losses) / len(losses)
    drop = -fit.slope * span / mean if mean > 0 else 0.0
    verdict = bool(fit.slope < 0 and drop > drop_threshold and fit.pvalue < max_p_value)
    return UnderTrainingVerdict(verdict, float(fit.slope), float(drop), float(fit.pvalue), len(window), span)


class UnderTrainingCallback(TrainerCallback):
    """At the end of training: judge the loss curve, warn if still falling, store the verdict."""

    def __init__(self, tail_fraction: float = 0.1):
        self.tail_fraction = tail_fraction
        self.verdict: Optional[UnderTrainingVerdict] = None

    def on_train_end(self, args, state, control, **kwargs):
        self.verdict = undertraining_verdict(state.log_history, self.tail_fraction)
        entry = {"step": state.global_step, **self.verdict.to_logs()}
        state.log_history.append(entry)
        if self.verdict.undertrained:
            logger.warning(
                "training loss was still falling at the end (%.1f%% over the last %d steps, p=%.2g): the sparse "
                "model looks under-trained; train longer, e.g. SparsityConfig(schedule_scale=2 or 3) or more epochs.",
                100 * self.verdict.relative_drop,
                self.verdict.window_steps,
                self.verdict.p_value,
            )
        elif self.verdict.undertrained is None:
            logger.info("under-training diagnostic: too few logged losses (lower logging_steps to enable it)")
        else:
            logger.info("under-training diagnostic: training loss had flattened (%s)", self.verdict)
