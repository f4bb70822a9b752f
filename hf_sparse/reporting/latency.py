"""Forward latency of several models on one input, measured interleaved (the loop of
:mod:`hf_sparse.inference.timing`), in milliseconds."""

from __future__ import annotations

import statistics
from typing import Mapping, Sequence, Union

import torch
from torch import nn

from ..inference.calls import call_model
from ..inference.timing import interleaved_rounds

Inputs = Union[Mapping[str, torch.Tensor], torch.Tensor]


@torch.inference_mode()
def measure_times(
    models: Mapping[str, nn.Module], inputs: Inputs, repeats: int = 10, warmup: int = 2
) -> dict[str, list[float]]:
    """Wall times (ms) of ``repeats`` forward passes per model (CUDA synchronised).

    The models run interleaved, one pass each per round, so a load spike on a shared machine hits
    every variant alike instead of one whole measurement.
    """
    states = {name: model.training for name, model in models.items()}
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    try:
        for model in models.values():
            model.eval()
        candidates = {name: (lambda model=model: call_model(model, inputs)) for name, model in models.items()}
        seconds = interleaved_rounds(candidates, repeats, warmup=warmup, sync=sync)
    finally:
        for name, model in models.items():
            model.train(states[name])
    return {name: [1000.0 * t for t in times] for name, times in seconds.items()}


def relative_spread(times: Sequence[float]) -> float:
    """Interquartile range over the median: how noisy a timing is (0 for fewer than 4 samples)."""
    if len(times) < 4:
        return 0.0
    q1, _, q3 = statistics.quantiles(times, n=4)
    return (q3 - q1) / statistics.median(times)


def measure_latencies(
    models: Mapping[str, nn.Module], inputs: Inputs, repeats: int = 10, warmup: int = 2
) -> dict[str, float]:
    """Median wall time (ms) of one forward pass per model, measured interleaved."""
    return {name: statistics.median(t) for name, t in measure_times(models, inputs, repeats, warmup).items()}


def measure_latency(model: nn.Module, inputs: Inputs, repeats: int = 10, warmup: int = 2) -> float:
    """Median wall time of one forward pass of one model, in milliseconds."""
    return measure_latencies({"model": model}, inputs, repeats, warmup)["model"]


__all__ = ["measure_latencies", "measure_latency", "measure_times", "relative_spread"]
