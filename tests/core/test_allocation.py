"""Allocation: uniform, global and ERK are exact to the requested overall sparsity."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hf_sparse.core.allocation import Allocation, erk_densities
from hf_sparse.core.targets import find_targets


def _targets():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.Linear(256, 256), nn.Conv2d(8, 16, 3), nn.Linear(256, 10))
    return find_targets(model)


@pytest.mark.parametrize("kind", ["uniform", "erk"])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99])
def test_counts_exact_overall(kind, sparsity):
    targets = _targets()
    counts = Allocation(kind, targets).keep_counts(sparsity)
    total = sum(t.param.numel() for t in targets)
    assert sum(counts.values()) == round((1 - sparsity) * total)
    for t in targets:
        assert 0 <= counts[t.name] <= t.param.numel()


def test_uniform_per_layer_within_one_weight():
    targets = _targets()
    counts = Allocation("uniform", targets).keep_counts(0.7)
    for t in targets:
        assert abs(counts[t.name] - 0.3 * t.param.numel()) <= 1


def test_erk_density_proportional_and_capped():
    targets = _targets()
    densities = erk_densities(targets, 0.1)
    raw = [sum(t.param.shape) / t.param.numel() for t in targets]
    free = [i for i, d in enumerate(densities) if d < 1]
    ratios = {round(densities[i] / raw[i], 9) for i in free}
    assert len(ratios) == 1  # one scale factor over non-dense layers
    dense_at_high_density = erk_densities(targets, 0.9)
    assert max(dense_at_high_density) == 1.0  # small layers capped at dense, rest rescaled
    numels = [t.param.numel() for t in targets]
    assert abs(sum(d * n for d, n in zip(dense_at_high_density, numels)) - 0.9 * sum(numels)) < 1e-6


def test_global_is_one_threshold():
    targets = _targets()
    scores = {t.name: t.param.detach().abs() * (i + 1) for i, t in enumerate(targets)}
    masks = Allocation("global", targets).masks(scores, 0.8)
    total = sum(s.numel() for s in scores.values())
    assert sum(int(m.sum()) for m in masks.values()) == round(0.2 * total)
    kept_min = min(float(scores[n][m].min()) for n, m in masks.items() if m.any())
    dropped_max = max(float(scores[n][~m].max()) for n, m in masks.items() if (~m).any())
    assert kept_min >= dropped_max
    counts = Allocation("global", targets).keep_counts(0.8, scores)
    assert counts == {n: int(m.sum()) for n, m in masks.items()}
    with pytest.raises(ValueError, match="needs scores"):
        Allocation("global", targets).keep_counts(0.8)


def test_gradual_nm():
    targets = [t for t in _targets() if t.param.dim() == 2]
    scores = {t.name: t.param.detach().abs() for t in targets}
    alloc = Allocation("uniform", targets)
    for sparsity, keep in [(0.0, 4), (0.25, 3), (0.5, 2)]:
        masks = alloc.masks(scores, sparsity, nm=(2, 4))
        for m in masks.values():
            assert torch.all(m.reshape(-1, 4).sum(-1) == keep)


def test_unknown_kind():
    with pytest.raises(ValueError, match="allocation must be one of"):
        Allocation("random", _targets())
