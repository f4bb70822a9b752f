"""Fast sparse inference: swap sparse Linear layers for CSR kernels, only where measured faster.

``to_sparse_inference(model, example_inputs)`` runs one forward pass on ``example_inputs`` and,
as each targeted layer is reached, times its dense forward against each CSR kernel on that very
input (paired, interleaved rounds until the confidence bound of the speedup is clear of
``min_speedup``; see :mod:`hf_sparse.inference.timing`). A layer gets the fastest kernel if it is
faster by at least that much; otherwise it stays dense. Then the whole model is timed against the
dense model, and the conversion is undone only if it is confidently not faster (confirmed on fresh
rounds: one noisy moment cannot revert it). The choices, speedups and bounds are logged and kept
on the model as ``model.sparse_inference_plan``; ``save_plan=folder`` writes them beside a saved
model, and ``plan=folder`` applies a saved plan without timing when it was measured on the same
kind of machine (else it re-times and says why). ``from_sparse_inference(model)`` restores the
dense modules bitwise.

Conv layers stay dense: no torch CPU kernel (CSR on unfolded patches) beat oneDNN's dense
convolution in our measurements (see ``benchmarks/cpu_inference.py``).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import nn

from ..core.targets import find_targets
from .calls import call_model
from .decisions import decide_layer, decide_model, tune_layouts
from .plan import LayerChoice, SparseInferencePlan, machine_info
from .saved_plan import PlanSource, apply_saved_plan, load_plan
from .sparse_linear import SparseLinear, compute_dtype_for, is_linear_like, linear_weight
from .surgery import (
    find_chains,
    same_input_groups,
    set_module,
    share_input_transposes,
    shared_weight_ids,
    transposed_layout,
)
from .timing import Timer, interleaved_timer

logger = logging.getLogger(__name__)

DEFAULT_TOKENS = 8 * 128  # batch 8 x 128 tokens when no example input reaches a layer


@torch.no_grad()
def to_sparse_inference(
    model: nn.Module,
    example_inputs: Any = None,
    *,
    targets: Optional[Sequence[str]] = None,
    ignore: Optional[Sequence[str]] = None,
    min_sparsity: float = 0.5,
    min_speedup: float = 1.1,
    timer: Optional[Timer] = None,
    tune_layout: bool = True,
    min_model_speedup: float = 1.02,
    plan: PlanSource = None,
    save_plan: Union[str, os.PathLike, None] = None,
) -> nn.Module:
    """Put CSR kernels into the sparse Linear layers of ``model`` where they are measured faster.

    ``example_inputs``: what the model is called with (a dict of keyword arguments, a tuple of
    positional ones, or a tensor), ideally a real batch of the size you will run: each layer is
    timed on the input it receives. Without it each layer is timed on random
    ``(8*128, in_features)`` tokens. ``targets``/``ignore`` are module-name regexes as in
    ``SparsityConfig`` (default: ``hf_sparse.core.targets.find_targets``' selection). Layers below
    ``min_sparsity`` stay dense without timing; a layer is converted when the sparse kernel is at
    least ``min_speedup`` times faster than dense (decided on a confidence bound, more rounds while
    it straddles). ``timer`` replaces the measurement (tests: it returns a batch of rounds per call).
    ``tune_layout`` (needs ``example_inputs``): sparse layers that feed other sparse layers (an MLP's
    up -> activation -> down) keep their output in the kernel's transposed layout, saving two
    copies, if the whole model is measured faster that way. Sibling sparse layers fed the same
    tensor (Q/K/V) share one transposed copy of it.
    With ``example_inputs`` the converted model is finally timed against the dense one; it goes
    back to dense (``plan.reverted``) only when confidently below ``min_model_speedup``.
    ``plan``: a :class:`SparseInferencePlan` or the folder (or JSON file) of one saved with
    ``save_plan``; applied without timing when measured on the same kind of machine (CPU model,
    threads, torch version), else everything is re-timed and a log line says what differs.
    ``save_plan``: a folder (e.g. the one the model was saved to) to write the plan into.
    Timing uses ``torch.get_num_threads()`` threads: convert under the thread count you serve with.

    Works in place and returns ``model``, in eval mode, with ``model.sparse_inference_plan``.
    """
    if not 0.0 <= min_sparsity <= 1.0:
        raise ValueError(f"min_sparsity must be in [0, 1], got {min_sparsity}")
    if min_speedup <= 0:
        raise ValueError(f"min_speedup must be > 0, got {min_speedup}")
    if min_model_speedup <= 0:
        raise ValueError(f"min_model_speedup must be > 0, got {min_model_speedup}")
    if any(isinstance(m, SparseLinear) for m in model.modules()):
        raise ValueError("model already holds SparseLinear layers; call hf_sparse.from_sparse_inference(model) first")
    model.eval()
    dense_choices, candidates = _candidates(model, targets, ignore, min_sparsity)
    device = _device_of(model)
    saved = load_plan(plan)
    result = apply_saved_plan(model, saved, candidates, device) if saved is not None else None
    if result is None:
        result = _measure(model, example_inputs, candidates, timer or interleaved_timer(), min_speedup, tune_layout,
                          min_model_speedup)
    result.extend(dense_choices)
    result.machine = machine_info(device)
    result.threads = torch.get_num_threads()
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    result.sort(key=lambda c: order.get(c.name, len(order)))
    object.__setattr__(model, "sparse_inference_plan", result)
    _log(result, min_model_speedup)
    if save_plan is not None:
        logger.info("sparse inference plan written to %s", result.save(save_plan))
    return model


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _candidates(
    model: nn.Module, targets: Optional[Sequence[str]], ignore: Optional[Sequence[str]], min_sparsity: float
) -> tuple[list[LayerChoice], dict[str, nn.Module]]:
    """Targeted layers that stay dense without timing (with the reason), and the ones to decide."""
    shared = shared_weight_ids(model)
    dense: list[LayerChoice] = []
    candidates: dict[str, nn.Module] = {}
    for target in find_targets(model, targets, ignore):
        module = model.get_submodule(target.module_name)
        weight = target.param
        reason = None
        if not is_linear_like(module):
            reason = f"{type(module).__name__}: no faster sparse kernel"
        elif id(weight) in shared:
            reason = "weight shared with another module"
        elif (why := SparseLinear.supports(weight)) is not None:
            reason = why
        sparsity = 1.0 - int(torch.count_nonzero(weight)) / max(weight.numel(), 1)
        if reason is None and sparsity < min_sparsity:
            reason = f"sparsity below min_sparsity={min_sparsity:g}"
        if reason is not None:
            dense.append(LayerChoice(target.module_name, "dense", sparsity, reason=reason))
        else:
            candidates[target.module_name] = module
    return dense, candidates


def _measure(
    model: nn.Module,
    example_inputs: Any,
    candidates: dict[str, nn.Module],
    timer: Timer,
    min_speedup: float,
    tune_layout: bool,
    min_model_speedup: float,
) -> SparseInferencePlan:
    """Time every candidate layer (in the layout it will run in), swap in the winners, then tune
    chained layouts and run the whole-model guard."""
    plan = SparseInferencePlan()
    decisions: dict[str, tuple[LayerChoice, Optional[SparseLinear]]] = {}
    inputs: dict[str, torch.Tensor] = {}  # what each layer was first fed (kept alive: ids stay unique)

    # Producer -> consumer pairs of sparse candidates (an MLP's up -> GELU -> down): each is timed
    # in the layout it would run in when both are sparse (tune_layouts has the final say).
    chains = find_chains(model, example_inputs, candidates) if tune_layout and example_inputs is not None and candidates else []
    producers = {producer for producer, _ in chains}
    producer_of: dict[str, str] = {}
    for producer, consumer in chains:
        producer_of.setdefault(consumer, producer)

    def make_hook(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            # First call only; the timing calls the module again, which must not re-enter.
            if name not in inputs and args and isinstance(args[0], torch.Tensor):
                inputs[name] = x = args[0]
                producer = producer_of.get(name)
                transposed_input = producer in decisions and decisions[producer][1] is not None
                if transposed_input:
                    x = transposed_layout(x)
                decisions[name] = decide_layer(
                    name, module, x, timer, min_speedup, transposed_output=name in producers, transposed_input=transposed_input
                )

        return hook

    if example_inputs is not None and candidates:
        plan.input_shapes = _shapes(example_inputs)
        handles = [m.register_forward_pre_hook(make_hook(n)) for n, m in candidates.items()]
        try:
            call_model(model, example_inputs)
        finally:
            for h in handles:
                h.remove()
    for name, module in candidates.items():
        if name not in decisions:  # no example input, or the layer was not reached
            weight = linear_weight(module)
            x = torch.randn(DEFAULT_TOKENS, weight.shape[1], dtype=weight.dtype, device=weight.device)
            decisions[name] = decide_layer(name, module, x, timer, min_speedup)
    swaps: dict[str, tuple[nn.Module, SparseLinear]] = {}
    for name, module in candidates.items():
        choice, sparse = decisions[name]
        if sparse is not None:
            swaps[name] = (module, sparse)
            set_module(model, name, sparse)
        plan.append(choice)
    try:
        plan.shared_inputs = same_input_groups({n: inputs[n] for n in swaps if n in inputs})
        share_input_transposes(plan.shared_inputs, model)
        inputs.clear()
        if tune_layout and example_inputs is not None and plan.converted:
            chained = sorted({producer for producer, consumer in chains if producer in swaps and consumer in swaps})
            tune_layouts(model, example_inputs, timer, plan, chained)
        if example_inputs is not None and swaps:
            guard = decide_model(model, example_inputs, timer, swaps, min_model_speedup)
            s = guard.speedup
            plan.model_speedup, plan.model_speedup_low, plan.model_speedup_high = s.ratio, s.low, s.high
            plan.model_rounds, plan.model_settled, plan.reverted = s.rounds, guard.settled, not guard.passed
    except BaseException:
        for name, (dense_module, _) in swaps.items():  # leave the model as it came, dense
            set_module(model, name, dense_module)
        raise
    for name, (dense_module, sparse) in swaps.items():
        if plan.reverted:
            set_module(model, name, dense_module)
        else:
            sparse.adopt_shell(dense_module)  # the kernel was built on a copy; keep the real object
    if plan.reverted:
        why = f"whole model {plan.model_speedup:.2f}x < min_model_speedup={min_model_speedup:g}"
        for c in plan:
            if c.kernel != "dense":
                c.kernel, c.reason = "dense", why
        plan.transposed_outputs, plan.shared_inputs = [], []
    return plan


def _shapes(inputs: Any) -> Any:
    if isinstance(inputs, torch.Tensor):
        return list(inputs.shape)
    if isinstance(inputs, dict) or hasattr(inputs, "items"):
        return {k: list(v.shape) for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    if isinstance(inputs, (tuple, list)):
        return [list(v.shape) for v in inputs if isinstance(v, torch.Tensor)]
    return None


def _log(plan: SparseInferencePlan, min_model_speedup: float) -> None:
    for c in plan:
        if c.speedup is not None:
            logger.info("%s: %s (sparsity %.1f%%, measured %.2fx [%s, %s] on %s)", c.name, c.kernel, 100 * c.sparsity,
                        c.speedup, c.speedup_low, c.speedup_high, c.input_shape)
        else:
            logger.info("%s: dense (%s)", c.name, c.reason)
    logger.info("sparse inference: %d/%d layers on CSR kernels (%d threads)", len(plan.converted), len(plan), plan.threads)
    if plan.model_speedup is not None and plan.source == "measured":
        log = logger.warning if plan.reverted else logger.info
        log(
            "sparse inference: whole model %.2fx [%.2f, %.2f] vs dense on the example inputs over %d rounds: %s",
            plan.model_speedup, plan.model_speedup_low or 0.0, plan.model_speedup_high or float("inf"), plan.model_rounds,
            f"reverted to dense (confidently below min_model_speedup={min_model_speedup:g})" if plan.reverted else "kept",
        )


def from_sparse_inference(model: nn.Module) -> nn.Module:
    """Undo :func:`to_sparse_inference` in place: every SparseLinear goes back to its original
    module with bitwise-equal weights. Returns ``model`` (still in eval mode)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, SparseLinear):
            set_module(model, name, module.to_dense_module())
    if "sparse_inference_plan" in model.__dict__:
        del model.__dict__["sparse_inference_plan"]
    return model


__all__ = [
    "LayerChoice",
    "SparseInferencePlan",
    "compute_dtype_for",
    "from_sparse_inference",
    "interleaved_timer",
    "to_sparse_inference",
]
