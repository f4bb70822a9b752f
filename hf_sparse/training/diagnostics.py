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
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
from scipy.stats import linregress
from transformers import TrainerCallback

logger = logging.getLogger(__name__)

NOT_LEARNING_ADVICE = (
    "try SparsityConfig(recipe='auto') (the sparse-aware recipe: longer schedule, LR rewinding, global "
    "allocation over the encoder only), a lower sparsity, distillation from the dense model "
    "(teacher_model=...), or another learning rate"
)
DENSE_NOT_LEARNING_ADVICE = "check the labels and the learning rate (too high or too low), or train longer"

#: Accuracy within this of the majority rate is "no better than always answering the majority".
MAJORITY_TOLERANCE = 0.01
#: |MCC| or |correlation| below this is chance (a constant predictor gives exactly 0, or NaN).
CORRELATION_TOLERANCE = 0.02
#: Predictions with this share in one class: the model answers one class whatever the input.
ONE_CLASS_SHARE = 0.99
_CORRELATION_METRICS = ("matthews_correlation", "mcc", "pearson", "pearsonr", "spearman", "spearmanr")
_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForMaskedLM", "ForConditionalGeneration")


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


def prior_entropy(labels: Iterable[Any]) -> Optional[float]:
    """Entropy (nats) of the labels' class distribution: the cross-entropy of predicting the prior."""
    counts = Counter(labels)
    total = sum(counts.values())
    if not total:
        return None
    return float(-sum(c / total * math.log(c / total) for c in counts.values()))


def _flat_labels(labels: Iterable[Any]) -> Iterable[Any]:
    """One label per scored position: per-token label lists are flattened, ignored positions (-100) skipped."""
    for value in labels:
        if isinstance(value, (list, tuple)) or getattr(value, "ndim", 0) > 0:
            yield from _flat_labels(value.reshape(-1).tolist() if hasattr(value, "reshape") else value)
        elif value != -100:
            yield value


def majority_rate(labels: Iterable[Any]) -> Optional[float]:
    """Share of the most frequent label: the accuracy of always answering it (None if no labels).

    Per-token labels (a list per example, -100 where a position is not scored) count token by token.
    """
    counts = Counter(int(v) if hasattr(v, "__int__") else v for v in _flat_labels(labels))
    total = sum(counts.values())
    return max(counts.values()) / total if total else None


def at_majority_rate(predictions: Any, labels: Any, tolerance: float = MAJORITY_TOLERANCE) -> bool:
    """Whether ``predictions`` (class ids shaped like ``labels``, or logits with one more dimension) score no better than always answering the
    majority class of ``labels``: accuracy <= majority rate + ``tolerance``. For benchmark tables:
    such a row has learned nothing, whatever its other figures. Labels -100 (ignored tokens) are skipped."""
    truth = np.asarray(labels)
    predicted = np.asarray(predictions[0] if isinstance(predictions, tuple) else predictions)
    if predicted.ndim == truth.ndim + 1:  # logits: one score per class
        predicted = predicted.argmax(-1)
    predicted, truth = predicted.reshape(-1), truth.reshape(-1)
    if predicted.shape != truth.shape or truth.size == 0:
        raise ValueError(f"predictions ({predicted.shape}) and labels ({truth.shape}) must give one class per example")
    scored = truth != -100  # positions a token task ignores
    predicted, truth = predicted[scored], truth[scored]
    rate = majority_rate(truth.tolist())
    return bool(float((predicted == truth).mean()) <= rate + tolerance)


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


def task_kind(model: Any) -> Optional[str]:
    """``"classification"``, ``"regression"``, ``"language_model"`` or None (a model without a known head)."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    if type(model).__name__.endswith(_LM_SUFFIXES):
        return "language_model"
    problem = getattr(config, "problem_type", None)
    num_labels = getattr(config, "num_labels", None)
    if problem == "multi_label_classification":
        return None
    if problem == "regression" or num_labels == 1:
        return "regression"
    return "classification" if isinstance(num_labels, int) and num_labels >= 2 else None


def classifier_labels(model: Any) -> Optional[int]:
    """``num_labels`` of a single-label classifier (None for regression, multi-label, language or other models)."""
    if task_kind(model) != "classification":
        return None
    return int(model.config.num_labels)


def _vocab_size(model: Any) -> Optional[int]:
    config = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    size = getattr(text, "vocab_size", None)
    return int(size) if isinstance(size, int) and size >= 2 else None


def chance_loss_of(model: Any, labels: Optional[Sequence[Any]]) -> Optional[float]:
    """The training loss of a model that learned only the label prior, for ``model``'s task.

    Classifier: the entropy of the training labels' classes (ln(num_labels) without labels). Language
    model: the unigram entropy of the training tokens (ln(vocab_size) without them). Regression (MSE):
    the variance of the training labels. None when the task is unknown.
    """
    kind = task_kind(model)
    if kind == "classification":
        return prior_entropy(labels) if labels else math.log(model.config.num_labels)
    if kind == "language_model":
        if labels:
            return prior_entropy(labels)
        vocab = _vocab_size(model)
        return math.log(vocab) if vocab else None
    if kind == "regression" and labels:
        values = np.asarray(labels, dtype=np.float64)
        return float(values.var()) if values.size > 1 else None
    return None


#: Labels are read from at most this many examples, spread evenly over the dataset (a sorted dataset's
#: head would give a wrong prior): the prior of a sample, in well under a second for most datasets.
_MAX_ITEMS_READ = 10_000


def _flat_labels(values: Iterable[Any]) -> list:
    """Label values flattened (a label per token for token tasks and LMs), ignored positions (-100) dropped."""
    out: list = []
    for value in values:
        array = np.asarray(value.detach().cpu() if hasattr(value, "detach") else value).reshape(-1)
        out.extend(v for v in array.tolist() if v != -100)
    return out


def _dataset_labels(dataloader: Any, columns: Sequence[str] = ("labels", "label")) -> Optional[list]:
    """Labels of the dataset behind ``dataloader`` (all, or ``_MAX_ITEMS_READ`` evenly spaced examples), flattened."""
    dataset = getattr(dataloader, "dataset", None)
    if dataset is None:
        return None
    names = getattr(dataset, "column_names", None)
    try:
        size = len(dataset)
        indices = range(0, size, max(1, -(-size // _MAX_ITEMS_READ)))
        if names is not None:
            column = next((c for c in columns if c in names), None)
            if column is None:
                return None
            return _flat_labels((dataset.select(indices) if len(indices) < size else dataset)[column])
        values = []
        for i in indices:
            item = dataset[i]
            column = next((c for c in columns if c in item), None)
            if column is None:
                return None
            values.append(item[column])
        return _flat_labels(values)
    except (TypeError, KeyError, IndexError, ValueError, AttributeError):
        return None


class UnderTrainingCallback(TrainerCallback):
    """Judges the run: warns loudly when the model is not learning, or when it is still improving at the end.

    Verdicts go to ``state.log_history`` (``chance_*``, ``majority_*``, ``not_learning_*``,
    ``undertraining_*`` entries) and to ``self.warnings`` (one line each, for the model card).
    A plain ``transformers.Trainer`` can use it as is; ``sparse=False`` gives advice for a dense run.
    """

    def __init__(self, tail_fraction: float = 0.1, sparse: bool = True):
        self.tail_fraction = tail_fraction
        self.advice = NOT_LEARNING_ADVICE if sparse else DENSE_NOT_LEARNING_ADVICE
        self.verdict: Optional[UnderTrainingVerdict] = None
        self.chance: Optional[ChanceLevelVerdict] = None
        self.warnings: list[str] = []
        #: False when the training loss is not the task's loss (distillation): the train-side test is off,
        #: the eval-side test still judges the student.
        self.loss_is_cross_entropy = True
        #: Why the last evaluation was at chance (empty: it was not, or there was none).
        self.eval_not_learning: list[str] = []
        #: The prediction distribution of the evaluation in progress (set by a watched ``compute_metrics``).
        self.prediction_stats: Optional[PredictionStats] = None
        self._chance_loss: Optional[float] = None
        self._majority: Optional[tuple[Any, Optional[float]]] = None  # (eval dataset, its majority rate)

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        self.warnings = []
        self.eval_not_learning = []
        kind = task_kind(model)
        columns = ("labels", "label") if kind != "language_model" else ("labels", "label", "input_ids")
        labels = _dataset_labels(train_dataloader, columns) if kind is not None else None
        self._chance_loss = chance_loss_of(model, labels)

    def watch(self, compute_metrics: Optional[Callable]) -> Optional[Callable]:
        """``compute_metrics`` wrapped so this callback sees the predictions (:func:`watch_predictions`)."""
        return watch_predictions(compute_metrics, self)

    def on_evaluate(self, args, state, control, metrics=None, model=None, eval_dataloader=None, **kwargs):
        metrics = metrics or {}
        stats, self.prediction_stats = self.prediction_stats, None  # this evaluation's, if compute_metrics is watched
        rate = stats.label_majority_rate if stats is not None else None
        if rate is None and "eval_accuracy" in metrics and classifier_labels(model) is not None:
            rate = self._majority_rate(eval_dataloader)
        reasons = eval_at_chance(metrics, rate, stats)
        self.eval_not_learning = reasons
        if not reasons:
            return
        entry: dict[str, Any] = {"step": state.global_step, "not_learning_eval": True}
        if rate is not None:
            entry.update(majority_rate=rate, majority_eval_accuracy=metrics.get("eval_accuracy"))
        if stats is not None:
            entry["predicted_class_share"] = stats.predicted_class_share
        state.log_history.append(entry)
        message = f"evaluation at chance: {'; '.join(reasons)}: the model has not learned the task; {self.advice}."
        logger.warning(message)
        self._note(message)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        chance_loss = self._chance_loss if self.loss_is_cross_entropy else None
        self.chance = chance_level_verdict(state.log_history, chance_loss, self.tail_fraction)
        self.verdict = undertraining_verdict(state.log_history, self.tail_fraction)
        entry = {"step": state.global_step, **self.verdict.to_logs()}
        if self.chance.at_chance is not None:
            entry.update(self.chance.to_logs())
        entry["not_learning"] = bool(self.chance.at_chance or self.eval_not_learning)
        state.log_history.append(entry)
        if self.chance.at_chance:
            message = (
                f"the training loss ended at chance level ({self.chance.tail_loss:.3f} vs {self.chance.chance_loss:.3f}, "
                f"the loss of predicting the training labels' prior, over the last {self.chance.points} logged steps): "
                f"the model is NOT learning; {self.advice}."
            )
            logger.warning(message)
            self._note(message)
        elif self.eval_not_learning:
            logger.warning("the model is NOT learning: its last evaluation was at chance (%s), whatever its training "
                           "loss; %s.", "; ".join(self.eval_not_learning), self.advice)
            self._note(f"the model is NOT learning: its last evaluation was at chance ({'; '.join(self.eval_not_learning)}).")
        elif self.verdict.undertrained:
            message = (
                f"training loss was still falling at the end ({100 * self.verdict.relative_drop:.1f}% over the last "
                f"{self.verdict.window_steps} steps, p={self.verdict.p_value:.2g}): the model looks under-trained; "
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
