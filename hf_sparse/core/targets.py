"""Which parameters are sparsified: target/ignore regexes over module names plus safe defaults.

Default: the weight of every Linear / Conv / transformers ``Conv1D`` module, except embeddings,
the pooler, the classification head and a ResNet's stem conv (sparsifying those costs accuracy for little gain).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import nn

from .peft_layout import base_prefix, canonical_name, skipped_module_ids

try:  # GPT-2 style transposed Linear
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover
    Conv1D = ()

SUPPORTED_MODULES: tuple[type, ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d) + (
    (Conv1D,) if isinstance(Conv1D, type) else ()
)

# Heads and stems, matched against the full module name (re.search).
DEFAULT_IGNORE: tuple[str, ...] = (
    r"(^|\.)(classifier|score|lm_head|qa_outputs|head|heads|pre_classifier)(\.|$)",
    r"^timm_model\.fc$",
    r"^fc$",
    r"^timm_model\.conv1$",
    r"^(timm_model\.)?conv1\.\d+$",  # timm deep stems (resnet*d): conv1.0, conv1.3, conv1.6
    r"^conv1$",
    r"(^|\.)embedder\.embedder\.convolution$",
    r"(^|\.)embeddings?(\.|$)",
    # BERT's pooler feeds the classifier alone: oBERT and GMP* keep it dense (under 1.5% of the encoder in BERT-base or MiniLM)
    r"(^|\.)pooler(\.|$)",
)


@dataclass(frozen=True)
class Target:
    """One sparsified weight. ``in_dim`` is the input-feature dimension (N:M groups run along it)."""

    name: str  # parameter name, e.g. "bert.encoder.layer.0.output.dense.weight"
    module_name: str
    param: nn.Parameter
    in_dim: int

    @property
    def shape(self) -> torch.Size:
        return self.param.shape

    def fan(self) -> tuple[int, int, int]:
        """(n_in, n_out, kernel elements) for ERK."""
        shape = self.param.shape
        if self.in_dim == 0:  # Conv1D stores (in, out)
            return shape[0], shape[1], 1
        kernel = 1
        for size in shape[2:]:
            kernel *= size
        return shape[1], shape[0], kernel


def _output_embedding_ids(model: nn.Module) -> set[int]:
    getter = getattr(model, "get_output_embeddings", None)
    try:
        head = getter() if callable(getter) else None
    except (NotImplementedError, AttributeError):
        head = None
    return {id(head)} if isinstance(head, nn.Module) else set()


def find_targets(
    model: nn.Module,
    targets: Optional[Sequence[str]] = None,
    ignore: Optional[Sequence[str]] = None,
) -> list[Target]:
    """Return the sparsified weights in module order.

    ``targets`` (regexes, ``re.search`` on module names) replaces the default selection and may
    name any supported module, heads included; ``ignore`` always excludes. An unsupported module
    named explicitly by ``targets`` is an error, and so is a selection that matches nothing.
    """
    target_res = [re.compile(p) for p in targets] if targets else None
    ignore_res = [re.compile(p) for p in ignore or []]
    default_ignore = [re.compile(p) for p in DEFAULT_IGNORE]
    head_ids = _output_embedding_ids(model)
    found: list[Target] = []
    seen: set[int] = set()
    unsupported: list[str] = []
    prefix_of = {id(p): n for n, p in model.named_parameters()}
    skipped, prefix = skipped_module_ids(model), base_prefix(model)
    for module_name, module in model.named_modules():
        if not module_name or id(module) in skipped:
            continue
        match_name = canonical_name(module_name, prefix)
        if target_res is not None:
            if not any(r.search(match_name) for r in target_res):
                continue
        elif id(module) in head_ids or any(r.search(match_name) for r in default_ignore):
            continue
        if any(r.search(match_name) for r in ignore_res):
            continue
        if not isinstance(module, SUPPORTED_MODULES):
            if target_res is not None and isinstance(getattr(module, "weight", None), nn.Parameter):
                unsupported.append(f"{module_name} ({type(module).__name__})")
            continue
        weight = module.weight
        if id(weight) in seen or not weight.is_floating_point():
            continue
        seen.add(id(weight))
        name = prefix_of.get(id(weight), f"{module_name}.weight")
        found.append(Target(name, module_name, weight, in_dim=0 if isinstance(module, Conv1D) else 1))
    if unsupported:
        raise TypeError(
            f"targets matched modules hf_sparse cannot sparsify: {unsupported}; "
            f"supported types: {[t.__name__ for t in SUPPORTED_MODULES]}"
        )
    if not found:
        raise ValueError(
            f"no sparsifiable weights selected (targets={list(targets) if targets else None}, "
            f"ignore={list(ignore) if ignore else None}); check the regexes against model.named_modules()"
        )
    return found
