"""save_sparse: write a sparse model as dense+masks, native compressed, or the compressed-tensors layout.

Read back with :func:`hf_sparse.load_sparse` (and masks alone with :func:`hf_sparse.load_masks`).
Layouts and header metadata: see :mod:`hf_sparse.io.native_format`. The pieces: which files a save
replaces (:mod:`~hf_sparse.io.replace_policy`), the writers (:mod:`~hf_sparse.io.writers`), the
header in transformers' own writes (:mod:`~hf_sparse.io.weights_header`), the read-back check
before the swap (:mod:`~hf_sparse.io.readback`).
"""

from __future__ import annotations

import logging
import os
from typing import Mapping, Optional, Union

import torch
from torch import nn

from ..config import SparsityConfig
from ..core.masks import check_masks_fit
from ..core.targets import find_targets
from .existing_masks import masks_from_zeros
from .files import new_save_id, save_transaction
from .native_format import COMPRESSED_TENSORS, DENSE, NATIVE
from .readback import read_back
from .replace_policy import refuse_adapter_folder, replaced_by_a_save  # noqa: F401 (re-exported)
from .weights_header import adding_weights_header
from .writers import (  # noqa: F401 (write_dense_checkpoint is used by the Trainer's checkpoints)
    _config_json,
    _save_compressed_tensors,
    _save_native,
    _write_dense_weights,
    write_dense_checkpoint,
    write_sparsity_config,
)

logger = logging.getLogger(__name__)

Compressed = Union[bool, str]
#: deprecated name of :func:`hf_sparse.io.weights_header.adding_weights_header`
header_metadata = adding_weights_header


def layout_of(compressed: Compressed) -> str:
    if compressed is False or compressed is None or compressed == DENSE:
        return DENSE
    if compressed is True or compressed == NATIVE:
        return NATIVE
    if compressed == COMPRESSED_TENSORS:
        return COMPRESSED_TENSORS
    raise ValueError(f"compressed must be False, True or 'compressed-tensors', got {compressed!r}")


def _config_dict(config: Union[SparsityConfig, Mapping, None]) -> Optional[dict]:
    if config is None:
        return None
    if isinstance(config, SparsityConfig):
        return config.to_dict()
    if isinstance(config, Mapping):
        return SparsityConfig.from_dict(dict(config)).to_dict()
    raise TypeError(f"config must be a SparsityConfig, a dict or None, got {type(config).__name__}")


def resolve_masks(
    model: nn.Module, masks: Optional[Mapping[str, torch.Tensor]], config: Optional[dict]
) -> dict[str, torch.Tensor]:
    """The masks to save: given ones (checked against the model), else ``weight != 0`` of the targets."""
    if masks is None:
        targets = find_targets(model, (config or {}).get("targets"), (config or {}).get("ignore"))
        return {n: m.cpu() for n, m in masks_from_zeros({t.name: t.param for t in targets}).items()}
    check_masks_fit(dict(model.named_parameters()), masks)
    for name, mask in masks.items():
        if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"masks[{name!r}] must be a bool tensor (True = kept) or hold only 0 and 1")
    return {name: mask.detach().cpu().to(torch.bool) for name, mask in masks.items()}


def check_weights_follow_masks(weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], where: str) -> None:
    """A nonzero weight where its mask says pruned means weights and masks disagree: name the tensor."""
    for name, mask in masks.items():
        weight = weights.get(name)
        if weight is None:
            continue
        bad = int((weight.detach().ne(0) & ~mask.to(device=weight.device, dtype=torch.bool)).sum())
        if bad:
            raise ValueError(
                f"{where}: {name} has {bad} nonzero weights where its mask is False: apply the masks first "
                "(e.g. trainer.sparsifier.apply_masks()) or pass masks=None to derive them from the weights"
            )


def save_sparse(
    model: nn.Module,
    save_directory: Union[str, os.PathLike],
    masks: Optional[Mapping[str, torch.Tensor]] = None,
    config: Union[SparsityConfig, Mapping, None] = None,
    compressed: Compressed = False,
    max_shard_size: Union[int, str] = "5GB",
) -> str:
    """Save ``model`` (its weights already sparse) into ``save_directory``; returns the layout written.

    ``masks``: bool tensors by parameter name (True = kept); default ``weight != 0`` over the
    targets of ``config`` (or hf_sparse's default targets). ``compressed``: ``False`` dense +
    masks, ``True`` hf_sparse's native compressed layout, ``"compressed-tensors"`` the
    compressed-tensors 0.14 sparse-bitmask layout. Large models are sharded like ``save_pretrained``.
    The save is a transaction: the new checkpoint is written and checked beside the old one, then
    replaces it (and any earlier save's files that would disagree); a failure keeps the old one.
    """
    fmt = layout_of(compressed)
    directory = os.fspath(save_directory)
    refuse_adapter_folder(directory)
    if fmt == COMPRESSED_TENSORS and _config_json(model) is None:
        raise ValueError(
            f"the compressed-tensors layout needs a transformers model (its config.json carries the layout's "
            f"quantization_config); {type(model).__name__} has no config: save with compressed=True or False"
        )
    config_dict = _config_dict(config)
    masks = resolve_masks(model, masks, config_dict)
    check_weights_follow_masks(dict(model.named_parameters()), masks, "save_sparse")
    save_id = new_save_id()
    with save_transaction(directory, replaced_by_a_save, verify=lambda staging: read_back(staging, model, masks, fmt)) as staging:
        if fmt == DENSE:
            write_dense_checkpoint(staging, lambda header: _write_dense_weights(model, staging, max_shard_size, header), masks,
                                   config_dict, save_id)
        else:
            write_sparsity_config(staging, config_dict)
            writer = _save_native if fmt == NATIVE else _save_compressed_tensors
            writer(model, staging, masks, config_dict, max_shard_size, save_id)
    logger.info("saved %s checkpoint to %s", fmt, directory)
    return fmt
