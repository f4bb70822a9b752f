"""SparseTrainer: a ``transformers.Trainer`` whose model ends sparse, with one extra argument.

Thin on purpose: it builds the ``Sparsifier``, hooks it into the loop (``SparsityCallback``),
masks gradients before clipping, logs sparsity, and saves/restores the masks with checkpoints.
"""

from __future__ import annotations

import copy
import logging
import os
from typing import Any, Optional, Union

import torch
from transformers import Trainer

from .callback import SparsityCallback
from ..io.training_state import has_sparsity_state, load_sparsity_state, write_state
from ..config import SparsityConfig
from .diagnostics import UnderTrainingCallback
from .distill import DistillationConfig, distillation_loss, hidden_states_loss, kd_mask
from .teacher_cache import TEACHER_LOGITS, CachedLogitsCollator, with_teacher_logits
from . import fsdp
from .lr_schedules import RewindingLambda, pruning_steps_of, rewinding_scheduler
from .run_changes import RunChangesCallback, describe_run_changes
from ..io.files import new_save_id, save_transaction
from ..io.folder import inspect_folder
from ..io.save import replaced_by_a_save, write_dense_checkpoint
from ..core.peft_layout import is_peft_model
from ..lora.peft_sparsifier import PeftSparsifier
from ..registry import get_method_class
from ..core.sparsifier import Sparsifier

logger = logging.getLogger(__name__)


def _as_config(value: Union[SparsityConfig, dict, str, os.PathLike, None]) -> SparsityConfig:
    if value is None:
        logger.info("SparseTrainer: no sparsity_config given, using SparsityConfig() defaults")
        return SparsityConfig()
    if isinstance(value, SparsityConfig):
        return value
    if isinstance(value, dict):
        return SparsityConfig.from_dict(value)
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        return SparsityConfig.from_pretrained(path) if os.path.isdir(path) else SparsityConfig.from_json_file(path)
    raise TypeError(f"sparsity_config must be a SparsityConfig, dict or JSON path, got {type(value).__name__}")


def _ignores_loss_kwargs(model: Any) -> bool:
    """Models whose forward takes ``**kwargs`` but ignores ``num_items_in_batch`` (transformers 5.24)."""
    from transformers import ResNetForImageClassification

    return isinstance(model, ResNetForImageClassification)


class SparseTrainer(Trainer):
    """``Trainer(...)`` plus ``sparsity_config=SparsityConfig(...)``; ``trainer.masks`` holds the masks."""

    def __init__(
        self,
        *args: Any,
        sparsity_config: Union[SparsityConfig, dict, str, None] = None,
        teacher_model: Optional[torch.nn.Module] = None,
        distillation: Optional[DistillationConfig] = None,
        base_masks: Any = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self._gathered_sparsity_state: Optional[dict] = None  # whole masks while an FSDP2 save runs
        if self.model is None:
            raise ValueError("SparseTrainer needs a model (model_init is not supported)")
        if _ignores_loss_kwargs(self.model):  # else its gradients are GA times too large
            self.model_accepts_loss_kwargs = False
        if base_masks is not None or is_peft_model(self.model):
            # A sparse base (LoRA): sparsity_config=None keeps its masks with the constant method (see lora/).
            given = None if sparsity_config is None else _as_config(sparsity_config)
            self.sparsifier = PeftSparsifier(self.model, given, base_masks)
            self.sparsity_config = self.sparsifier.config
        else:
            self.sparsity_config = _as_config(sparsity_config)
            method_class = get_method_class(self.sparsity_config.method)
            for callback in method_class.prepare_model(self.model, self.sparsity_config):
                self.add_callback(callback)
            self.sparsifier = Sparsifier(self.model, self.sparsity_config)
        # FSDP2 runs; FSDP1, DeepSpeed ZeRO-3, a sparse LoRA base under FSDP and east are refused.
        fsdp.refuse_unsupported(self, type(self.sparsifier.method), isinstance(self.sparsifier, PeftSparsifier))
        self.add_callback(SparsityCallback(self.sparsifier, lambda: self.accelerator.optimizer_step_was_skipped))
        self.undertraining = UnderTrainingCallback()
        self.add_callback(self.undertraining)
        args_before = self.args
        self._scale_schedule()
        self.run_changes = describe_run_changes(self.sparsity_config, args_before, self.args)
        if self.run_changes:
            logger.warning(
                "hf_sparse changed your run for sparse training (SparsityConfig(recipe='none') keeps exactly your "
                "TrainingArguments):\n  %s", "\n  ".join(self.run_changes),
            )
        recipe = self.sparsity_config.recipe if self.sparsity_config is not None else None
        self.add_callback(RunChangesCallback(recipe, self.run_changes))
        self._setup_distillation(teacher_model, distillation)

    # -- sparse-aware fine-tuning (shared/methods.md section 3) -----------------------------------
    def _scale_schedule(self) -> None:
        """Stretch the run by ``schedule_scale``; fractions of the run (start/end) stretch with it."""
        if self.sparsity_config is None:  # a sparse LoRA base without further pruning
            return
        k = self.sparsity_config.schedule_scale
        if k == 1.0:
            return
        args = copy.copy(self.args)  # never rescale the caller's TrainingArguments in place
        if args.max_steps > 0:
            args.max_steps = int(round(args.max_steps * k))
        else:
            args.num_train_epochs = args.num_train_epochs * k
        if args.warmup_steps >= 1:
            args.warmup_steps = int(round(args.warmup_steps * k))
        self.args = args

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """LR rewinding when ``sparsity_config.lr_rewinding`` is set, else the Trainer's own schedule."""
        config = self.sparsity_config
        if config is None or config.lr_rewinding is None or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        method = self.sparsifier.method
        method.setup(num_training_steps)  # the engine does it again at train begin with the same length
        schedule = RewindingLambda(
            pruning_steps_of(method.is_update_step, num_training_steps),
            num_training_steps,
            floor=self.sparsity_config.lr_floor,
            shape=self.sparsity_config.lr_rewinding,
            warmup_steps=self.args.get_warmup_steps(num_training_steps),
        )
        self.lr_scheduler = rewinding_scheduler(optimizer if optimizer is not None else self.optimizer, schedule)
        self._created_lr_scheduler = True
        return self.lr_scheduler

    def _setup_distillation(self, teacher: Optional[torch.nn.Module], config: Optional[DistillationConfig]) -> None:
        if config is not None and not isinstance(config, DistillationConfig):
            raise TypeError(f"distillation must be a DistillationConfig, got {type(config).__name__}")
        if config is not None and teacher is None:
            raise ValueError("distillation=DistillationConfig(...) needs teacher_model=<the dense model>")
        self.distillation = config if config is not None or teacher is None else DistillationConfig()
        self.teacher_model = teacher
        # A distillation loss (T^2 * KL) is not a cross-entropy: ln(num_labels) says nothing about it.
        self.undertraining.loss_is_cross_entropy = teacher is None
        if teacher is None:
            return
        teacher.to(self.args.device).eval().requires_grad_(False)
        # Task loss and KD term are both per-micro-batch means: let the Trainer divide by the
        # accumulation steps rather than the model normalising by num_items_in_batch.
        self.model_accepts_loss_kwargs = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """With a teacher, training loss = distillation loss; evaluation keeps the task loss."""
        cached = inputs.pop(TEACHER_LOGITS, None)  # never a model input (teacher_cache.py)
        if self.teacher_model is None or not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        layerwise = self.distillation.hidden_states_weight > 0
        if layerwise:
            inputs = {**inputs, "output_hidden_states": True}
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True)
        key = self.distillation.logits_key
        teacher_outputs = None
        if cached is None or layerwise:  # the hidden states need the teacher's forward pass
            teacher_inputs = {k: v for k, v in inputs.items() if k != "labels"}
            with torch.no_grad(), self.accelerator.autocast():
                teacher_outputs = self.teacher_model(**teacher_inputs)
            cached = teacher_outputs[key]
        mask = kd_mask(outputs[key], inputs.get("labels"), inputs.get("attention_mask"))  # per token: real, labelled
        loss = distillation_loss(loss, outputs[key], cached, self.distillation, mask)
        if layerwise:
            loss = loss + self.distillation.hidden_states_weight * hidden_states_loss(
                outputs["hidden_states"], teacher_outputs["hidden_states"], inputs.get("attention_mask")
            )
        return (loss, outputs) if return_outputs else loss

    def get_train_dataloader(self):
        """The Trainer's loader, over a training set that carries the teacher's logits when they can be cached."""
        self._cache_teacher_logits()
        return super().get_train_dataloader()

    def _cache_teacher_logits(self) -> None:
        """One teacher pass over the training set before training, instead of one per step (teacher_cache.py)."""
        if self.teacher_model is None or self.train_dataset is None:
            return
        self.train_dataset = with_teacher_logits(
            self.train_dataset, self.teacher_model, self.data_collator, self.distillation,
            model_inputs=lambda data: self._remove_unused_columns(data, description="teacher logits"),
            batch_size=self.args.per_device_eval_batch_size, device=self.args.device, autocast=self.accelerator.autocast,
            show_progress=not self.args.disable_tqdm and self.is_local_process_zero(),
        )
        cached = TEACHER_LOGITS in getattr(self.train_dataset, "column_names", ())
        if cached and not isinstance(self.data_collator, CachedLogitsCollator):
            self.data_collator = CachedLogitsCollator(self.data_collator)  # the column becomes batch tensors

    def _set_signature_columns_if_needed(self) -> None:
        """The cached teacher logits are a column the Trainer must keep, though no model input."""
        super()._set_signature_columns_if_needed()
        if self.teacher_model is not None and TEACHER_LOGITS not in self._signature_columns:
            self._signature_columns.append(TEACHER_LOGITS)

    @property
    def masks(self) -> dict:
        """Masks by parameter name (bool tensors, True = kept)."""
        return self.sparsifier.masks

    # -- gradients: mask before clipping so pruned weights do not count in the norm -----------
    def _clip_grad_norm(self, model):
        self.sparsifier.prepare_gradients(self.state.global_step + 1)
        return super()._clip_grad_norm(model)

    def _get_grad_norm(self, model, grad_norm=None):
        if grad_norm is None:
            self.sparsifier.prepare_gradients(self.state.global_step + 1)
        return super()._get_grad_norm(model, grad_norm=grad_norm)

    # -- logging -----------------------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time: Optional[float] = None) -> None:
        logs["sparsity"] = round(self.sparsifier.sparsity, 6)
        logs["target_sparsity"] = round(self.sparsifier.target_sparsity(), 6)
        logs.update(self.sparsifier.last_update_logs)
        self.sparsifier.last_update_logs = {}
        super().log(logs, start_time)

    # -- saving and resuming ---------------------------------------------------------------------
    def save_model(self, output_dir: Optional[str] = None, _internal_call: bool = False) -> None:
        """Under FSDP2: the dense layout (whole weights + masks) on rank 0, for every ``state_dict_type``."""
        if not fsdp.is_fsdp2(self):
            return super().save_model(output_dir, _internal_call)
        fsdp.save_model(self, output_dir if output_dir is not None else self.args.output_dir, _internal_call)
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def _save(self, output_dir: Optional[str] = None, state_dict: Optional[dict] = None) -> None:
        """The Trainer's files plus the masks and resume state, as one transaction (hf_sparse.io.files).

        Everything is written into a staging folder (the weights with hf_sparse's header in their
        first write, one masks file, one state file), checked, then swapped in: an interrupted
        save leaves the previous checkpoint in ``output_dir`` as it was.
        """
        if not self.args.should_save:
            return super()._save(output_dir, state_dict)
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        config = self.sparsity_config.to_dict() if self.sparsity_config is not None else None
        save_id = new_save_id()

        def verify(staging: str) -> None:
            if os.path.isfile(os.path.join(staging, "model.safetensors")) or os.path.isfile(
                os.path.join(staging, "model.safetensors.index.json")
            ):
                inspect_folder(staging)

        with save_transaction(output_dir, replaced_by_a_save, verify=verify) as staging:
            state = self._gathered_sparsity_state or self.sparsifier.state_dict()  # whole masks under FSDP2
            masks = {name: mask.detach().cpu() for name, mask in state["masks"].items()}
            write_dense_checkpoint(staging, lambda header: super(SparseTrainer, self)._save(staging, state_dict), masks,
                                   config, save_id)
            write_state(staging, state, config or {}, save_id)

    # -- model card and Hub (hf_sparse.io.model_card / hf_sparse.io.hub) ------------------------------
    def create_model_card(self, language=None, license=None, tags=None, model_name=None, finetuned_from=None,
                          tasks=None, dataset_tags=None, dataset=None, dataset_args=None, **kwargs) -> None:
        """Write the sparse model card (README.md + PNG plots) into ``args.output_dir``."""
        if not self.is_world_process_zero():
            return
        from ..io.model_card import write_model_card

        write_model_card(
            self.args.output_dir,
            **self._card_kwargs(model_name=model_name, base_model=finetuned_from, datasets=dataset or dataset_tags,
                                tags=tags, language=language, license=license),
        )

    def _card_kwargs(self, **given: Any) -> dict:
        evals = {}
        for entry in self.state.log_history:  # the latest value of each eval metric
            evals.update({k: v for k, v in entry.items() if k.startswith("eval_")})
        name_or_path = getattr(getattr(self.model, "config", None), "_name_or_path", "") or None
        if given.get("base_model") is None and name_or_path and not os.path.isdir(name_or_path):
            given["base_model"] = name_or_path
        notes = list(self.run_changes) + list(self.undertraining.warnings)
        return dict(masks=self.sparsifier.masks, sparsity_config=self.sparsity_config,
                    log_history=self.state.log_history, eval_results=evals or None, notes=notes, **given)

    def push_to_hub(self, commit_message: Optional[str] = "End of training", blocking: bool = True,
                    token: Optional[str] = None, revision: Optional[str] = None, private: Optional[bool] = None,
                    compressed: Union[bool, str, None] = None, **kwargs):
        """``Trainer.push_to_hub`` (folder + sparse card + plots); ``compressed=True`` or
        ``"compressed-tensors"`` uploads that layout instead, converted in a temporary copy."""
        if compressed is None:
            return super().push_to_hub(commit_message=commit_message, blocking=blocking, token=token,
                                       revision=revision, private=private, **kwargs)
        from ..io.hub import push_to_hub

        if self.hub_model_id is None:
            self.init_hf_repo(token=token, private=private)
        self.save_model(_internal_call=True)
        if not self.is_world_process_zero():
            return None
        self.create_model_card(**kwargs)
        card = self._card_kwargs(model_name=kwargs.get("model_name"), base_model=kwargs.get("finetuned_from"),
                                 datasets=kwargs.get("dataset"), tags=kwargs.get("tags"))
        card.pop("sparsity_config")
        return push_to_hub(self.args.output_dir, self.hub_model_id, compressed=compressed, private=private,
                           token=token or self.args.hub_token, commit_message=commit_message, revision=revision,
                           config=self.sparsity_config, **card)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        self._load_sparsity_state(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        super()._load_best_model()
        self._load_sparsity_state(self.state.best_model_checkpoint)

    def _load_sparsity_state(self, checkpoint: str) -> None:
        if fsdp.is_fsdp2(self) and fsdp.load_rank_state(self, checkpoint):  # this rank's own masks
            return
        if not has_sparsity_state(checkpoint):
            raise ValueError(
                f"{checkpoint} has no hf_sparse state (sparsity_state.safetensors): it was not written by "
                "SparseTrainer. To start sparse training from its weights, load the model from it "
                "and train without resume_from_checkpoint."
            )
        expected = {name: param.shape for name, param in self.sparsifier.params.items()}
        state, saved_config = load_sparsity_state(checkpoint, expected_masks=expected)
        current = self.sparsity_config.to_dict() if self.sparsity_config is not None else {}
        differing = sorted(k for k in current if k in saved_config and saved_config[k] != current[k])
        if differing:
            logger.warning("resuming with a sparsity config that differs from the checkpoint's in %s", differing)
        self.sparsifier.load_state_dict(state)
