"""When and how sparse: pure functions of the optimizer step (no state, trivially resumable).

Steps count completed optimizer steps: step 0 is the start of training (before any update),
step t is right after the t-th optimizer step.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UpdateSteps:
    """Mask updates at ``start, start + every, ...`` up to and always including ``end``."""

    start: int
    end: int
    every: int

    def __contains__(self, step: int) -> bool:
        if step < self.start or step > self.end:
            return False
        return (step - self.start) % self.every == 0 or step == self.end

    def last_before(self, step: int) -> int | None:
        """The latest update step <= ``step`` (None before ``start``)."""
        if step < self.start:
            return None
        if step >= self.end:
            return self.end
        return self.start + (step - self.start) // self.every * self.every


@dataclass(frozen=True)
class PolynomialSparsity:
    """Zhu & Gupta (2017): s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t_end - t0)) ** power."""

    initial: float
    final: float
    start: int
    end: int
    power: float = 3.0

    def __call__(self, step: int) -> float:
        if step >= self.end:
            return self.final
        if step <= self.start:
            return self.initial
        progress = (step - self.start) / (self.end - self.start)
        return self.final + (self.initial - self.final) * (1.0 - progress) ** self.power


@dataclass(frozen=True)
class ConstantSparsity:
    """The same sparsity at every step (one-shot pruning, fixed masks)."""

    value: float

    def __call__(self, step: int) -> float:
        return self.value
