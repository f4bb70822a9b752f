"""Training diagnostics: is the model learning at all, and was it still learning when the run ended?

The central lesson of "Accurate Neural Network Pruning Requires Rethinking Sparse Optimization": sparse models trained on dense recipes are under-trained. Two
failure modes look alike in a loss curve and need opposite advice:

- **not learning**: a training loss at the loss of the label prior (a classifier that predicts the
  class frequencies: the entropy of the training labels' class distribution; a language model that
  predicts token frequencies: their unigram entropy, ln(vocab) when unknown; a regressor that
  predicts the mean: the labels' variance), or an evaluation no better than chance (accuracy at
  the majority rate, MCC or a correlation at 0, every prediction in one class). A flat loss here
  is a failure, never "flattened". The evaluation side holds whatever the training loss is, so it
  also judges a student trained by distillation.
- **under-trained**: a loss that still falls steeply over the last 10% of logged steps says "train
  longer" (a larger ``SparsityConfig.schedule_scale``).

``undertraining_verdict``, ``chance_level_verdict`` and ``eval_at_chance`` are pure functions;
``UnderTrainingCallback`` runs them during training. It is a plain ``TrainerCallback``: a dense
``transformers.Trainer`` uses it too (``callbacks=[diagnostics]`` with
``diagnostics = UnderTrainingCallback(sparse=False)``, and ``compute_metrics=diagnostics.watch(fn)``
for the prediction-distribution check).
``at_majority_rate(predictions, labels)`` marks benchmark rows that learned nothing.

One job per module: ``loss_curve`` (verdicts on the logged loss), ``task_prior`` (the chance level of a
task: label prior, majority rate), ``eval_chance`` (an evaluation at chance), ``callback`` (the Trainer side).
"""

from __future__ import annotations

from .callback import DENSE_NOT_LEARNING_ADVICE, NOT_LEARNING_ADVICE, UnderTrainingCallback
from .eval_chance import CORRELATION_TOLERANCE, ONE_CLASS_SHARE, PredictionStats, eval_at_chance, prediction_stats, watch_predictions
from .loss_curve import ChanceLevelVerdict, UnderTrainingVerdict, chance_level_verdict, undertraining_verdict
from .task_prior import (
    MAJORITY_TOLERANCE, at_majority_rate, chance_loss_of, classifier_labels, majority_rate, prior_entropy, task_kind,
)

__all__ = [
    "CORRELATION_TOLERANCE", "ChanceLevelVerdict", "DENSE_NOT_LEARNING_ADVICE", "MAJORITY_TOLERANCE", "NOT_LEARNING_ADVICE",
    "ONE_CLASS_SHARE", "PredictionStats", "UnderTrainingCallback", "UnderTrainingVerdict", "at_majority_rate",
    "chance_level_verdict", "chance_loss_of", "classifier_labels", "eval_at_chance", "majority_rate", "prediction_stats",
    "prior_entropy", "task_kind", "undertraining_verdict", "watch_predictions",
]
