"""AC/DC: phase boundaries, dense phases really train pruned weights, exact final sparsity."""

from __future__ import annotations

import pytest
import torch

from hf_sparse import Sparsifier, SparsityConfig
from hf_sparse.methods.acdc import acdc_phases

from helpers import TinyMLP, VectorDataset


def test_phase_starts_alternate_and_end_sparse():
    assert acdc_phases(10, 5, 90) == [
        (10, True), (15, False), (20, True), (25, False), (30, True), (35, False), (40, True), (45, False),
        (50, True), (55, False), (60, True), (65, False), (70, True), (75, False), (80, True), (85, False),
        (90, True),
    ]  # fmt: skip
    # a last alternating phase that is sparse runs into the final one (no extra start)
    assert acdc_phases(2, 2, 8) == [(2, True), (4, False), (6, True)]
    assert acdc_phases(0, 3, 0) == [(0, True)]


def test_default_phases_follow_the_paper_fractions():
    config = SparsityConfig(method="acdc", sparsity=0.9)
    sparsifier = Sparsifier(TinyMLP(), config)
    method = sparsifier.method
    method.setup(1000)
    starts = [s for s in range(1001) if method.is_update_step(s)]
    # 10% warm-up, 5% phases; the 15 alternating phases end sparse (800-850), which runs into
    # the final 15% sparse phase
    assert starts == list(range(100, 801, 50))
    assert [method.is_sparse_at(s) for s in (99, 100, 149, 150, 200, 799, 800, 850, 1000)] == [
        False, True, True, False, True, False, True, True, True,
    ]  # fmt: skip
    assert method.target_sparsity(120) == 0.9 and method.target_sparsity(160) == 0.0


def test_schedule_scale_stretches_integer_phase_lengths():
    config = SparsityConfig(method="acdc", method_args={"warmup": 2, "phase": 2, "final": 3}, schedule_scale=2)
    method = Sparsifier(TinyMLP(), config).method
    method.setup(24)
    assert method.phases == [(4, True), (8, False), (12, True), (16, False), (18, True)]


@pytest.mark.parametrize(
    "args,match",
    [
        ({"phase": 0}, "phase"),
        ({"warmup": 1.5}, "warmup"),
        ({"final": "x"}, "final"),
        ({"warmup": 0.6, "final": 0.5}, "exceed"),
        ({"phases": 3}, "unknown"),
    ],
)
def test_bad_method_args_raise(args, match):
    with pytest.raises(ValueError, match=match):
        SparsityConfig(method="acdc", method_args=args)


def test_dense_phase_regrows_and_final_sparsity_is_exact():
    torch.manual_seed(0)
    model = TinyMLP()
    config = SparsityConfig(method="acdc", sparsity=0.8, allocation="global", method_args={"warmup": 4, "phase": 4, "final": 4})
    sparsifier = Sparsifier(model, config)
    total = 24  # phases: dense 0-4, S 4, D 8, S 12, D 16, final S at 20
    sparsifier.begin(total)
    data = VectorDataset(n=64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pruned_at_first_sparse = None
    for step in range(1, total + 1):
        batch = data[slice((step * 8) % 64, (step * 8) % 64 + 8)]
        loss = model(batch["x"], batch["labels"])["loss"]
        optimizer.zero_grad()
        loss.backward()
        sparsifier.prepare_gradients(step)
        optimizer.step()
        updated = sparsifier.after_optimizer_step(step, optimizer)
        assert updated == (step in (4, 8, 12, 16, 20))
        if step == 4:
            assert sparsifier.sparsity == pytest.approx(0.8, abs=1e-3)
            pruned_at_first_sparse = {n: ~m.clone() for n, m in sparsifier.masks.items()}
            weights = sparsifier.weights()
            assert all(torch.all(weights[n][p] == 0) for n, p in pruned_at_first_sparse.items())
        if step == 8:
            assert sparsifier.sparsity == 0.0
        if step == 11:  # three dense steps later, weights pruned at step 4 have trained away from 0
            weights = sparsifier.weights()
            regrown = sum(int((weights[n][p] != 0).sum()) for n, p in pruned_at_first_sparse.items())
            assert regrown > 0.5 * sum(int(p.sum()) for p in pruned_at_first_sparse.values())
    kept = sum(int(m.sum()) for m in sparsifier.masks.values())
    numel = sum(m.numel() for m in sparsifier.masks.values())
    assert kept == round(0.2 * numel)  # exactly at target after the final sparse phase
    for name, param in sparsifier.params.items():
        assert torch.all(param.detach()[~sparsifier.masks[name]] == 0)


def test_frozen_targets_are_refused():
    model = TinyMLP()
    model.fc1.weight.requires_grad_(False)
    with pytest.raises(ValueError, match="frozen"):
        Sparsifier(model, SparsityConfig(method="acdc"))
