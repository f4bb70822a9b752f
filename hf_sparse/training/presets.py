"""Named sparse fine-tuning recipes: ``SparsityConfig.from_preset(name, **overrides)``.

Every preset is a plain dict of ``SparsityConfig`` fields (so it round-trips through JSON) plus a
description saying where its numbers come from. Sources, as summarised in shared/methods.md
section 3 (numbers from memory of the papers, not re-checked against their tables):

- GMP* (Kurtic & Alistarh 2022, "GMP*: Well-tuned gradual magnitude pruning can outperform most
  BERT-pruning methods") and "How to Prune Your Language Model" (2023): large first pruning step
  (~70%), cubic ramp, LR rewinding each pruning interval (linear, 10x down), last ~25% of training
  at fixed sparsity, 2-3x longer than the dense recipe, distillation from the dense teacher
  (T = 2, hardness 1.0: pass ``distillation=DistillationConfig()`` and ``teacher_model=``).
- AC/DC (Peste et al. 2021): global magnitude, 10% dense warm-up, 5% sparse/dense phases,
  15% final sparse phase.
"""

from __future__ import annotations

import copy
from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "bert-glue-1x": {
        "description": "Baseline GMP at the dense recipe's length: cubic 0 -> 90% over the first 75% of the run, "
        "last 25% at fixed sparsity, the Trainer's own LR schedule (Zhu & Gupta 2017).",
        "fields": dict(method="gmp", sparsity=0.9, start=0.0, end=0.75, update_every=100),
    },
    "bert-glue-extended": {
        "description": "GMP* recipe: 3x schedule, first pruning step to 70%, cubic to 90%, linear LR rewinding "
        "(peak -> 0.1 peak) each pruning interval, last 25% at fixed sparsity (Kurtic & Alistarh 2022). "
        "Add distillation=DistillationConfig() with the dense model as teacher_model.",
        "fields": dict(
            method="gmp",
            sparsity=0.9,
            start=0.0,
            end=0.75,
            update_every=100,
            method_args={"initial_jump": 0.7},
            schedule_scale=3.0,
            lr_rewinding="linear",
            lr_floor=0.1,
        ),
    },
    "gmp-rewinding": {
        "description": "GMP with linear LR rewinding at the run's own length (no schedule scaling): use when "
        "the budget is fixed; last 25% at fixed sparsity.",
        "fields": dict(method="gmp", sparsity=0.9, start=0.0, end=0.75, update_every=100, lr_rewinding="linear"),
    },
    "acdc": {
        "description": "AC/DC (Peste et al. 2021): global magnitude, 10% dense warm-up, alternating 5% sparse / "
        "5% dense phases, 15% final sparse phase.",
        "fields": dict(
            method="acdc",
            sparsity=0.9,
            allocation="global",
            method_args={"warmup": 0.1, "phase": 0.05, "final": 0.15},
        ),
    },
}


def available_presets() -> list[str]:
    return sorted(PRESETS)


def preset_fields(name: str) -> dict[str, Any]:
    """A copy of the preset's SparsityConfig fields."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available presets: {available_presets()}")
    return copy.deepcopy(PRESETS[name]["fields"])


def preset_description(name: str) -> str:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available presets: {available_presets()}")
    return PRESETS[name]["description"]


# (sparsity strictly below, recommended k). Rule: the sparser, the longer (seed paper; GMP*
# uses 2-3x the dense epochs at 80-90%; RigL needs ~5x at 90%+ from scratch).
_SCALE_RULE = ((0.5, 1.0), (0.8, 2.0), (0.95, 3.0), (1.0, 4.0))


def recommend_schedule_scale(sparsity: float) -> float:
    """Recommended ``schedule_scale`` k for a target sparsity.

    k = 1 below 50%, 2 in [50%, 80%), 3 in [80%, 95%), 4 at 95% and above.
    """
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    for below, scale in _SCALE_RULE:
        if sparsity < below:
            return scale
    return _SCALE_RULE[-1][1]
