"""Small helpers for the checkpoint tests: tiny models, exact pruning, bitwise comparison."""

from __future__ import annotations

import torch

from hf_sparse.core.masks import nm_mask, topk_mask
from hf_sparse.core.targets import find_targets


def tiny_resnet(seed: int = 0):
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(seed)
    config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                          layer_type="basic", num_labels=3)
    return ResNetForImageClassification(config).eval()


@torch.no_grad()
def prune(model, sparsity: float | None = 0.9) -> dict[str, torch.Tensor]:
    """Magnitude-prune hf_sparse's default targets in place (2:4 when sparsity is None); return masks."""
    masks = {}
    for target in find_targets(model):
        w = target.param
        if sparsity is None:
            mask = nm_mask(w.abs(), 2, 4, in_dim=1)
        else:
            mask = topk_mask(w.abs(), int(round(w.numel() * (1 - sparsity))))
        w.masked_fill_(~mask, 0.0)  # as the Sparsifier does: +0.0 at pruned positions
        masks[target.name] = mask.clone()
    return masks


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
