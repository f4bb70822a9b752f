"""Read a staged save back through the load path before it replaces the previous checkpoint.

Headers alone do not prove a folder loads (a name that looks like an encoded part, a writer bug in
the values): the staged files are inspected, checked against the model being saved and decoded
exactly as :func:`hf_sparse.load_sparse` would, and the result must equal that model's state and
masks bit for bit. Only then does the swap replace anything.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from . import ct_layout, native_codec
from .folder import inspect_folder
from .native_format import COMPRESSED_TENSORS, read_masks_file
from .verify import ModelLayout, aliases, check_against_model, decode_weights, stored_view


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.is_floating_point():
        return tensor.contiguous().view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()])
    return tensor


def read_back(staging: str, model: nn.Module, masks: Mapping[str, torch.Tensor], layout: str) -> None:
    """Raise ValueError unless ``staging`` loads as ``model``'s exact state and ``masks``.

    One weight (with its encoded parts) in memory at a time, so the check costs no second copy of the model."""
    folder = inspect_folder(staging)
    if folder.layout != layout:
        raise ValueError(f"the staged files read back as the {folder.layout} layout, not {layout}")
    expected = ModelLayout.of(model)
    infos, encodings = stored_view(folder)
    check_against_model(folder, infos, expected, aliases(folder), cast_floats=False)
    original = model.state_dict()
    stored = read_masks_file(folder.masks) if folder.masks is not None else None
    implied: dict[str, torch.Tensor] = {}
    for keys in _groups(folder, encodings):
        state, implied_part = decode_weights(folder, expected, encodings, keys)
        implied.update(implied_part)
        for name, value in state.items():
            want = original[name].detach().cpu()
            if layout == COMPRESSED_TENSORS and name in implied_part:
                want = ct_layout.normalise_zeros(want)  # the layout stores +0.0 for every dropped entry
            if value.dtype != want.dtype or value.shape != want.shape or not torch.equal(_bits(value), _bits(want)):
                raise ValueError(f"{name} reads back different from the model's tensor: the writer is broken, nothing was saved")
    stored = stored if stored is not None else implied
    differ = sorted(set(stored) ^ set(masks)) or sorted(n for n in masks if not torch.equal(stored[n], masks[n].cpu()))
    if differ:
        raise ValueError(f"the masks read back different from the ones saved ({differ[:3]}): the writer is broken, nothing was saved")


def _groups(folder, encodings: Mapping) -> list[list[str]]:
    """The stored keys in groups that decode on their own: a plain tensor, or all parts of one encoded weight."""
    keys = list(folder.weights.tensors)
    if folder.layout == COMPRESSED_TENSORS:
        prefixes = set(ct_layout.compressed_prefixes(keys))
        by_prefix: dict[str, list[str]] = {}
        for key in keys:
            prefix, _, part = key.rpartition(".")
            owner = prefix if prefix in prefixes and part in ct_layout.PARTS[ct_layout.BITMASK] else key
            by_prefix.setdefault(owner, []).append(key)
        return list(by_prefix.values())
    by_weight: dict[str, list[str]] = {}
    for key in keys:
        split = native_codec.split_part_key(key)
        owner = split[0] if split is not None and split[0] in encodings else key
        by_weight.setdefault(owner, []).append(key)
    return list(by_weight.values())
