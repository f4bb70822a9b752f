"""Small helpers for the checkpoint tests: tiny models, exact pruning, bitwise comparison."""

from __future__ import annotations

import torch

import hf_sparse


def tiny_resnet(seed: int = 0):
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(seed)
    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                          layer_type="basic", num_labels=3)
    return ResNetForImageClassification(config).eval()


def prune(model, sparsity: float | None = 0.9) -> dict[str, torch.Tensor]:
    """Magnitude-prune hf_sparse's default targets in place (2:4 when sparsity is None); return masks.

    The masks are not attached to the model: these tests read them from the exact zeros or pass them."""
    if sparsity is None:
        return hf_sparse.prune(model, pattern="2:4", attach=False)
    return hf_sparse.prune(model, sparsity, attach=False)


def bits(t: torch.Tensor) -> torch.Tensor:
    """A view that compares floats bit for bit (-0.0 != +0.0, NaN payloads equal)."""
    if t.is_floating_point():
        return t.contiguous().view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])
    return t


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert set(a) == set(b), (sorted(set(a) ^ set(b)))[:5]
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(bits(a[key]), bits(b[key])), key


def state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
