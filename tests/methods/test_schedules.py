from __future__ import annotations

from hf_sparse.methods.schedules import ConstantSparsity, PolynomialSparsity, UpdateSteps


def test_cubic_boundaries_and_monotone():
    s = PolynomialSparsity(0.1, 0.9, start=10, end=110)
    assert s(0) == 0.1 and s(10) == 0.1 and s(110) == 0.9 and s(500) == 0.9
    values = [s(t) for t in range(0, 200)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    # Zhu & Gupta: halfway through the ramp, 1 - 0.5**3 = 87.5% of the way
    assert abs(s(60) - (0.9 + (0.1 - 0.9) * 0.125)) < 1e-12


def test_update_steps_include_end_and_resume():
    steps = UpdateSteps(start=5, end=27, every=10)
    assert [t for t in range(0, 40) if t in steps] == [5, 15, 25, 27]
    assert steps.last_before(4) is None and steps.last_before(16) == 15 and steps.last_before(100) == 27


def test_constant():
    assert ConstantSparsity(0.7)(0) == ConstantSparsity(0.7)(10**6) == 0.7


def test_zero_length_ramp_is_final():
    assert PolynomialSparsity(0.0, 0.8, start=5, end=5)(5) == 0.8
