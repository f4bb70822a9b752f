"""Paired comparison of two models evaluated on the same examples over the same seeds.

Why paired: two models scored on the same test sentences share most of their sampling error (the easy
and hard sentences are the same for both), so the interval of their *difference* is much narrower than
the difference of two independent intervals. Why over seeds too: a single training run is one draw; the
bootstrap resamples seeds and examples together (a two-level bootstrap), so the interval covers both
the training noise and the finite test set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairedGap:
    """``mean`` = mean over seeds of (score of A - score of B), with a percentile bootstrap interval."""

    mean: float
    low: float
    high: float
    seed_sd: float  # spread of the per-seed gaps (0.0 with one seed)
    seeds: int
    examples: int
    confidence: float

    def points(self) -> str:
        """``-1.2 [-2.0, -0.4]`` in percentage points (accuracy-like scores in [0, 1])."""
        return f"{100 * self.mean:+.1f} [{100 * self.low:+.1f}, {100 * self.high:+.1f}]"


def paired_bootstrap_gap(
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedGap:
    """Gap A - B from per-example scores of shape ``[seeds, examples]`` (e.g. 1.0 = correct, 0.0 = wrong).

    Row ``s`` of both arrays must come from the same seed and column ``i`` from the same example. Each
    resample draws seeds with replacement, then examples with replacement (the same examples for every
    drawn seed, so the pairing by example is kept), and takes the mean gap.
    """
    a, b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    if a.ndim == 1:
        a, b = a[None, :], b[None, :]
    if a.shape != b.shape or a.ndim != 2 or a.size == 0:
        raise ValueError(f"scores must be two arrays of one shape [seeds, examples], got {a.shape} and {b.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    diff = a - b
    seeds, examples = diff.shape
    rng = np.random.default_rng(seed)
    estimates = np.empty(resamples)
    for start in range(0, resamples, 500):  # chunks bound the memory to 500 x examples indices
        count = min(500, resamples - start)
        seed_draw = rng.integers(0, seeds, size=(count, seeds))
        example_draw = rng.integers(0, examples, size=(count, examples))
        per_seed_means = np.stack([diff[seed_draw[:, s]][np.arange(count)[:, None], example_draw].mean(axis=1)
                                   for s in range(seeds)], axis=1)
        estimates[start : start + count] = per_seed_means.mean(axis=1)
    tail = (1 - confidence) / 2
    per_seed = diff.mean(axis=1)
    return PairedGap(
        mean=float(per_seed.mean()),
        low=float(np.quantile(estimates, tail)),
        high=float(np.quantile(estimates, 1 - tail)),
        seed_sd=float(per_seed.std(ddof=1)) if seeds > 1 else 0.0,
        seeds=seeds,
        examples=examples,
        confidence=confidence,
    )
