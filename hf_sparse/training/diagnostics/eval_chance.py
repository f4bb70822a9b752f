"""Whether an evaluation is no better than chance: its metrics at their chance values, or every
prediction in one class (read through a watched ``compute_metrics``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np

from .task_prior import MAJORITY_TOLERANCE, majority_rate

if TYPE_CHECKING:
    from .callback import UnderTrainingCallback

#: |MCC| or |correlation| below this is chance (a constant predictor gives exactly 0, or NaN).
CORRELATION_TOLERANCE = 0.02
#: Predictions with this share in one class: the model answers one class whatever the input.
ONE_CLASS_SHARE = 0.99
_CORRELATION_METRICS = ("matthews_correlation", "mcc", "pearson", "pearsonr", "spearman", "spearmanr")


@dataclass
class PredictionStats:
    """What the not-learning check reads from one evaluation's predictions (classifier outputs only)."""

    predicted_class_share: float  # share of the most predicted class; 1.0 = one answer for every example
    label_majority_rate: float  # accuracy of always answering the labels' majority class


def prediction_stats(eval_prediction: Any) -> Optional[PredictionStats]:
    """:class:`PredictionStats` of a Trainer ``EvalPrediction`` with one row of class scores per example (else None)."""
    try:
        raw = eval_prediction.predictions
        values = np.asarray(raw[0] if isinstance(raw, tuple) else raw)
        labels = np.asarray(eval_prediction.label_ids).reshape(-1)
    except (AttributeError, ValueError, TypeError):
        return None
    if values.ndim != 2 or values.shape[-1] < 2 or values.shape[0] != labels.size or labels.size == 0:
        return None
    predicted = values.argmax(-1)
    return PredictionStats(float(np.bincount(predicted).max() / predicted.size), majority_rate(labels.tolist()))


def watch_predictions(compute_metrics: Optional[Callable], callback: "UnderTrainingCallback") -> Optional[Callable]:
    """Wrap a Trainer's ``compute_metrics`` so ``callback`` sees each evaluation's prediction distribution.

    The metrics are returned unchanged (nothing is added to them or to the model card);
    :func:`prediction_stats` goes to ``callback.prediction_stats``, read by its ``on_evaluate``. None
    stays None (the Trainer then gathers no predictions at all).
    """
    if compute_metrics is None or getattr(compute_metrics, "_hf_sparse_watched_by", None) is callback:
        return compute_metrics

    def watched(eval_prediction: Any) -> Any:
        metrics = compute_metrics(eval_prediction)
        callback.prediction_stats = prediction_stats(eval_prediction)
        return metrics

    watched._hf_sparse_watched_by = callback  # type: ignore[attr-defined]
    return watched


def eval_at_chance(metrics: dict, majority: Optional[float] = None, stats: Optional[PredictionStats] = None) -> list[str]:
    """Why an evaluation is no better than chance (empty when it is better, or cannot be told).

    Not learning when the predictions collapse to one class (``stats`` from :func:`prediction_stats`),
    or when every metric with a known chance value is at it: accuracy at the majority rate
    (``majority``, else the rate in ``stats``), MCC / Pearson / Spearman at 0 (NaN: constant
    predictions). Other metrics (F1, MSE, a custom score) are not judged.
    """
    def value(name: str) -> Optional[float]:
        for key in (f"eval_{name}", name):
            if isinstance(metrics.get(key), (int, float)):
                return float(metrics[key])
        return None

    rate = majority if majority is not None else (stats.label_majority_rate if stats is not None else None)
    collapsed = stats is not None and stats.predicted_class_share >= ONE_CLASS_SHARE and stats.label_majority_rate < ONE_CLASS_SHARE
    reasons, judged = [], 0
    accuracy = value("accuracy")
    if accuracy is not None and rate is not None:
        judged += 1
        if accuracy <= rate + MAJORITY_TOLERANCE:
            reasons.append(f"accuracy {accuracy:.4f} is no better than always answering the majority class ({rate:.4f})")
    for name in _CORRELATION_METRICS:
        score = value(name)
        if score is None:
            continue
        judged += 1
        if math.isnan(score) or abs(score) <= CORRELATION_TOLERANCE:
            reasons.append(f"{name} {score:.4f} is at its chance value 0")
    if collapsed:
        return [f"{100 * stats.predicted_class_share:.1f}% of the predictions are one class"] + reasons
    return reasons if judged and len(reasons) == judged else []
