"""Module surgery for ``to_sparse_inference``: swapping modules, finding chains and shared inputs.

Everything here changes or inspects the model's structure; nothing times anything.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from ..core.module_surgery import set_module  # noqa: F401  (re-exported)
from .calls import call_model
from .sparse_linear import SharedInputTranspose


def detached_copy(module: nn.Module) -> nn.Module:
    """A shallow copy of a Linear-like module that shares its tensors (SparseLinear empties it)."""
    clone = module.__class__.__new__(module.__class__)
    clone.__dict__ = dict(module.__dict__)
    clone._parameters = dict(module._parameters)
    clone._buffers = dict(module._buffers)
    clone._modules = dict(module._modules)
    return clone


def shared_weight_ids(model: nn.Module) -> set[int]:
    """ids of parameters held by more than one module (tied weights)."""
    owners: dict[int, int] = {}
    for module in model.modules():
        for p in module._parameters.values():
            if p is not None:
                owners[id(p)] = owners.get(id(p), 0) + 1
    return {pid for pid, n in owners.items() if n > 1}


def transposed_layout(x: torch.Tensor) -> torch.Tensor:
    """``x`` with the same values in the layout a chained sparse producer hands over: (features, tokens)."""
    x2 = x.reshape(-1, x.shape[-1])
    return x2.t().contiguous().t().reshape(x.shape)


def share_input_transposes(groups: list[list[str]], model: nn.Module) -> None:
    """Give each group of converted sibling layers (fed the very same tensor: Q/K/V) one shared input copy."""
    for names in groups:
        cache = SharedInputTranspose(len(names))
        for name in names:
            model.get_submodule(name).input_transpose = cache


def same_input_groups(first_inputs: Mapping[str, torch.Tensor]) -> list[list[str]]:
    """Groups of layers whose first input was the very same tensor object."""
    groups: dict[int, list[str]] = {}
    for name, x in first_inputs.items():
        groups.setdefault(id(x), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def find_chains(model: nn.Module, example_inputs: Any, layers: Mapping[str, nn.Module]) -> list[tuple[str, str]]:
    """``(producer, consumer)`` pairs of ``layers``, in the order first seen, where the producer's
    output reaches the consumer directly or through one shape-keeping leaf module (an activation,
    a dropout): e.g. BERT's intermediate -> GELU -> output. Found with forward hooks during one
    pass on ``example_inputs``.

    A sparse producer can return its product as the transposed view it already is: its sparse
    consumer then needs no copy of its input, and neither layer copies its output.
    """
    names = {id(m): n for n, m in layers.items()}
    direct: dict[int, str] = {}  # id(tensor) -> the layer that produced it
    through: dict[int, str] = {}  # id(tensor) -> the layer behind one elementwise module
    alive: list[torch.Tensor] = []  # keeps ids unique during the pass
    pairs: dict[tuple[str, str], None] = {}  # an ordered set

    def hook(module: nn.Module, args: tuple, output: Any) -> None:
        if not args or not isinstance(args[0], torch.Tensor) or not isinstance(output, torch.Tensor):
            return
        source = direct.get(id(args[0])) or through.get(id(args[0]))
        if id(module) in names:
            if source is not None:
                pairs.setdefault((source, names[id(module)]))
            direct[id(output)] = names[id(module)]
            alive.append(output)
        elif id(args[0]) in direct and output.shape == args[0].shape:
            through[id(output)] = direct[id(args[0])]
            alive.append(output)

    leaves = [m for m in model.modules() if next(m.children(), None) is None or id(m) in names]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        call_model(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
    return list(pairs)


__all__ = [
    "detached_copy",
    "find_chains",
    "same_input_groups",
    "set_module",
    "share_input_transposes",
    "shared_weight_ids",
    "transposed_layout",
]
