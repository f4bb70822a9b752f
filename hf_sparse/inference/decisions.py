"""The timed decisions of ``to_sparse_inference``: per layer, chained layout, whole model.

Each is a :func:`hf_sparse.inference.timing.decide` call: paired, interleaved rounds until the
confidence bound of the speedup lies on one side of the threshold (or the round cap is reached,
when the median decides and the choice is marked unsettled). The whole-model guard reverts to
dense only on a "slower" verdict (and keeps it only on a "faster" one) confirmed by a fresh window
of rounds.
"""

from __future__ import annotations

import logging
import statistics
from typing import Any, Callable, Mapping, Optional

import torch
from torch import nn

from .calls import call_model
from .plan import LayerChoice, SparseInferencePlan
from .sparse_linear import SparseLinear, kernels_for, linear_weight
from .surgery import detached_copy, set_module
from .timing import Decision, Timer, decide

logger = logging.getLogger(__name__)

#: Round limits: a layer's timing is cheap (ms), a whole-model round is one forward per side.
LAYER_ROUNDS = dict(min_rounds=5, max_rounds=25, budget_s=2.0)
MODEL_ROUNDS = dict(min_rounds=7, max_rounds=41, budget_s=60.0)
_LAYOUTS = {False: "tokens-major", True: "features-major"}


def weight_sparsity(module: nn.Module) -> float:
    weight = linear_weight(module)
    return 1.0 - int(torch.count_nonzero(weight)) / max(weight.numel(), 1)


def decide_layer(
    name: str,
    dense_module: nn.Module,
    x: torch.Tensor,
    timer: Timer,
    min_speedup: float,
    transposed_output: bool = False,
    transposed_input: bool = False,
) -> tuple[LayerChoice, Optional[SparseLinear]]:
    """Time dense against each kernel on ``x``; ``transposed_output``: the layer feeds a sparse
    layer, so it is timed as it would run then (no output copy)."""
    # One throw-away kernel on a copy (the real module must stay intact until the decision),
    # switched between the kernels as it is timed.
    kernels = kernels_for(linear_weight(dense_module).device)
    probe = SparseLinear(detached_copy(dense_module), name, kernel=kernels[0]).eval()
    probe.contiguous_output = not transposed_output

    def run(kernel: str) -> Callable[[], Any]:
        def fn() -> Any:
            probe.kernel = kernel
            return probe(x)

        return fn

    candidates: dict[str, Callable[[], Any]] = {"dense": lambda: dense_module(x)}
    candidates.update({kernel: run(kernel) for kernel in kernels})
    decision = decide(timer, name, candidates, "dense", min_speedup, **LAYER_ROUNDS)
    best, s = decision.best, decision.speedup
    choice = LayerChoice(
        name=name,
        kernel=best if decision.passed else "dense",
        sparsity=weight_sparsity(dense_module),
        dense_ms=1e3 * statistics.median(decision.times["dense"]),
        sparse_ms=1e3 * statistics.median(decision.times[best]),
        speedup=s.ratio,
        input_shape=tuple(x.shape),
        reason=(f"faster ({best})" if decision.passed else f"sparse not {min_speedup:g}x faster") + _unsettled(decision),
        timed_layout=f"in:{_LAYOUTS[transposed_input]}/out:{_LAYOUTS[transposed_output]}",
        speedup_low=s.low,
        speedup_high=s.high,
        rounds=s.rounds,
        settled=decision.settled,
    )
    probe.kernel = best
    return choice, (probe if decision.passed else None)


def _unsettled(decision: Decision) -> str:
    return "" if decision.settled else f" (median {decision.speedup.ratio:.2f}x decided: bound straddled)"


def decide_model(
    model: nn.Module,
    example_inputs: Any,
    timer: Timer,
    swaps: Mapping[str, tuple[nn.Module, SparseLinear]],
    min_model_speedup: float,
) -> Decision:
    """The whole-model guard: converted vs dense on ``example_inputs`` (modules swapped in place,
    interleaved). Passes when the converted model is at least ``min_model_speedup`` times faster;
    either verdict must be confirmed on fresh rounds. Leaves the model converted."""

    def run(sparse: bool) -> Callable[[], Any]:
        def fn() -> Any:
            for name, modules in swaps.items():
                set_module(model, name, modules[1] if sparse else modules[0])
            return call_model(model, example_inputs)

        return fn

    try:
        return decide(
            timer, "<model>", {"dense": run(False), "sparse": run(True)}, "dense", min_model_speedup,
            confirm=True, **MODEL_ROUNDS,
        )
    finally:
        for name, (_, sparse) in swaps.items():
            set_module(model, name, sparse)


def tune_layouts(model: nn.Module, example_inputs: Any, timer: Timer, plan: SparseInferencePlan, chained: list[str]) -> None:
    """Let ``chained`` sparse layers (their output feeds another sparse layer) skip their output
    copies, if the whole model is then faster."""
    if not chained:
        return
    layers = [model.get_submodule(n) for n in chained]

    def run(transposed: bool) -> Callable[[], Any]:
        def fn() -> Any:
            for layer in layers:
                layer.contiguous_output = not transposed
            return call_model(model, example_inputs)

        return fn

    decision = decide(timer, "<model>", {"contiguous": run(False), "transposed": run(True)}, "contiguous", 1.0, **MODEL_ROUNDS)
    keep = decision.passed
    for layer in layers:
        layer.contiguous_output = not keep
    plan.transposed_outputs = chained if keep else []
    logger.info("transposed outputs for %s: model %s -> %s", chained, decision.speedup, "kept" if keep else "not kept")


__all__ = ["LAYER_ROUNDS", "MODEL_ROUNDS", "decide_layer", "decide_model", "tune_layouts", "weight_sparsity"]
