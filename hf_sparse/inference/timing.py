"""How speed is measured and compared: the one definition of speedup in the package.

A speedup is the median over interleaved rounds of ``base time / other time``, taken round by
round: on a shared machine a load spike hits both sides of a pair, so the ratio survives noise that
a ratio of two medians does not. ``to_sparse_inference`` (layer, layout and whole-model choices)
and ``hf_sparse.report`` (its latency variants) both use it.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Mapping, Sequence

# (layer name, {"dense": fn, "csr": fn}) -> {"dense": [seconds per round], "csr": [...]}
Timer = Callable[[str, Mapping[str, Callable[[], Any]]], Mapping[str, Sequence[float]]]

#: The fastest candidate is a clear winner when its paired speedup over the runner-up is above 1/0.7.
CLEAR_RATIO = 0.7


def paired_speedup(base: Sequence[float], other: Sequence[float]) -> float:
    """How many times faster ``other`` is than ``base``: median over rounds of base / other."""
    if not base or len(base) != len(other):
        raise ValueError(f"paired_speedup needs equally many rounds on both sides, got {len(base)} and {len(other)}")
    return statistics.median(b / max(o, 1e-12) for b, o in zip(base, other))


def winner_is_clear(times: Mapping[str, Sequence[float]]) -> bool:
    """The fastest candidate beats the runner-up by a wide margin (paired ratio < ``CLEAR_RATIO``):
    more rounds would not change the choice."""
    if len(times) < 2:
        return False
    ranked = sorted(times.values(), key=statistics.median)
    return paired_speedup(ranked[0], ranked[1]) < CLEAR_RATIO


def interleaved_timer(repeats: int = 7, budget_s: float = 1.0) -> Timer:
    """Time each candidate once per round, rounds interleaved; stop after ``repeats`` rounds,
    ``budget_s`` seconds, or as soon as the choice is clear (at least 3 rounds). One warm-up each."""

    def timer(name: str, candidates: Mapping[str, Callable[[], Any]]) -> Mapping[str, Sequence[float]]:
        for fn in candidates.values():
            fn()
        times: dict[str, list[float]] = {k: [] for k in candidates}
        start = time.perf_counter()
        for i in range(repeats):
            for key, fn in candidates.items():
                t0 = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t0)
            if i >= 2 and (time.perf_counter() - start > budget_s or winner_is_clear(times)):
                break
        return times

    return timer


__all__ = ["CLEAR_RATIO", "Timer", "interleaved_timer", "paired_speedup", "winner_is_clear"]
