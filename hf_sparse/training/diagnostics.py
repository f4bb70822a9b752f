"""Training diagnostics: is the model learning at all, and was it still learning when the run ended?

The seed paper's central lesson: sparse models trained on dense recipes are under-trained. Two
failure modes look alike in a loss curve and need opposite advice:

- **not learning**: a classifier whose training loss sits at chance level, ln(num_labels) (it
  predicts the class prior), or whose eval accuracy is no better than always answering the majority
  class. A flat loss here is a failure, never "flattened".
- **under-trained**: a loss that still falls steeply over the last 10% of logged steps says "train
  longer" (a larger ``SparsityConfig.schedule_scale``).

``undertraining_verdict`` and ``chance_level_verdict`` are pure functions of the Trainer's
``log_history``; ``UnderTrainingCallback`` runs them at the end of training and after each evaluation.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Optional, Sequence

from scipy.stats import linregress
from transformers import TrainerCallback

logger = logging.getLogger(__name__)

NOT_LEARNING_ADVICE = (
    "try SparsityConfig(recipe='auto') (the sparse-aware recipe: longer schedule, LR rewinding, global "
    "allocation over the encoder only), a lower sparsity, distillation from the dense model "
    "(teacher_model=...), or another learning rate"
)


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
    """Whether a classifier's training loss ended at ln(num_labels), i.e. it learned nothing."""

    at_chance: Optional[bool]  # None: not a classifier, or no logged loss
    chance_loss: float  # ln(num_labels)
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
    num_labels: Optional[int],
    tail_fraction: float = 0.1,
    min_points: int = 2,
    tolerance: float = 0.03,
) -> ChanceLevelVerdict:
    """At chance when the mean training loss over the tail is within ``tolerance`` (relative) of ln(K).

    A cross-entropy at ln(K) is what a classifier gets by predicting the uniform prior; a model that
    has learned anything sits clearly below it. Above ln(K) it is worse than chance: also flagged.
    """
    if not num_labels or num_labels < 2:
        return ChanceLevelVerdict(None, 0.0, 0.0, 0)
    chance = math.log(num_labels)
    window = _loss_window(log_history, tail_fraction, min_points)
    if not window:
        return ChanceLevelVerdict(None, chance, 0.0, 0)
    tail = sum(p[1] for p in window) / len(window)
    return ChanceLevelVerdict(bool(tail >= chance * (1 - tolerance)), chance, tail, len(window))


def majority_rate(labels: Iterable[Any]) -> Optional[float]:
    """Share of the most frequent label: the accuracy of always answering it (None if no labels)."""
    counts = Counter(int(v) if hasattr(v, "__int__") else v for v in labels)
    total = sum(counts.values())
    return max(counts.values()) / total if total else None


def classifier_labels(model: Any) -> Optional[int]:
    """``num_labels`` of a single-label classifier (None for regression, multi-label or other models)."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "problem_type", None) in ("regression", "multi_label_classification"):
        return None
    num_labels = getattr(config, "num_labels", None)
    return int(num_labels) if isinstance(num_labels, int) and num_labels >= 2 else None


_MAX_ITEMS_READ = 50_000  # a map-style dataset without columns is read item by item: only small ones


def _dataset_labels(dataloader: Any) -> Optional[list]:
    """The eval labels, from a datasets.Dataset column or the items of a small map-style dataset."""
    dataset = getattr(dataloader, "dataset", None)
    names = getattr(dataset, "column_names", None)
    if names is not None:
        column = next((c for c in ("labels", "label") if c in names), None)
        return list(dataset[column]) if column else None
    try:
        size = len(dataset)
        if size > _MAX_ITEMS_READ:
            return None
        items = [dataset[i] for i in range(size)]
        return [int(item["labels"] if "labels" in item else item["label"]) for item in items]
    except (TypeError, KeyError, IndexError, ValueError):
        return None


class UnderTrainingCallback(TrainerCallback):
    """Judges the run: warns loudly when the model is not learning, or when it is still improving at the end.

    Verdicts go to ``state.log_history`` (``chance_*``, ``majority_*``, ``undertraining_*`` entries) and
    to ``self.warnings`` (one line each, for the model card).
    """

    def __init__(self, tail_fraction: float = 0.1):
        self.tail_fraction = tail_fraction
        self.verdict: Optional[UnderTrainingVerdict] = None
        self.chance: Optional[ChanceLevelVerdict] = None
        self.warnings: list[str] = []
        #: False when the training loss is not the task's cross-entropy (distillation): no chance-level test.
        self.loss_is_cross_entropy = True
        self._majority: Optional[tuple[Any, Optional[float]]] = None  # (eval dataset, its majority rate)

    def on_train_begin(self, args, state, control, **kwargs):
        self.warnings = []

    def on_evaluate(self, args, state, control, metrics=None, model=None, eval_dataloader=None, **kwargs):
        accuracy = (metrics or {}).get("eval_accuracy")
        if accuracy is None or classifier_labels(model) is None:
            return
        rate = self._majority_rate(eval_dataloader)
        if rate is None or accuracy > rate + 0.01:
            return
        state.log_history.append({"step": state.global_step, "majority_rate": rate, "majority_eval_accuracy": accuracy})
        message = (
            f"eval accuracy {accuracy:.4f} is no better than always answering the majority class ({rate:.4f}): "
            f"the model has not learned the task; {NOT_LEARNING_ADVICE}."
        )
        logger.warning(message)
        self._note(message)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        num_labels = classifier_labels(model) if self.loss_is_cross_entropy else None
        self.chance = chance_level_verdict(state.log_history, num_labels, self.tail_fraction)
        self.verdict = undertraining_verdict(state.log_history, self.tail_fraction)
        entry = {"step": state.global_step, **self.verdict.to_logs()}
        if self.chance.at_chance is not None:
            entry.update(self.chance.to_logs())
        state.log_history.append(entry)
        if self.chance.at_chance:
            message = (
                f"the training loss ended at chance level ({self.chance.tail_loss:.3f} vs ln(num_labels) = "
                f"{self.chance.chance_loss:.3f} over the last {self.chance.points} logged steps): the model is NOT "
                f"learning, it predicts the class prior; {NOT_LEARNING_ADVICE}."
            )
            logger.warning(message)
            self._note(message)
        elif self.verdict.undertrained:
            message = (
                f"training loss was still falling at the end ({100 * self.verdict.relative_drop:.1f}% over the last "
                f"{self.verdict.window_steps} steps, p={self.verdict.p_value:.2g}): the sparse model looks under-trained; "
                "train longer, e.g. SparsityConfig(schedule_scale=2 or 3) or more epochs."
            )
            logger.warning(message)
            self._note(message)
        elif self.verdict.undertrained is None:
            logger.info("under-training diagnostic: too few logged losses (lower logging_steps to enable it)")
        else:
            below = " below chance level" if self.chance.at_chance is False else ""
            logger.info("under-training diagnostic: training loss had flattened%s (%s)", below, self.verdict)

    def _majority_rate(self, eval_dataloader: Any) -> Optional[float]:
        """The eval set's majority rate, read once per eval set rather than at every evaluation."""
        dataset = getattr(eval_dataloader, "dataset", None)
        if self._majority is None or self._majority[0] is not dataset:
            labels = _dataset_labels(eval_dataloader)
            self._majority = (dataset, majority_rate(labels) if labels else None)
        return self._majority[1]

    def _note(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)
