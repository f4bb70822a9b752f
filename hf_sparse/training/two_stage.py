"""Fine-tune dense, then prune a copy while distilling from it: the flow that makes sparse accuracy.

Pruning a model already fine-tuned on the task, with that model as the teacher, is how oBERT and
GMP* reach their accuracy at high sparsity; pruning a pretrained model during fine-tuning loses
more. ``train_dense_then_sparse`` runs both stages for any model, task and dataset the Trainer
takes:

1. **dense**: a plain ``transformers.Trainer`` with your ``TrainingArguments``, saved to
   ``OUTPUT_DIR/dense_teacher`` and evaluated (it is the ``sparsity=0`` run: the dense reference);
   or an existing dense model (``dense_model=folder``), evaluated only;
2. **sparse**: a copy of the dense model, pruned by ``SparseTrainer`` while it distils from the dense
   model (``distill=False``: no teacher), for the recipe's length (``SparsityConfig.schedule_scale``
   times the dense run) or ``sparse_schedule_scale`` times, saved to ``OUTPUT_DIR``.

At ``sparsity=0`` the second stage is a dense continuation of the same length, with or without
self-distillation: the budget-matched dense reference a sparse result must be compared with.
``train_stage`` runs one stage (either trainer) and is what both stages use.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from transformers import Trainer, TrainingArguments

from ..config import SparsityConfig
from .diagnostics import UnderTrainingCallback
from .distill import DistillationConfig
from .trainer import SparseTrainer

logger = logging.getLogger(__name__)

#: Where the dense stage is saved, inside the run's output folder.
DENSE_FOLDER = "dense_teacher"

ModelOrPath = Union[torch.nn.Module, str, os.PathLike]


@dataclass
class StageResult:
    """One stage: its metrics (``train_*`` and ``eval_*`` as the Trainer names them), folder and trainer."""

    metrics: dict[str, Any]
    output_dir: str
    trainer: Trainer

    @property
    def model(self) -> torch.nn.Module:
        return self.trainer.model


@dataclass
class TwoStageResult:
    """Both stages. ``dense.metrics`` holds no ``train_*`` keys when the dense model was reused."""

    dense: StageResult
    sparse: StageResult

    def gap(self, metric: str = "eval_accuracy") -> float:
        """``dense - sparse`` for ``metric`` (in the metric's units: x100 for points of accuracy)."""
        for stage in (self.dense, self.sparse):
            if metric not in stage.metrics:
                raise KeyError(f"{metric!r} not in the {stage.output_dir} metrics: {sorted(stage.metrics)}")
        return self.dense.metrics[metric] - self.sparse.metrics[metric]


def load_model(model: ModelOrPath, auto_class: Any = None, like: Optional[torch.nn.Module] = None,
               load_kwargs: Optional[dict] = None) -> torch.nn.Module:
    """A model as given, or loaded from a folder / Hub id: with ``like``'s class when given, else ``auto_class``
    (default ``AutoModelForSequenceClassification``), passing ``load_kwargs`` (``cache_dir``, ``token``, ...)
    to ``from_pretrained``. A teacher whose output size differs from ``like``'s is refused.
    """
    if isinstance(model, torch.nn.Module):
        loaded, name = model, type(model).__name__
    else:
        name = os.fspath(model)
        if like is not None and hasattr(type(like), "from_pretrained"):
            loaded = type(like).from_pretrained(name, **(load_kwargs or {}))
        else:
            if auto_class is None:
                from transformers import AutoModelForSequenceClassification as auto_class
            loaded = auto_class.from_pretrained(name, **(load_kwargs or {}))
    wanted = getattr(getattr(like, "config", None), "num_labels", None)
    has = getattr(getattr(loaded, "config", None), "num_labels", None)
    if wanted is not None and has is not None and wanted != has:
        raise ValueError(
            f"teacher {name} has {has} outputs, the task needs {wanted} (the student's): use a teacher "
            "fine-tuned on this task"
        )
    return loaded


def train_stage(
    model: torch.nn.Module,
    args: TrainingArguments,
    train_dataset: Any = None,
    eval_dataset: Any = None,
    *,
    sparsity_config: Optional[SparsityConfig] = None,
    teacher: Optional[torch.nn.Module] = None,
    distillation: Optional[DistillationConfig] = None,
    train: bool = True,
    save: bool = True,
    resume_from_checkpoint: Union[str, bool, None] = None,
    **trainer_kwargs: Any,
) -> StageResult:
    """Train (when ``train``), save to ``args.output_dir`` (when ``save``) and evaluate one model.

    Metrics are logged, and saved beside the model when ``save`` (``train_results.json``, ``eval_results.json``).
    With a ``sparsity_config`` a ``SparseTrainer`` (and the teacher, if any), else a plain ``Trainer``.
    """
    if sparsity_config is None:
        if teacher is not None:
            raise ValueError("a teacher needs the sparse stage (sparsity_config=...; sparsity 0 trains dense)")
        # The dense stage is diagnosed like the sparse one: a teacher that never learned makes every later figure moot.
        diagnostics = UnderTrainingCallback(sparse=False)
        callbacks = [*(trainer_kwargs.pop("callbacks", None) or []), diagnostics]
        compute_metrics = diagnostics.watch(trainer_kwargs.pop("compute_metrics", None))
        trainer = Trainer(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                          callbacks=callbacks, compute_metrics=compute_metrics, **trainer_kwargs)
    else:
        trainer = SparseTrainer(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                                sparsity_config=sparsity_config, teacher_model=teacher, distillation=distillation,
                                **trainer_kwargs)
    metrics: dict[str, Any] = {}
    if train:
        if train_dataset is None:
            raise ValueError("training needs a train_dataset")
        result = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
        metrics.update(result.metrics)
        if hasattr(train_dataset, "__len__"):
            metrics["train_samples"] = len(train_dataset)
        trainer.log_metrics("train", metrics)
        if save:
            trainer.save_model()
            trainer.save_metrics("train", metrics)
            trainer.save_state()
    if eval_dataset is not None:
        evaluation = trainer.evaluate()
        if hasattr(eval_dataset, "__len__"):
            evaluation["eval_samples"] = len(eval_dataset)
        trainer.log_metrics("eval", evaluation)
        if save:
            trainer.save_metrics("eval", evaluation)
        metrics.update(evaluation)
    return StageResult(metrics, args.output_dir, trainer)


def train_dense_then_sparse(
    model: ModelOrPath,
    args: TrainingArguments,
    sparsity_config: Union[SparsityConfig, dict, None],
    train_dataset: Any,
    eval_dataset: Any = None,
    *,
    distill: bool = True,
    distillation: Optional[DistillationConfig] = None,
    dense_model: Optional[ModelOrPath] = None,
    sparse_schedule_scale: Optional[float] = None,
    output_dir: Optional[str] = None,
    dense_output_dir: Optional[str] = None,
    auto_class: Any = None,
    load_kwargs: Optional[dict] = None,
    resume_from_checkpoint: Union[str, bool, None] = None,
    **trainer_kwargs: Any,
) -> TwoStageResult:
    """Fine-tune ``model`` densely, then prune a copy of it while distilling from it (see the module docstring).

    Args:
        model: the model to fine-tune (a module, or a folder / Hub id loaded with ``auto_class``,
            default ``AutoModelForSequenceClassification``, and ``load_kwargs``).
        args: ``TrainingArguments`` of the dense stage; the sparse stage uses the same, stretched by
            the sparse stage's schedule scale. ``args.output_dir`` receives the sparse model.
        sparsity_config: the sparse stage's ``SparsityConfig`` (a dict is accepted; None: the defaults).
            ``sparsity=0`` makes the second stage a dense continuation.
        distill: whether the second stage distils from the dense model; ``distillation`` sets how
            (default ``DistillationConfig()``).
        dense_model: an existing dense model (a module or a folder, e.g. the ``dense_teacher`` of an
            earlier run) to use instead of training stage 1; it is evaluated, not trained or saved.
        sparse_schedule_scale: the second stage trains this many times the dense run's length
            (None: ``sparsity_config.schedule_scale``, the recipe's own length).
        output_dir / dense_output_dir: where the sparse and the dense model go (default
            ``args.output_dir`` and ``args.output_dir/dense_teacher``).
        resume_from_checkpoint: passed to the sparse stage's ``train``.
        **trainer_kwargs: passed to both trainers (``data_collator``, ``compute_metrics``,
            ``processing_class``, ``callbacks``, ...).

    Returns:
        ``TwoStageResult`` with ``dense`` and ``sparse`` stage results (metrics, folders, trainers).
    """
    config = sparsity_config if isinstance(sparsity_config, SparsityConfig) else SparsityConfig.from_dict(
        dict(sparsity_config or {}))
    if sparse_schedule_scale is not None:
        config = SparsityConfig.from_dict({**config.to_dict(), "schedule_scale": float(sparse_schedule_scale)})
    if distillation is not None and not distill:
        raise ValueError("distillation=... configures the teacher of the sparse stage: it needs distill=True")
    output_dir = output_dir or args.output_dir
    dense_output_dir = dense_output_dir or os.path.join(output_dir, DENSE_FOLDER)
    dense_args = dataclasses.replace(args, output_dir=dense_output_dir, push_to_hub=False, resume_from_checkpoint=None)
    if dense_model is None:
        logger.warning("dense stage: fine-tuning the dense model first (%s)", dense_output_dir)
        dense = train_stage(load_model(model, auto_class, load_kwargs=load_kwargs), dense_args, train_dataset, eval_dataset, **trainer_kwargs)
    else:
        student_like = model if isinstance(model, torch.nn.Module) else None
        teacher_model = load_model(dense_model, auto_class, like=student_like, load_kwargs=load_kwargs)
        if not isinstance(dense_model, torch.nn.Module):  # the result names the folder; nothing is written there
            dense_args = dataclasses.replace(dense_args, output_dir=os.fspath(dense_model))
        dense = train_stage(teacher_model, dense_args, None, eval_dataset, train=False, save=False, **trainer_kwargs)
    teacher = dense.model
    student = copy.deepcopy(teacher)
    sparse_args = args if output_dir == args.output_dir else dataclasses.replace(args, output_dir=output_dir)
    logger.warning("sparse stage: pruning a copy of the dense model to %g%s (%s)", config.sparsity,
                   " while distilling from it" if distill else "", output_dir)
    sparse = train_stage(
        student, sparse_args, train_dataset, eval_dataset, sparsity_config=config,
        teacher=teacher if distill else None,
        distillation=(distillation or DistillationConfig()) if distill else None,
        resume_from_checkpoint=resume_from_checkpoint, **trainer_kwargs,
    )
    return TwoStageResult(dense, sparse)
