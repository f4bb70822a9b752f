"""Judgments of the logged training loss: still falling at the end (under-trained), or at the loss of
the label prior (not learning). Pure functions of ``state.log_history``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

from scipy.stats import linregress


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


@dataclass
class ChanceLevelVerdict:
    """Whether the training loss ended at the loss of the label prior, i.e. the model learned nothing."""

    at_chance: Optional[bool]  # None: no chance level known (no labels, not a known task), or no logged loss
    chance_loss: float  # the prior's loss: label entropy (classifier), unigram entropy (LM), label variance (regression)
    tail_loss: float  # mean training loss over the window
    points: int

    def to_logs(self) -> dict[str, Any]:
        return {f"chance_{k}": v for k, v in asdict(self).items()}


def _loss_window(log_history: Sequence[dict], tail_fraction: float, min_points: int) -> list[tuple[int, float]]:
    points = [(e["step"], float(e["loss"])) for e in log_history if "loss" in e and "step" in e]
    if not points:
        return []
    last = points[-1][0]
    cutoff = last - tail_fraction * last
    window = [p for p in points if p[0] >= cutoff]
    return window if len(window) >= min_points else points[-min_points:]


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
    window = _loss_window(log_history, tail_fraction, min_points)
    if not window:
        return UnderTrainingVerdict(None, 0.0, 0.0, 1.0, 0, 0)
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


def chance_level_verdict(
    log_history: Sequence[dict],
    chance_loss: Optional[float],
    tail_fraction: float = 0.1,
    min_points: int = 2,
    tolerance: float = 0.03,
) -> ChanceLevelVerdict:
    """At chance when the mean training loss over the tail is within ``tolerance`` (relative) of ``chance_loss``.

    ``chance_loss`` is what a model gets by predicting the label prior (:func:`chance_loss_of`);
    a model that has learned anything sits clearly below it. Above it is worse than chance: also flagged.
    """
    if chance_loss is None or not chance_loss > 0:
        return ChanceLevelVerdict(None, 0.0, 0.0, 0)
    window = _loss_window(log_history, tail_fraction, min_points)
    if not window:
        return ChanceLevelVerdict(None, chance_loss, 0.0, 0)
    tail = sum(p[1] for p in window) / len(window)
    return ChanceLevelVerdict(bool(tail >= chance_loss * (1 - tolerance)), chance_loss, tail, len(window))
