"""Named sparse fine-tuning presets: ``SparsityConfig.from_preset(name, **overrides)``.

Every preset is a plain dict of ``SparsityConfig`` fields (so it round-trips through JSON) plus a
description saying where its numbers come from. Presets are exact configs (``recipe="none"``): the
sparse-aware defaults of ``recipe="auto"`` (``hf_sparse.methods.recipe_defaults``) fill nothing in them.
Sources (numbers from memory of the papers, not re-checked against their tables):

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

from .methods.recipe_defaults import recommend_schedule_scale  # noqa: F401  (public here since presets came first)

PRESETS: dict[str, dict[str, Any]] = {
    "bert-glue-1x": {
        "description": "Baseline GMP at the dense recipe's length: cubic 0 -> 90% over the first 75% of the run, "
        "last 25% at fixed sparsity, the Trainer's own LR schedule (Zhu & Gupta 2017).",
        "fields": dict(method="gmp", sparsity=0.9, start=0.0, end=0.75, update_every=100, recipe="none"),
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
            recipe="none",
        ),
    },
    "gmp-rewinding": {
        "description": "GMP with linear LR rewinding at the run's own length (no schedule scaling): use when "
        "the budget is fixed; last 25% at fixed sparsity.",
        "fields": dict(method="gmp", sparsity=0.9, start=0.0, end=0.75, update_every=100, lr_rewinding="linear", recipe="none"),
    },
    "acdc": {
        "description": "AC/DC (Peste et al. 2021): global magnitude, 10% dense warm-up, alternating 5% sparse / "
        "5% dense phases, 15% final sparse phase.",
        "fields": dict(
            method="acdc",
            sparsity=0.9,
            allocation="global",
            method_args={"warmup": 0.1, "phase": 0.05, "final": 0.15},
            recipe="none",
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


def east_config(sparsity: float = 0.99, **overrides: Any):
    """A ``SparsityConfig`` with the EAST code's defaults: ERK allocation, updates every 100 steps until 75%."""
    from .config import SparsityConfig  # here, not at the top: config imports this module

    values: dict[str, Any] = dict(method="east", sparsity=sparsity, allocation="erk", update_every=100, end=0.75)
    values.update(overrides)
    return SparsityConfig(**values)
