"""GLUE task definitions and their standard metrics, computed offline with scikit-learn/scipy.

``evaluate.load("glue", task)`` fetches a hub-hosted script and fails offline; these are the
same definitions (the GLUE metric script calls the same sklearn/scipy functions):
cola Matthews correlation; sst2, mnli (matched and mismatched), qnli, rte, wnli accuracy;
mrpc, qqp accuracy and binary F1 (positive class 1); stsb Pearson and Spearman correlation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef


def accuracy(preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"accuracy": float(accuracy_score(labels, preds))}


def accuracy_and_f1(preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"accuracy": float(accuracy_score(labels, preds)), "f1": float(f1_score(labels, preds, pos_label=1))}


def matthews(preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"matthews_correlation": float(matthews_corrcoef(labels, preds))}


def pearson_and_spearman(preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    preds, labels = np.asarray(preds, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    return {"pearson": float(pearsonr(preds, labels)[0]), "spearmanr": float(spearmanr(preds, labels)[0])}


def regression(preds: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Metrics for a custom regression file: MSE plus the STS-B correlations."""
    preds, labels = np.asarray(preds, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    return {"mse": float(np.mean((preds - labels) ** 2)), **pearson_and_spearman(preds, labels)}


@dataclass(frozen=True)
class GlueTask:
    """What run.py needs to know about a task: its text columns, labels, metric and eval splits."""

    name: str
    text_columns: tuple[str, Optional[str]]
    num_labels: int
    metric: Callable[[np.ndarray, np.ndarray], dict[str, float]]
    eval_splits: tuple[str, ...] = ("validation",)

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1


GLUE_TASKS: dict[str, GlueTask] = {
    "cola": GlueTask("cola", ("sentence", None), 2, matthews),
    "sst2": GlueTask("sst2", ("sentence", None), 2, accuracy),
    "mrpc": GlueTask("mrpc", ("sentence1", "sentence2"), 2, accuracy_and_f1),
    "qqp": GlueTask("qqp", ("question1", "question2"), 2, accuracy_and_f1),
    "stsb": GlueTask("stsb", ("sentence1", "sentence2"), 1, pearson_and_spearman),
    "mnli": GlueTask(
        "mnli", ("premise", "hypothesis"), 3, accuracy, ("validation_matched", "validation_mismatched")
    ),
    "qnli": GlueTask("qnli", ("question", "sentence"), 2, accuracy),
    "rte": GlueTask("rte", ("sentence1", "sentence2"), 2, accuracy),
    "wnli": GlueTask("wnli", ("sentence1", "sentence2"), 2, accuracy),
}


def get_task(name: str) -> GlueTask:
    """The GlueTask called ``name`` (case-insensitive), with a clear error for an unknown one."""
    key = name.lower().replace("-", "")
    if key not in GLUE_TASKS:
        raise ValueError(f"unknown task_name {name!r}; choose one of {sorted(GLUE_TASKS)}")
    return GLUE_TASKS[key]


def custom_task(text_columns: Sequence[str], num_labels: int) -> GlueTask:
    """A task for local files: accuracy for classification, MSE + correlations for regression."""
    cols = tuple(text_columns) + (None,) * (2 - len(text_columns))
    return GlueTask("custom", (cols[0], cols[1]), num_labels, regression if num_labels == 1 else accuracy)


def predictions_to_labels(predictions: np.ndarray, is_regression: bool) -> np.ndarray:
    """Logits -> class ids (argmax), or the squeezed scores for a regression head."""
    predictions = predictions[0] if isinstance(predictions, tuple) else predictions
    return np.squeeze(predictions) if is_regression else np.argmax(predictions, axis=1)


def make_compute_metrics(task: GlueTask) -> Callable:
    """A ``compute_metrics`` for the Trainer: EvalPrediction -> the task's metrics."""

    def compute_metrics(eval_prediction) -> dict[str, float]:
        preds = predictions_to_labels(eval_prediction.predictions, task.is_regression)
        result = task.metric(preds, np.asarray(eval_prediction.label_ids))
        if len(result) > 1 and task.name != "custom":
            result["combined_score"] = float(np.mean(list(result.values())))
        return result

    return compute_metrics
