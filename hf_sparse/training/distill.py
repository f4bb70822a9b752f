"""Knowledge distillation from a dense teacher (Hinton et al. 2015; used for sparse BERT by
Kurtic et al. 2022 and "Accurate Neural Network Pruning Requires Rethinking Sparse Optimization"): the sparse student matches the teacher's softened logits.

    loss = (1 - alpha) * task_loss + alpha * T**2 * KL(softmax(teacher / T) || softmax(student / T))

The T**2 factor keeps the soft-target gradients on the scale of the task loss when T changes. For
per-token logits (token classification) the KL is averaged over the positions the task loss counts
(``kd_mask``): padding and unlabelled sub-tokens would otherwise dilute it by the batch's padding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F


@dataclass
class DistillationConfig:
    """How the student learns from the teacher (defaults: GLUE "hardness" 1.0, T = 2; unverified)."""

    temperature: float = field(default=2.0, metadata={"help": "Softmax temperature T (> 0) for both logits."})
    alpha: float = field(
        default=1.0, metadata={"help": "Weight of the distillation term in [0, 1]; 1 - alpha weighs the task loss."}
    )
    logits_key: str = field(default="logits", metadata={"help": "Key of the logits in both models' outputs."})
    hidden_states_weight: float = field(
        default=0.0,
        metadata={"help": "Weight (>= 0) of a layer-wise term: mean squared error between the student's and the "
                          "teacher's hidden states, for a student of the teacher's shape (a pruned copy). 0: logits only."},
    )
    cache_teacher_logits: Optional[bool] = field(
        default=None,
        metadata={"help": "Compute the teacher's logits once before training instead of at every step (saves its "
                          "forward pass). None: when the collator only pads (hf_sparse.training.teacher_cache)."},
    )

    def __post_init__(self) -> None:
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) or self.temperature <= 0:
            raise ValueError(f"DistillationConfig.temperature must be a number > 0, got {self.temperature!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 <= self.alpha <= 1:
            raise ValueError(f"DistillationConfig.alpha must be a number in [0, 1], got {self.alpha!r}")
        if not isinstance(self.logits_key, str) or not self.logits_key:
            raise ValueError(f"DistillationConfig.logits_key must be a non-empty string, got {self.logits_key!r}")
        weight = self.hidden_states_weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
            raise ValueError(f"DistillationConfig.hidden_states_weight must be a number >= 0, got {weight!r}")
        if weight > 0 and self.cache_teacher_logits:
            raise ValueError("DistillationConfig: hidden_states_weight > 0 needs the teacher at every step; "
                             "it cannot be combined with cache_teacher_logits=True")
        if self.cache_teacher_logits not in (None, True, False):
            raise ValueError(
                f"DistillationConfig.cache_teacher_logits must be None, True or False, got {self.cache_teacher_logits!r}"
            )


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 2.0,
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """T**2 * KL(softmax(teacher/T) || softmax(student/T)), averaged over the logit vectors that count.

    Logits of any shape ``(..., classes)`` (sequence classification or per token); computed in
    fp32 so bf16 autocast does not degrade the softmax. ``mask`` (shape ``(...)``, true where a vector
    counts) leaves out padding and positions without a label: per-token distillation then averages
    over real tokens only, as the task loss does (``kd_mask``). A mask with no true position gives 0.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ"
        )
    classes = student_logits.shape[-1]
    student = student_logits.float().reshape(-1, classes)
    teacher = teacher_logits.float().reshape(-1, classes)
    if mask is not None:
        if tuple(mask.shape) != tuple(student_logits.shape[:-1]):
            raise ValueError(f"distillation mask {tuple(mask.shape)} does not fit logits {tuple(student_logits.shape)}")
        keep = mask.reshape(-1).to(device=student.device, dtype=torch.bool)
        if not bool(keep.any()):
            return student.sum() * 0.0  # no position counts: 0, still attached to the graph
        student, teacher = student[keep], teacher[keep]
    student = F.log_softmax(student / temperature, dim=-1)
    teacher = F.log_softmax(teacher / temperature, dim=-1)
    return F.kl_div(student, teacher, reduction="batchmean", log_target=True) * temperature**2


def kd_mask(
    logits: torch.Tensor, labels: Optional[torch.Tensor] = None, attention_mask: Optional[torch.Tensor] = None
) -> Optional[torch.Tensor]:
    """Which logit vectors the distillation term averages over (None: all of them).

    One vector per example (sequence classification): all. Per token: the positions with a label
    (``labels != -100``, the positions the task loss counts: no padding, no special token, one
    sub-token per word with transformers' token-classification recipe), else the real tokens of
    ``attention_mask``. Without either, every position counts (a batch without padding).
    """
    if logits.dim() < 3:
        return None
    positions = tuple(logits.shape[:-1])
    mask = None
    if labels is not None and tuple(labels.shape) == positions and not labels.is_floating_point():
        mask = labels != -100
    if attention_mask is not None and tuple(attention_mask.shape) == positions:
        real = attention_mask.to(torch.bool)
        mask = real if mask is None else mask & real
    return mask


def hidden_states_loss(
    student: tuple[torch.Tensor, ...], teacher: tuple[torch.Tensor, ...], attention_mask: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Mean squared error between matching hidden states, averaged over features, real tokens and layers.

    A pruned copy of its teacher can follow it layer by layer (TinyBERT, CoFi): many more targets per
    example than one logit vector, which is what a small training set lacks.
    """
    if len(student) != len(teacher) or not student:
        raise ValueError(f"student has {len(student)} hidden states, teacher {len(teacher)}: "
                         "hidden_states_weight needs a student of the teacher's shape")
    total = torch.zeros((), device=student[0].device)
    for s, t in zip(student, teacher):
        if s.shape != t.shape:
            raise ValueError(f"hidden states of shape {tuple(s.shape)} (student) and {tuple(t.shape)} (teacher)")
        error = (s.float() - t.to(s.device).float()).pow(2).mean(-1)
        if attention_mask is not None and attention_mask.shape == error.shape:
            weights = attention_mask.to(error.dtype)
            error = (error * weights).sum() / weights.sum().clamp_min(1)
        total = total + error.mean()
    return total / len(student)


def distillation_loss(
    task_loss: torch.Tensor,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    config: DistillationConfig,
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """(1 - alpha) * task_loss + alpha * kd_loss (over the positions of ``mask``, see ``kd_mask``)."""
    soft = kd_loss(student_logits, teacher_logits.to(student_logits.device), config.temperature, mask)
    if config.alpha >= 1.0:
        return soft
    return (1.0 - config.alpha) * task_loss + config.alpha * soft
