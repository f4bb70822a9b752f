"""The faster SparseGPT loop gives exactly what the first, plainly written one gave: the same masks and
bit-identical weights, on single layers (blocks that do not divide the columns included) and over a
whole tiny Llama pruned block by block (where q/k/v and gate/up share one inverse Cholesky factor)."""

from __future__ import annotations

import pytest
import torch
from oneshot_helpers import tiny_llama, token_batches
from sparsegpt_reference import reference_sparsegpt_prune

import hf_sparse
from hf_sparse.oneshot import methods, sparsegpt_prune
from hf_sparse.oneshot.sparsegpt import dampened_inverse_cholesky


def correlated_layer(seed: int, rows: int, cols: int, tokens: int = 400):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=g)
    mixing = torch.eye(cols) + 0.5 * torch.randn(cols, cols, generator=g) / cols**0.5
    x = (torch.randn(tokens, cols, generator=g) @ mixing) * torch.exp(0.75 * torch.randn(cols, generator=g))
    return weight, x.t() @ x / tokens


@pytest.mark.parametrize("nm", [None, (2, 4), (4, 8)])
@pytest.mark.parametrize("rows, cols, block_size", [(24, 64, 16), (40, 96, 32), (17, 72, 64)])
def test_same_masks_and_weights_as_the_reference_loop(nm, rows, cols, block_size):
    weight, hessian = correlated_layer(rows + cols, rows, cols)
    for sparsity in ([0.5] if nm else [0.3, 0.5, 0.9]):
        new, mask = sparsegpt_prune(weight, hessian, sparsity, nm, block_size=block_size)
        ref_new, ref_mask = reference_sparsegpt_prune(weight, hessian, sparsity, nm, block_size=block_size)
        assert torch.equal(mask, ref_mask)
        assert torch.equal(new, ref_new)
        assert not torch.equal(new[mask], weight[mask])  # kept weights were updated (the test can tell them apart)


def test_a_given_inverse_cholesky_is_used():
    weight, hessian = correlated_layer(1, 16, 32)
    u = dampened_inverse_cholesky(hessian, 0.01)
    same = sparsegpt_prune(weight, hessian, 0.5, block_size=16, inverse_cholesky=u)
    other = sparsegpt_prune(weight, hessian, 0.5, block_size=16, inverse_cholesky=dampened_inverse_cholesky(hessian, 1.0))
    assert torch.equal(same[0], sparsegpt_prune(weight, hessian, 0.5, block_size=16)[0])
    assert not torch.equal(same[0], other[0])


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_whole_model_prune_matches_the_reference(pattern, monkeypatch):
    calibration = token_batches(n=2)
    fast_model = tiny_llama()
    fast = hf_sparse.prune(fast_model, pattern=pattern, method="sparsegpt", calibration=calibration, block_size=32)
    calls = []

    def reference(weight, hessian, sparsity, nm, block_size, dampening, inverse_cholesky=None):
        calls.append(weight.shape)
        return reference_sparsegpt_prune(weight, hessian, sparsity, nm, block_size, dampening)

    monkeypatch.setattr(methods, "sparsegpt_prune", reference)
    slow_model = tiny_llama()
    slow = hf_sparse.prune(slow_model, pattern=pattern, method="sparsegpt", calibration=calibration, block_size=32)
    assert len(calls) == len(slow) == 14
    slow_params = dict(slow_model.named_parameters())
    for name, mask in fast.items():
        assert torch.equal(mask, slow[name]), name
        assert torch.equal(dict(fast_model.named_parameters())[name], slow_params[name]), name
