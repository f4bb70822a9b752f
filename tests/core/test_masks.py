"""Pure mask operations: exact counts, N:M groups, exact global selection."""

from __future__ import annotations

import pytest
import torch

from hf_sparse.core import masks as M


def test_topk_mask_exact_count_with_ties():
    scores = torch.zeros(10, 10)
    for k in (0, 1, 37, 51, 99, 100):
        assert int(M.topk_mask(scores, k).sum()) == k


def test_topk_mask_keeps_largest():
    scores = torch.arange(12.0).reshape(3, 4)
    assert M.topk_mask(scores, 3).reshape(-1).tolist() == [False] * 9 + [True] * 3
    assert M.topk_mask(scores, 10).reshape(-1).tolist() == [False] * 2 + [True] * 10
    with pytest.raises(ValueError):
        M.topk_mask(scores, 13)


def test_nm_mask_linear_and_conv():
    torch.manual_seed(0)
    w = torch.randn(8, 16)
    mask = M.nm_mask(w.abs(), 2, 4)
    assert torch.all(mask.reshape(8, 4, 4).sum(-1) == 2)
    top2 = w.abs().reshape(-1, 4).topk(2, dim=1).values.min(dim=1).values
    kept_min = (w.abs().reshape(-1, 4) * mask.reshape(-1, 4)).masked_fill(~mask.reshape(-1, 4), float("inf")).min(1).values
    assert torch.equal(kept_min, top2)
    conv = torch.randn(4, 8, 3, 3)
    cmask = M.nm_mask(conv.abs(), 2, 4, in_dim=1)
    assert torch.all(cmask.movedim(1, -1).reshape(-1, 4).sum(-1) == 2)
    # Conv1D (GPT-2) stores (in, out): groups run along dim 0
    t = torch.randn(16, 8)
    tmask = M.nm_mask(t.abs(), 2, 4, in_dim=0)
    assert torch.all(tmask.t().reshape(-1, 4).sum(-1) == 2)
    with pytest.raises(ValueError, match="multiple of M=4"):
        M.nm_mask(torch.randn(4, 6), 2, 4)


def test_kth_largest_exact_small_and_large():
    torch.manual_seed(0)
    small = [torch.randn(100), torch.randn(50)]
    everything = torch.cat(small).sort(descending=True).values
    assert M.kth_largest(small, 7) == everything[6]
    large = [torch.randn(3_000_000), torch.randn(2_000_000).abs()]
    everything = torch.cat(large).sort(descending=True).values
    for k in (1, 1000, 2_500_000, 4_999_999, 5_000_000):
        assert M.kth_largest(large, k) == everything[k - 1], k


def test_threshold_masks_exact_count_and_ties():
    scores = {"a": torch.tensor([3.0, 1.0, 1.0, 0.5]), "b": torch.tensor([1.0, 2.0, 1.0])}
    masks = M.threshold_masks(scores, 4)
    assert sum(int(m.sum()) for m in masks.values()) == 4
    assert masks["a"][0] and masks["b"][1]  # the two above the tie
    assert masks["a"].tolist() == [True, True, True, False]  # ties taken in order
    big = {"x": torch.randn(3_000_000), "y": torch.randn(2_000_000)}
    big_masks = M.threshold_masks(big, 1_234_567)
    assert sum(int(m.sum()) for m in big_masks.values()) == 1_234_567
    kept_min = min(float(big[n][m].min()) for n, m in big_masks.items())
    dropped_max = max(float(big[n][~m].max()) for n, m in big_masks.items())
    assert kept_min >= dropped_max


def test_nonzero_mask_is_detached_and_exact():
    weight = torch.tensor([[0.0, -0.0, 1e-30], [2.0, 0.0, -3.0]], requires_grad=True)
    mask = M.nonzero_mask(weight)
    assert mask.dtype == torch.bool and not mask.requires_grad
    assert mask.tolist() == [[False, False, True], [True, False, True]]


def test_masked_scores_and_sparsity():
    mask = torch.tensor([True, False, True, False])
    assert M.masked_scores(torch.ones(4), mask).tolist() == [1.0, float("-inf"), 1.0, float("-inf")]
    assert M.overall_sparsity({"a": mask}) == 0.5
    assert M.overall_sparsity({"a": mask, "b": torch.ones(4, dtype=torch.bool)}) == 0.25
