import numpy as np
import pytest

from hf_sparse.reporting.paired import paired_bootstrap_gap


def test_identical_models_have_a_zero_gap_and_a_zero_interval():
    scores = np.random.default_rng(0).integers(0, 2, size=(3, 200))
    gap = paired_bootstrap_gap(scores, scores, resamples=500)
    assert (gap.mean, gap.low, gap.high) == (0.0, 0.0, 0.0)


def test_one_seed_interval_matches_the_normal_approximation_of_the_paired_difference():
    rng = np.random.default_rng(1)
    a = rng.random((1, 4000)) < 0.80
    b = np.where(rng.random((1, 4000)) < 0.1, ~a, a)  # B disagrees with A on ~10% of the examples
    gap = paired_bootstrap_gap(a, b, resamples=4000)
    diff = a.astype(float) - b.astype(float)
    half_width = 1.96 * diff.std(ddof=1) / np.sqrt(diff.size)
    assert gap.mean == pytest.approx(diff.mean())
    assert (gap.high - gap.low) / 2 == pytest.approx(half_width, rel=0.15)
    assert gap.low < gap.mean < gap.high


def test_seed_noise_widens_the_interval():
    rng = np.random.default_rng(2)
    base = rng.random((5, 1000)) < 0.8
    shifts = np.array([-0.06, 0.06, -0.05, 0.05, 0.0])[:, None]  # per-seed offsets of B's accuracy
    noisy_b = np.where(rng.random((5, 1000)) < 0.5 + shifts, base, ~base | base)  # B keeps A's answer or is right
    quiet_b = np.where(rng.random((5, 1000)) < 0.5, base, ~base | base)
    assert paired_bootstrap_gap(base, noisy_b).seed_sd > paired_bootstrap_gap(base, quiet_b).seed_sd
    wide = paired_bootstrap_gap(base, noisy_b)
    narrow = paired_bootstrap_gap(base, quiet_b)
    assert wide.high - wide.low > narrow.high - narrow.low


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="one shape"):
        paired_bootstrap_gap(np.zeros((2, 10)), np.zeros((3, 10)))
