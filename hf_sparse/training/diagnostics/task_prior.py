"""What "chance" is for a model's task: the loss of predicting the label prior, the majority rate, and
the labels read from a training set to compute them."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Iterable, Optional, Sequence

import numpy as np

#: Accuracy within this of the majority rate is "no better than always answering the majority".
MAJORITY_TOLERANCE = 0.01
_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForMaskedLM", "ForConditionalGeneration")


def prior_entropy(labels: Iterable[Any]) -> Optional[float]:
    """Entropy (nats) of the labels' class distribution: the cross-entropy of predicting the prior."""
    counts = Counter(labels)
    total = sum(counts.values())
    if not total:
        return None
    return float(-sum(c / total * math.log(c / total) for c in counts.values()))


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
