"""The fast exact selection agrees with torch.kthvalue and with a reference mask rule, ties included."""

from __future__ import annotations

import pytest
import torch

from hf_sparse.core import selection
from hf_sparse.core.masks import threshold_masks


def reference_masks(scores: dict, n_keep: int) -> dict:
    """Keep the n_keep largest; ties at the threshold to tensors in turn, lowest flat index first."""
    flat = torch.cat([s.reshape(-1) for s in scores.values()])
    threshold = torch.kthvalue(flat.float(), flat.numel() - n_keep + 1).values.to(flat.dtype)
    need = n_keep - int((flat > threshold).sum())
    masks = {}
    for name, s in scores.items():
        m = (s > threshold).reshape(-1).clone()
        ties = (s.reshape(-1) == threshold).nonzero().squeeze(1)[: max(need, 0)]
        m[ties] = True
        need -= ties.numel()
        masks[name] = m.view(s.shape)
    return masks


def _scores(kind: str, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    sizes = [(700, 900), (1500, 1200), (3000, 800)]  # 5.1M values: past the exact-selection limit
    out = {}
    for i, shape in enumerate(sizes):
        s = torch.randn(shape, generator=g).abs()
        if kind == "quantised":  # few distinct values: ties everywhere
            s = (s * 4).round() / 4
        elif kind == "pruned":  # 60% already pruned: -inf block
            s = torch.where(torch.rand(shape, generator=g) < 0.6, torch.full_like(s, float("-inf")), s)
        elif kind == "all tied":
            s = torch.ones(shape)
        out[f"t{i}"] = s
    return out


@pytest.mark.parametrize("kind", ["normal", "quantised", "pruned", "all tied"])
@pytest.mark.parametrize("keep_fraction", [0.001, 0.1, 0.35, 0.5, 0.8, 0.999])
def test_threshold_masks_equal_the_reference(kind, keep_fraction):
    scores = _scores(kind)
    total = sum(s.numel() for s in scores.values())
    n_keep = int(total * keep_fraction)
    got, want = threshold_masks(scores, n_keep), reference_masks(scores, n_keep)
    assert sum(int(m.sum()) for m in got.values()) == n_keep
    for name in scores:
        assert torch.equal(got[name], want[name]), (kind, keep_fraction, name)


@pytest.mark.parametrize("kind", ["normal", "quantised", "pruned", "all tied"])
def test_select_counts_match_full_passes(kind):
    flats = [s.reshape(-1) for s in _scores(kind, seed=3).values()]
    total = sum(f.numel() for f in flats)
    for k in (1, total // 7, total // 2, total - 5, total):
        chosen = selection.select(flats, k)
        everything = torch.cat(flats)
        assert chosen.threshold == torch.kthvalue(everything, total - k + 1).values
        assert chosen.greater == [int((f > chosen.threshold).sum()) for f in flats]
        assert chosen.ties == [int((f == chosen.threshold).sum()) for f in flats]
    with pytest.raises(ValueError, match="outside"):
        selection.select(flats, 0)


def test_a_tie_block_is_taken_without_a_full_selection(monkeypatch):
    """When the sample's bounds coincide, two counting passes decide: torch.kthvalue never runs."""
    flats = [s.reshape(-1) for s in _scores("all tied").values()]
    monkeypatch.setattr(torch, "kthvalue", lambda *a, **k: (_ for _ in ()).throw(AssertionError("full selection")))
    chosen = selection.select(flats, 1_000_000)
    assert chosen.threshold == 1.0 and sum(chosen.ties) == sum(f.numel() for f in flats) and sum(chosen.greater) == 0


@pytest.mark.parametrize("keep_fraction", [0.1, 0.9])
def test_candidates_gathered_in_slices_give_the_same_masks(monkeypatch, keep_fraction):
    monkeypatch.setattr(selection, "CANDIDATE_CHUNK", 100_000)  # every tensor here is split into slices
    scores = _scores("normal", seed=5)
    n_keep = int(sum(s.numel() for s in scores.values()) * keep_fraction)
    got, want = threshold_masks(scores, n_keep), reference_masks(scores, n_keep)
    assert all(torch.equal(got[n], want[n]) for n in scores)
