"""SparseTrainer: a ``transformers.Trainer`` whose model ends sparse, with one extra argument. It wires
parts and delegates each override: the engine (``engine.py``, ``callback.py``), the run's schedule
(``run_schedule.py``), a teacher (``teacher.py``), checkpoints (``checkpoint.py``, ``resume.py``,
``fsdp.py``), the model card and Hub (``card_hub.py``)."""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
from transformers import Trainer

from ..config import SparsityConfig
from ..lora.peft_sparsifier import PeftSparsifier
from . import fsdp
from .callback import SparsityCallback, sparsity_logs
from .calibration import trainer_gradient_sampler
from .card_hub import push_compressed, write_trainer_card
from .checkpoint import save_checkpoint
from .diagnostics import UnderTrainingCallback
from .distill import DistillationConfig
from .engine import build_engine, ignores_loss_kwargs
from .resume import restore_sparsity_state
from .run_changes import announce_run_changes
from .run_schedule import rewinding_lr_scheduler, scaled_arguments, wants_rewinding
from .teacher import distillation_step, prepare_teacher, training_set_with_teacher_logits
from .teacher_cache import TEACHER_LOGITS


class SparseTrainer(Trainer):
    """``Trainer(...)`` plus ``sparsity_config=SparsityConfig(...)``; ``trainer.masks`` holds the masks."""

    def __init__(self, *args: Any, sparsity_config: Union[SparsityConfig, dict, str, None] = None,
                 teacher_model: Optional[torch.nn.Module] = None, distillation: Optional[DistillationConfig] = None,
                 base_masks: Any = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.model is None:
            raise ValueError("SparseTrainer needs a model (model_init is not supported)")
        self.sparsifier, self.sparsity_config, model_callbacks = build_engine(self.model, sparsity_config, base_masks)
        for callback in model_callbacks:
            self.add_callback(callback)
        # FSDP2 runs; FSDP1, DeepSpeed ZeRO-3, a sparse LoRA base under FSDP and east are refused.
        fsdp.refuse_unsupported(self, self.sparsifier.method, isinstance(self.sparsifier, PeftSparsifier))
        self.sparsifier.gradient_sampler = trainer_gradient_sampler(self)  # for methods that want fresh gradients
        self.add_callback(SparsityCallback(self.sparsifier, lambda: self.accelerator.optimizer_step_was_skipped))
        self.undertraining = UnderTrainingCallback()
        self.add_callback(self.undertraining)
        self.compute_metrics = self.undertraining.watch(self.compute_metrics)  # the not-learning check sees the predictions
        args_before, self.args = self.args, scaled_arguments(self.args, self.sparsity_config)
        run_changes = announce_run_changes(self.sparsity_config, args_before, self.args)
        self.run_changes = run_changes.lines
        self.add_callback(run_changes)
        self.teacher_model, self.distillation = teacher_model, prepare_teacher(teacher_model, distillation, self.args.device)
        self.undertraining.loss_is_cross_entropy = teacher_model is None  # a KD loss (T^2 * KL) is not one
        if teacher_model is not None or ignores_loss_kwargs(self.model):  # per-micro-batch mean losses: the
            self.model_accepts_loss_kwargs = False  # Trainer divides them by the accumulation steps

    @property
    def masks(self) -> dict:
        """Masks by parameter name (bool tensors, True = kept)."""
        return self.sparsifier.masks

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """LR rewinding when ``sparsity_config.lr_rewinding`` is set, else the Trainer's own schedule."""
        if not wants_rewinding(self.sparsity_config) or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        self.lr_scheduler = rewinding_lr_scheduler(self.sparsifier.method, self.sparsity_config, optimizer or self.optimizer,
                                                   num_training_steps, self.args.get_warmup_steps(num_training_steps))
        self._created_lr_scheduler = True
        return self.lr_scheduler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """With a teacher, training loss = distillation loss; evaluation keeps the task loss."""
        cached = inputs.pop(TEACHER_LOGITS, None)  # never a model input
        if self.teacher_model is None or not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        task_loss = lambda batch: super(SparseTrainer, self).compute_loss(model, batch, return_outputs=True)  # noqa: E731
        loss, outputs = distillation_step(task_loss, self.teacher_model, self.distillation, inputs, cached,
                                          self.accelerator.autocast)
        return (loss, outputs) if return_outputs else loss

    def get_train_dataloader(self):
        """The Trainer's loader, over a training set that carries the teacher's logits when they can be cached."""
        if self.teacher_model is not None and self.train_dataset is not None:
            keep_inputs = lambda data: self._remove_unused_columns(data, description="teacher logits")  # noqa: E731
            self.train_dataset, self.data_collator = training_set_with_teacher_logits(self, keep_inputs)
        return super().get_train_dataloader()

    def _set_signature_columns_if_needed(self) -> None:
        """The cached teacher logits are a column the Trainer must keep, though no model input."""
        super()._set_signature_columns_if_needed()
        if self.teacher_model is not None and TEACHER_LOGITS not in self._signature_columns:
            self._signature_columns.append(TEACHER_LOGITS)

    # -- gradients: mask before clipping so pruned weights do not count in the norm -----------------
    def _clip_grad_norm(self, model):
        self.sparsifier.prepare_gradients(self.state.global_step + 1)
        return super()._clip_grad_norm(model)

    def _get_grad_norm(self, model, grad_norm=None):
        if grad_norm is None:  # else the norm was computed by the clipping above
            self.sparsifier.prepare_gradients(self.state.global_step + 1)
        return super()._get_grad_norm(model, grad_norm=grad_norm)

    def log(self, logs: dict[str, float], start_time: Optional[float] = None) -> None:
        logs.update(sparsity_logs(self.sparsifier))
        super().log(logs, start_time)

    def save_model(self, output_dir: Optional[str] = None, _internal_call: bool = False) -> None:
        """Under FSDP2: the dense layout (whole weights + masks) on rank 0, for every ``state_dict_type``."""
        if not fsdp.is_fsdp2(self):
            return super().save_model(output_dir, _internal_call)
        fsdp.save_model(self, output_dir if output_dir is not None else self.args.output_dir, _internal_call)

    def _save(self, output_dir: Optional[str] = None, state_dict: Optional[dict] = None) -> None:
        self.save_checkpoint_files(output_dir, state_dict)

    def save_checkpoint_files(self, output_dir: Optional[str] = None, state_dict: Optional[dict] = None,
                              sparsity_state: Optional[dict] = None, save_id: Optional[str] = None) -> None:
        """The Trainer's files plus the masks and resume state, as one transaction (``checkpoint.py``);
        ``sparsity_state`` overrides the engine's own (the whole masks gathered under FSDP2)."""
        if not self.args.should_save:
            return super()._save(output_dir, state_dict)
        save_checkpoint(output_dir if output_dir is not None else self.args.output_dir,
                        lambda staging: super(SparseTrainer, self)._save(staging, state_dict),
                        sparsity_state or self.sparsifier.state_dict(), self.sparsity_config, save_id)

    def _save_checkpoint(self, model, trial) -> None:
        """Under FSDP2 one save id binds the checkpoint, the Trainer's per-rank files included (``fsdp.py``)."""
        with fsdp.checkpoint_save(self, trial):
            super()._save_checkpoint(model, trial)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        if fsdp.is_fsdp2(self):  # before the Trainer loads its sharded files: all of one save, or an error
            fsdp.check_checkpoint(resume_from_checkpoint)
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        restore_sparsity_state(self.sparsifier, self.sparsity_config, resume_from_checkpoint, fsdp.is_fsdp2(self))

    def _load_best_model(self) -> None:
        if fsdp.is_fsdp2(self):
            fsdp.check_checkpoint(self.state.best_model_checkpoint)
        super()._load_best_model()
        restore_sparsity_state(self.sparsifier, self.sparsity_config, self.state.best_model_checkpoint, fsdp.is_fsdp2(self))

    def create_model_card(self, language=None, license=None, tags=None, model_name=None, finetuned_from=None,
                          tasks=None, dataset_tags=None, dataset=None, dataset_args=None, **kwargs) -> None:
        """Write the sparse model card (README.md + PNG plots) into ``args.output_dir``."""
        if self.is_world_process_zero():
            write_trainer_card(self, model_name=model_name, base_model=finetuned_from,
                               datasets=dataset or dataset_tags, tags=tags, language=language, license=license)

    def push_to_hub(self, commit_message: Optional[str] = "End of training", blocking: bool = True,
                    token: Optional[str] = None, revision: Optional[str] = None, private: Optional[bool] = None,
                    compressed: Union[bool, str, None] = None, **kwargs):
        """``Trainer.push_to_hub`` (folder + sparse card + plots); ``compressed=True`` or
        ``"compressed-tensors"`` uploads that layout instead, converted in a temporary copy."""
        if compressed is None:
            return super().push_to_hub(commit_message=commit_message, blocking=blocking, token=token,
                                       revision=revision, private=private, **kwargs)
        return push_compressed(self, compressed, commit_message, token, revision, private, **kwargs)
