"""core.patterns: the one N:M detector (exact N:M of a mask; dense / 2:4 / unstructured of a weight)."""

import torch

from hf_sparse.core.masks import nm_mask, topk_mask
from hf_sparse.core.patterns import common_pattern, group_counts, is_24_compatible, nm_pattern


def test_nm_pattern_finds_the_exact_pattern_along_the_input_dim():
    scores = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    assert nm_pattern(nm_mask(scores, 2, 4)) == (2, 4)
    assert nm_pattern(nm_mask(scores, 1, 4)) == (1, 4)
    assert nm_pattern(nm_mask(scores, 4, 8)) == (4, 8)
    # groups along dim 0 (a Conv1D weight): the pattern is found only there
    along_rows = nm_mask(scores, 2, 4, in_dim=0)
    assert nm_pattern(along_rows, in_dim=0) == (2, 4)
    assert nm_pattern(along_rows, in_dim=1) is None


def test_nm_pattern_rejects_unstructured_and_odd_shapes():
    scores = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    assert nm_pattern(topk_mask(scores, 64)) is None  # 50% but not 2 in every group of 4
    assert nm_pattern(torch.ones(4, dtype=torch.bool)) is None  # 1-D
    assert group_counts(torch.ones(3, 6, dtype=torch.bool), 4) is None  # 6 is not a multiple of 4
    one_extra = nm_mask(scores, 2, 4)
    one_extra[0, :4] = True
    assert nm_pattern(one_extra) is None and not is_24_compatible(one_extra.float())


def test_common_pattern_needs_every_mask_to_agree():
    scores = torch.randn(4, 8, generator=torch.Generator().manual_seed(2))
    a, b = nm_mask(scores, 2, 4), nm_mask(scores.flip(0), 2, 4)
    assert common_pattern([a, b], [1, 1]) == "2:4"
    assert common_pattern([a, nm_mask(scores, 1, 4)], [1, 1]) == "unstructured"
    assert common_pattern([a, topk_mask(scores, 16)], [1, 1]) == "unstructured"
