"""The masks a model already has: from hf_sparse metadata, or from exact zeros in its weights.

Fine-tuning an already sparse checkpoint must not make it dense again. Two sources say which
weights are pruned:

- hf_sparse metadata: masks saved beside the weights (``sparse_masks.safetensors``, or implied by
  a compressed layout), found either on the model (``attach_masks``, as a loader does) or in the
  folder the model was loaded from (``model.name_or_path``, set by plain ``from_pretrained``);
- exact zeros: the form in which most sparse models are published (dense ``save_pretrained``).

Folders are read by :func:`hf_sparse.io.load.read_folder_masks`, the one reader of a folder's
masks. ``hf_sparse.core.starting_masks.ExistingMasks`` turns both sources into starting masks for the
engine (pure tensor code; re-exported here with ``masks_from_zeros`` and ``log_masks``).
"""

from __future__ import annotations

import logging
import os
from typing import Mapping, Optional, Union

import torch
from torch import nn

from ..core.starting_masks import (  # noqa: F401  (re-exported: their home before the layers were split)
    AUTO_MIN_SPARSITY,
    ExistingMasks,
    Masks,
    log_masks,
    masks_from_zeros,
    per_layer_sparsity,
)

logger = logging.getLogger(__name__)

#: Attribute a loader sets on a model to hand its masks to the engine (bool tensors by parameter name).
MASKS_ATTR = "hf_sparse_masks"


def attach_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Record ``masks`` (parameter name -> bool tensor, True = kept) on ``model`` for the engine."""
    setattr(model, MASKS_ATTR, {name: torch.as_tensor(m).to(torch.bool) for name, m in masks.items()})
    return model


def _model_folder(model: nn.Module) -> Optional[str]:
    path = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    return path if isinstance(path, str) and path and os.path.isdir(path) else None


def read_masks(model_or_dir: Union[nn.Module, str, os.PathLike]) -> Optional[Masks]:
    """Masks recorded by hf_sparse for a model or a folder, or None when there are none.

    A model: masks attached by a loader (``attach_masks``), else those in the folder it was loaded
    from. A folder: the masks saved there (:func:`hf_sparse.io.load.read_folder_masks`). Exact
    zeros are not metadata: see ``masks_from_zeros``.
    """
    from .load import read_folder_masks  # load builds on this module
    if isinstance(model_or_dir, nn.Module):
        attached = getattr(model_or_dir, MASKS_ATTR, None)
        if attached is not None:
            return dict(attached)
        folder = _model_folder(model_or_dir)
        return read_masks(folder) if folder else None
    directory = os.fspath(model_or_dir)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"read_masks: {directory!r} is not a folder")
    return read_folder_masks(directory) or None
