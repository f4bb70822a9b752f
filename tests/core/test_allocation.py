"""Allocation: uniform, global and ERK are exact to the requested overall sparsity."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hf_sparse.core.allocation import Allocation, erk_densities
from hf_sparse.core.masks import topk_mask
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


# -- the floor: no tensor is pruned away (issue 23, deliverable 9) ----------------------------------------
def _floor(numel: int, density: float, floor: float) -> int:
    return int(floor * density * numel)


def test_global_floor_keeps_a_tensor_the_threshold_would_empty():
    targets = _targets()
    scores = {t.name: t.param.detach().abs() for t in targets}
    quiet = targets[1].name  # scores 1000x smaller: one threshold prunes all of it
    scores[quiet] = scores[quiet] * 1e-3
    total = sum(s.numel() for s in scores.values())
    without = Allocation("global", targets).masks(scores, 0.9)
    assert int(without[quiet].sum()) == 0
    masks = Allocation("global", targets, floor=0.2).masks(scores, 0.9)
    assert sum(int(m.sum()) for m in masks.values()) == round(0.1 * total)  # the floor comes out of the budget
    assert int(masks[quiet].sum()) == _floor(scores[quiet].numel(), 0.1, 0.2)
    assert torch.equal(masks[quiet], topk_mask(scores[quiet], int(masks[quiet].sum())))  # its own top scores
    for t in targets:
        assert int(masks[t.name].sum()) >= _floor(t.param.numel(), 0.1, 0.2)


def _best_masks_under_floors(scores, n_keep, floors):
    """Reference: reserve each tensor's top ``floor`` scores, then the highest of all the rest (no ties here)."""
    reserved = {n: torch.zeros_like(s, dtype=torch.bool) for n, s in scores.items()}
    for n, s in scores.items():
        reserved[n].view(-1)[s.reshape(-1).topk(floors[n]).indices] = True
    rest = torch.cat([torch.where(reserved[n], float("-inf"), s).reshape(-1) for n, s in scores.items()])
    left = n_keep - sum(floors.values())
    threshold = rest.topk(left).values.min() if left > 0 else float("inf")
    return {n: reserved[n] | (~reserved[n] & (s >= threshold)) for n, s in scores.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_global_floor_is_the_best_masks_under_the_floors(seed):
    """Several tensors below their floor at once, on different scales: the masks keep the highest total score."""
    targets = _targets()
    g = torch.Generator().manual_seed(seed)
    scales = [1e-3, 1.0, 0.3, 1e-2]
    scores = {t.name: torch.rand(t.param.shape, generator=g) * s for t, s in zip(targets, scales)}
    total = sum(s.numel() for s in scores.values())
    masks = Allocation("global", targets, floor=0.5).masks(scores, 0.8)
    floors = {n: _floor(s.numel(), 0.2, 0.5) for n, s in scores.items()}
    expected = _best_masks_under_floors(scores, round(0.2 * total), floors)
    assert sum(int(m.sum()) for m in masks.values()) == round(0.2 * total)
    for n in scores:
        assert torch.equal(masks[n], expected[n]), n
    assert sum(int(masks[n].sum()) == floors[n] for n in scores) >= 2  # the floor did bind


def test_global_floor_changes_nothing_when_every_tensor_is_above_it():
    targets = _targets()
    scores = {t.name: t.param.detach().abs() * (i + 1) for i, t in enumerate(targets)}
    plain = Allocation("global", targets).masks(scores, 0.8)
    floored = Allocation("global", targets, floor=0.1).masks(scores, 0.8)
    assert min(int(m.sum()) / m.numel() for m in plain.values()) > 0.1 * 0.2  # no tensor below the floor
    assert all(torch.equal(plain[n], floored[n]) for n in plain)
    assert Allocation("global", targets, floor=0.1).keep_counts(0.8, scores) == {n: int(m.sum()) for n, m in plain.items()}


def test_erk_floor_raises_the_sparsest_layers_and_keeps_the_total():
    targets = _targets()
    numels = [t.param.numel() for t in targets]
    plain = erk_densities(targets, 0.1)
    low = min(plain) / 0.1
    floored = erk_densities(targets, 0.1, floor=low + 0.2)  # above the sparsest layer's share: it binds
    assert min(floored) == pytest.approx((low + 0.2) * 0.1)
    assert sum(d * n for d, n in zip(floored, numels)) == pytest.approx(0.1 * sum(numels))
    counts = Allocation("erk", targets, floor=low + 0.2).keep_counts(0.9)
    assert sum(counts.values()) == round(0.1 * sum(numels))
    for t, n in zip(targets, numels):
        assert counts[t.name] >= _floor(n, 0.1, low + 0.2)
    assert erk_densities(targets, 0.1, floor=low * 0.9) == plain  # below every share: unchanged


def test_uniform_floor_keeps_one_weight_in_a_tensor_too_small_for_its_share():
    torch.manual_seed(0)
    targets = find_targets(nn.Sequential(nn.Linear(4, 4), nn.Linear(256, 256)))
    counts = Allocation("uniform", targets, floor=0.1).keep_counts(0.99)
    assert sum(counts.values()) == round(0.01 * (16 + 256 * 256))
    assert counts[targets[0].name] == 1  # 0.01 * 16 rounds to 0 without the floor
    assert Allocation("uniform", targets).keep_counts(0.99)[targets[0].name] == 0
    masks = Allocation("uniform", targets, floor=0.1).masks({t.name: t.param.detach().abs() for t in targets}, 0.99)
    assert int(masks[targets[0].name].sum()) == 1


def test_floor_is_validated():
    with pytest.raises(ValueError, match="layer_floor"):
        Allocation("global", _targets(), floor=1.5)
    from hf_sparse import SparsityConfig

    with pytest.raises(ValueError, match="layer_floor"):
        SparsityConfig(layer_floor=-0.1)
    assert SparsityConfig().layer_floor > 0  # on by default


def _trained_masks(model, dataset, sparsity, tmp_path):
    from hf_sparse import SparseTrainer, SparsityConfig
    from helpers import training_args

    trainer = SparseTrainer(model=model, args=training_args(tmp_path, max_steps=40, learning_rate=3e-3, logging_steps=100),
                            train_dataset=dataset, sparsity_config=SparsityConfig(sparsity=sparsity))
    trainer.train()
    return trainer.masks


def test_the_default_recipe_prunes_no_tiny_bert_layer_away(tmp_path):
    """Reproduction: the recipe (global threshold, fisher) left 0 of 1,024 query/key weights in both layers at 90%."""
    from helpers import PairDataset, tiny_bert

    from hf_sparse import SparsityConfig

    masks = _trained_masks(tiny_bert(), PairDataset(n=96), 0.9, tmp_path)
    total = sum(m.numel() for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) == round(0.1 * total)
    floor = SparsityConfig().layer_floor
    empty = [n for n, m in masks.items() if int(m.sum()) < int(floor * 0.1 * m.numel()) or not m.any()]
    assert not empty, empty


def test_the_default_recipe_prunes_no_tiny_llama_layer_away(tmp_path):
    """Reproduction: a causal tiny Llama at 50% ended with 0 nonzeros in layers.1 q_proj and k_proj."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_sparse import SparsityConfig

    class Tokens(torch.utils.data.Dataset):
        ids = torch.randint(1, 50, (96, 8), generator=torch.Generator().manual_seed(0))

        def __len__(self):
            return len(self.ids)

        def __getitem__(self, i):
            return {"input_ids": self.ids[i], "attention_mask": torch.ones(8, dtype=torch.long), "labels": self.ids[i]}

    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, max_position_embeddings=16)
    masks = _trained_masks(LlamaForCausalLM(config), Tokens(), 0.5, tmp_path)
    floor = SparsityConfig().layer_floor
    empty = [n for n, m in masks.items() if int(m.sum()) < int(floor * 0.5 * m.numel()) or not m.any()]
    assert not empty, empty
