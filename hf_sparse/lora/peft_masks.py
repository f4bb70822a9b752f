"""Where the masks of a sparse base come from, matched by the names parameters have without peft.

Sources: a ``Sparsifier``, anything with ``.sparsifier`` (a ``SparseTrainer``), a
``{param name: bool mask}`` mapping, a folder written by ``SparseTrainer.save_model``, or None
(the caller infers them from exact zeros). Keys come back canonical (``core.peft_layout.canonical_name``),
so masks from the sparse base, from the LoRA run and from the merged model are interchangeable.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Union

import torch

from ..io.binding import read_side_config
from ..io.load import read_folder_masks
from ..core.peft_layout import canonical_name
from ..core.sparsifier import MaskEngine

Masks = dict[str, torch.Tensor]
#: What may name base masks (see the module docstring).
MaskSource = Union[None, MaskEngine, Mapping[str, torch.Tensor], str, os.PathLike, Any]

# The prefix PeftModel puts before the base model's names (LoRA and every other tuner model).
PEFT_PREFIX = "base_model.model."


def masks_from_directory(directory: Union[str, os.PathLike]) -> tuple[Masks, Optional[str]]:
    """(masks, pattern) of a folder written by hf_sparse (read by ``hf_sparse.io.load.read_folder_masks``)."""
    directory = os.fspath(directory)
    masks = read_folder_masks(directory)
    if not masks:
        raise FileNotFoundError(f"{directory} holds no hf_sparse masks (sparse_masks.safetensors or a compressed layout)")
    return dict(masks), _saved_pattern(directory)


def _saved_pattern(directory: str) -> Optional[str]:
    """The pattern recorded beside the masks (sparsity_config.json; a malformed one is a ValueError)."""
    config = read_side_config(directory)
    return None if config is None else config.get("pattern")


def _as_bool_masks(masks: Mapping[str, Any]) -> Masks:
    out: Masks = {}
    for name, mask in masks.items():
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"masks[{name!r}] must be a torch.Tensor, got {type(mask).__name__}")
        if mask.dtype != torch.bool and not bool(torch.all((mask == 0) | (mask == 1))):
            raise ValueError(f"masks[{name!r}] must be a bool mask (True = kept) or hold only 0/1")
        out[str(name)] = mask.to(torch.bool)
    return out


def collect_masks(source: MaskSource) -> tuple[Optional[Masks], Optional[str]]:
    """(masks keyed by canonical parameter name, "N:M"/"unstructured"/None) from any mask source."""
    if source is None:
        return None, None
    pattern: Optional[str] = None
    sparsifier = getattr(source, "sparsifier", source)
    if isinstance(sparsifier, MaskEngine):
        masks, pattern = sparsifier.masks, sparsifier.config.pattern
    elif isinstance(source, (str, os.PathLike)):
        if not os.path.isdir(source):
            raise FileNotFoundError(f"base masks: {os.fspath(source)!r} is not a folder written by SparseTrainer.save_model")
        masks, pattern = masks_from_directory(source)
    elif isinstance(source, Mapping):
        masks = source
    else:
        raise TypeError(
            "base masks must be a Sparsifier, a SparseTrainer, a {param name: bool tensor} dict, "
            f"a folder written by SparseTrainer.save_model, or None; got {type(source).__name__}"
        )
    canonical = {canonical_name(n, PEFT_PREFIX): m for n, m in _as_bool_masks(masks).items()}
    return canonical, pattern
