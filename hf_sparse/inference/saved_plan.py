"""Applying a plan saved with a model (``sparse_inference_plan.json``) instead of timing again.

A plan applies without timing only where it was measured on the same kind of machine (CPU model,
architecture, threads, torch version: :func:`hf_sparse.inference.plan.same_machine`) and for the
same weights (every candidate layer has an entry, at the sparsity it had then, within
``PLAN_SPARSITY_TOLERANCE``). Otherwise the caller re-times, and a warning says why.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Optional, Union

import torch
from torch import nn

from .decisions import weight_sparsity
from .plan import SparseInferencePlan, machine_info, read_plan, same_machine
from .sparse_linear import SparseLinear
from .surgery import detached_copy, set_module, share_input_transposes

logger = logging.getLogger(__name__)

#: A saved plan applies to a layer only if the layer's sparsity is within this of the plan's.
PLAN_SPARSITY_TOLERANCE = 0.01
PlanSource = Union[SparseInferencePlan, str, os.PathLike, None]


def load_plan(plan: PlanSource) -> Optional[SparseInferencePlan]:
    if plan is None or isinstance(plan, SparseInferencePlan):
        return plan
    path = os.fspath(plan)
    if os.path.isdir(path):
        found = read_plan(path)
        if found is None:
            logger.info("%s holds no sparse inference plan: timing", path)
        return found
    if os.path.isfile(path):
        return _read_file(path)
    raise FileNotFoundError(f"sparse inference plan {path} does not exist")


def _read_file(path: str) -> SparseInferencePlan:
    with open(path, encoding="utf-8") as handle:
        try:
            return SparseInferencePlan.from_dict(json.load(handle), where=path)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is corrupt: {err}") from err


def apply_saved_plan(
    model: nn.Module, saved: SparseInferencePlan, candidates: dict[str, nn.Module], device: torch.device
) -> Optional[SparseInferencePlan]:
    """Apply ``saved`` without timing; None (re-time) when it was measured elsewhere or for other weights."""
    differs = same_machine(saved.machine or {}, machine_info(device))
    if differs:
        logger.warning("sparse inference plan was measured on another machine (%s): re-timing", "; ".join(differs))
        return None
    by_name = {c.name: c for c in saved}
    for name, module in candidates.items():
        choice = by_name.get(name)
        if choice is None:
            logger.warning("sparse inference plan has no entry for %s: re-timing", name)
            return None
        if abs(weight_sparsity(module) - choice.sparsity) > PLAN_SPARSITY_TOLERANCE:
            logger.warning("%s is %.1f%% sparse, the plan was made at %.1f%%: re-timing", name,
                           100 * weight_sparsity(module), 100 * choice.sparsity)
            return None
    for choice in saved.converted:
        if choice.name not in candidates:
            logger.warning("%s is on a CSR kernel in the plan but is no candidate now (denser, or gone): re-timing", choice.name)
            return None
    plan = SparseInferencePlan()
    swaps: dict[str, SparseLinear] = {}
    for name, module in candidates.items():
        choice = by_name[name]
        if choice.kernel != "dense":
            sparse = SparseLinear(detached_copy(module), name, kernel=choice.kernel).eval()
            sparse.adopt_shell(module)
            set_module(model, name, sparse)
            swaps[name] = sparse
        plan.append(choice)
    plan.shared_inputs = [g for g in saved.shared_inputs if all(n in swaps for n in g)]
    share_input_transposes(plan.shared_inputs, model)
    plan.transposed_outputs = [n for n in saved.transposed_outputs if n in swaps]
    for name in plan.transposed_outputs:
        swaps[name].contiguous_output = False
    for key in ("model_speedup", "model_speedup_low", "model_speedup_high", "model_rounds", "model_settled", "input_shapes"):
        setattr(plan, key, getattr(saved, key))
    plan.source = "saved plan, not re-timed"
    logger.info("sparse inference: applied the saved plan (same machine), %d layers on CSR kernels", len(swaps))
    return plan



__all__ = ["PLAN_SPARSITY_TOLERANCE", "PlanSource", "apply_saved_plan", "load_plan"]
