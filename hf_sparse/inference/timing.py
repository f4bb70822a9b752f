"""How speed is measured and decided: the one timing loop and the one definition of speedup.

A speedup is the median over interleaved rounds of ``base time / other time``, taken round by
round: on a shared machine a load spike hits both sides of a pair, so the ratio survives noise that
a ratio of two medians does not. Around that median, a distribution-free confidence bound (the
sign-test interval: order statistics of the per-round ratios, exact for any noise distribution
whose rounds are independent) says how sure the figure is. A decision "is ``other`` at least
``threshold`` times faster?" is taken only when the bound lies on one side of the threshold;
while it straddles, more rounds are timed (up to a cap, where the median decides and the decision
is marked unsettled). The whole-model guard confirms its verdict on a fresh window of rounds, so
one noisy moment can neither turn a faster model back to dense nor keep a slower one. ``to_sparse_inference`` (layer, layout and whole-model choices)
and ``hf_sparse.report`` (its latency variants) both use this module.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

# (what is timed, {"dense": fn, "spmm": fn, ...}) -> {"dense": [seconds per round], "spmm": [...]}
# A timer returns one batch of interleaved rounds per call; decisions call it again for more.
Timer = Callable[[str, Mapping[str, Callable[[], Any]]], Mapping[str, Sequence[float]]]

#: Two-sided confidence of the bound around a paired speedup.
CONFIDENCE = 0.9


def paired_ratios(base: Sequence[float], other: Sequence[float]) -> list[float]:
    """``base / other`` round by round (how many times faster ``other`` was in each round)."""
    if not base or len(base) != len(other):
        raise ValueError(f"paired timings need equally many rounds on both sides, got {len(base)} and {len(other)}")
    return [b / max(o, 1e-12) for b, o in zip(base, other)]


def paired_speedup(base: Sequence[float], other: Sequence[float]) -> float:
    """How many times faster ``other`` is than ``base``: median over rounds of base / other."""
    return statistics.median(paired_ratios(base, other))


def _binomial_cdf(k: int, n: int) -> float:
    """P(Binomial(n, 1/2) <= k)."""
    return sum(math.comb(n, i) for i in range(k + 1)) / 2**n


def median_bounds(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Sign-test confidence interval of the median of ``values``: ``(v_(k), v_(n-k+1))`` of the
    sorted values with the largest ``k`` whose two tails stay within ``1 - confidence``.
    ``(0, inf)`` when there are too few values for that confidence (5 for 90%, 6 for 95%)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    ordered, n = sorted(values), len(values)
    tail = (1.0 - confidence) / 2.0
    k = 0
    while k + 1 <= n // 2 and _binomial_cdf(k, n) <= tail:  # P(fewer than k+1 values below the median)
        k += 1
    if k == 0:
        return 0.0, math.inf
    return ordered[k - 1], ordered[n - k]


@dataclass(frozen=True)
class Speedup:
    """A paired speedup with its confidence bound: ``ratio`` (median of per-round ratios), ``low`` /
    ``high`` (the sign-test interval at ``confidence``), over ``rounds`` interleaved rounds."""

    ratio: float
    low: float
    high: float
    rounds: int
    confidence: float = CONFIDENCE

    @classmethod
    def of(cls, base: Sequence[float], other: Sequence[float], confidence: float = CONFIDENCE) -> "Speedup":
        ratios = paired_ratios(base, other)
        low, high = median_bounds(ratios, confidence)
        return cls(statistics.median(ratios), low, high, len(ratios), confidence)

    def side(self, threshold: float) -> str:
        """``"above"`` (the whole bound is >= ``threshold``), ``"below"`` (all of it is under), or ``"straddles"``."""
        if self.low >= threshold:
            return "above"
        if self.high < threshold:
            return "below"
        return "straddles"

    def __str__(self) -> str:
        high = "inf" if math.isinf(self.high) else f"{self.high:.2f}"
        return f"{self.ratio:.2f}x [{self.low:.2f}, {high}] ({self.confidence:.0%}, {self.rounds} rounds)"


@dataclass
class Decision:
    """The answer to "is the best of ``others`` at least ``threshold`` times faster than ``base``?"."""

    best: str  # the candidate with the highest paired speedup over the base
    speedup: Speedup
    passed: bool
    settled: bool  # False: the bound still straddled the threshold at the cap; the median decided
    times: dict[str, list[float]] = field(default_factory=dict)  # every round, pooled

    @property
    def why(self) -> str:
        if self.settled:
            return f"bound {'above' if self.passed else 'below'} threshold"
        return "bound straddles threshold at the round cap: median decided"


def decide(
    timer: Timer,
    name: str,
    candidates: Mapping[str, Callable[[], Any]],
    base: str,
    threshold: float,
    *,
    min_rounds: int = 5,
    max_rounds: int = 30,
    budget_s: float = math.inf,
    confidence: float = CONFIDENCE,
    confirm: bool = False,
    clock: Callable[[], float] = time.perf_counter,
) -> Decision:
    """Time ``candidates`` with ``timer`` (batch after batch of interleaved rounds) until the bound of
    the best one's speedup over ``base`` lies on one side of ``threshold``, or ``max_rounds`` /
    ``budget_s`` are spent (then the median decides and the decision is unsettled).

    ``confirm``: a verdict must hold twice, on all rounds and on a fresh window of at least
    ``min_rounds`` rounds timed after it was first reached, so that a burst of load during one
    stretch of rounds (which can slow the memory-bound sparse side more than dense) cannot decide.
    """
    if base not in candidates or len(candidates) < 2:
        raise ValueError(f"decide needs the base {base!r} and at least one other candidate, got {list(candidates)}")
    others = [k for k in candidates if k != base]
    times: dict[str, list[float]] = {k: [] for k in candidates}
    start = clock()
    since: Optional[tuple[str, int]] = None  # (verdict, round count when it was first reached)
    while True:
        batch = timer(name, candidates)
        for key in candidates:
            times[key].extend(float(t) for t in batch[key])
        rounds = len(times[base])
        if any(len(times[k]) != rounds for k in others) or rounds == 0:
            raise ValueError(f"timer for {name!r} returned unequal or empty rounds: { {k: len(v) for k, v in times.items()} }")
        best = max(others, key=lambda k: paired_speedup(times[base], times[k]))
        speedup = Speedup.of(times[base], times[best], confidence)
        side = speedup.side(threshold) if rounds >= min_rounds else "straddles"
        if side != "straddles":
            if not confirm:
                return Decision(best, speedup, side == "above", True, times)
            if since is None or since[0] != side:
                since = (side, rounds)
            elif rounds - since[1] >= min_rounds:
                fresh = Speedup.of(times[base][since[1]:], times[best][since[1]:], confidence)
                if fresh.side(threshold) == side:
                    return Decision(best, speedup, side == "above", True, times)
                since = None  # the fresh window disagrees: a noisy moment; keep timing
        else:
            since = None
        if rounds >= max_rounds or clock() - start > budget_s:
            return Decision(best, speedup, speedup.ratio >= threshold, False, times)


def interleaved_rounds(
    candidates: Mapping[str, Callable[[], Any]],
    rounds: int,
    warmup: int = 1,
    sync: Callable[[], None] = lambda: None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """The one timing loop: ``warmup`` calls of each candidate, then ``rounds`` rounds in which each
    candidate runs once (seconds per call; ``sync`` waits for an accelerator before the clock reads)."""
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    sync()
    times: dict[str, list[float]] = {k: [] for k in candidates}
    for _ in range(rounds):
        for key, fn in candidates.items():
            t0 = clock()
            fn()
            sync()
            times[key].append(clock() - t0)
    return times


def interleaved_timer(rounds: int = 5) -> Timer:
    """A :data:`Timer` that times ``rounds`` interleaved rounds per call, warming each candidate up
    once the first time a name is timed (later batches of the same decision need no warm-up)."""
    seen: set[tuple[str, ...]] = set()

    def timer(name: str, candidates: Mapping[str, Callable[[], Any]]) -> Mapping[str, Sequence[float]]:
        key = (name, *candidates)
        warm = 0 if key in seen else 1
        seen.add(key)
        return interleaved_rounds(candidates, rounds, warmup=warm)

    return timer


__all__ = [
    "CONFIDENCE",
    "Decision",
    "Speedup",
    "Timer",
    "decide",
    "interleaved_rounds",
    "interleaved_timer",
    "median_bounds",
    "paired_ratios",
    "paired_speedup",
]
