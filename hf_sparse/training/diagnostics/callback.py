"""``UnderTrainingCallback``: runs the diagnostics during training, logs the verdicts and warns loudly."""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional

from transformers import TrainerCallback

from .eval_chance import PredictionStats, eval_at_chance, watch_predictions
from .loss_curve import ChanceLevelVerdict, UnderTrainingVerdict, chance_level_verdict, undertraining_verdict
from .task_prior import _dataset_labels, chance_loss_of, classifier_labels, majority_rate, task_kind

logger = logging.getLogger(__name__)

NOT_LEARNING_ADVICE = (
    "try SparsityConfig(recipe='auto') (the sparse-aware recipe: longer schedule, LR rewinding, global "
    "allocation over the encoder only), a lower sparsity, distillation from the dense model "
    "(teacher_model=...), or another learning rate"
)
DENSE_NOT_LEARNING_ADVICE = "check the labels and the learning rate (too high or too low), or train longer"



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
