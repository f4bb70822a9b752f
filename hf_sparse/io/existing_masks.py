"""The masks a model already has: from hf_sparse metadata, or from exact zeros in its weights.

Fine-tuning an already sparse checkpoint must not make it dense again. Two sources say which
weights are pruned:

- hf_sparse metadata: masks saved beside the weights (``sparse_masks.safetensors``, or implied by
  a compressed layout), found either on the model (``attach_masks``, as a loader does) or in the
  folder the model was loaded from (``model.name_or_path``, set by plain ``from_pretrained``);
- exact zeros: the form in which most sparse models are published (dense ``save_pretrained``).

Folders are read by :func:`hf_sparse.io.load.read_folder_masks`, the one reader of a folder's
masks. ``ExistingMasks`` turns both sources into starting masks for the engine (pure tensor code).
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Mapping, Optional, Union

import torch
from torch import nn

from ..config import INITIAL_MASKS
from ..core.masks import nonzero_mask, overall_sparsity

logger = logging.getLogger(__name__)

Masks = dict[str, torch.Tensor]

#: Attribute a loader sets on a model to hand its masks to the engine (bool tensors by parameter name).
MASKS_ATTR = "hf_sparse_masks"
#: Under ``initial_masks="auto"``, targeted weights at least this sparse (exact zeros) are treated
#: as already pruned; below it, stray exact zeros of a dense model (e.g. bf16 round-off) are ignored.
AUTO_MIN_SPARSITY = 0.01


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


def masks_from_zeros(weights: Mapping[str, torch.Tensor]) -> Masks:
    """True where a weight is nonzero: the masks of a model published dense-with-zeros.

    The one ``weight != 0`` mask builder of the checkpoint code (save, load, inspect use it).
    """
    return {name: nonzero_mask(w) for name, w in weights.items()}


def per_layer_sparsity(masks: Mapping[str, torch.Tensor]) -> dict[str, float]:
    return {name: 1.0 - int(m.sum()) / max(m.numel(), 1) for name, m in masks.items()}


class ExistingMasks:
    """Starting masks for a fresh run, from metadata, zeros or nothing (pure tensor code).

    ``metadata`` is loaded lazily (only a mode that wants it pays for reading it).
    """

    def __init__(
        self,
        weights: Mapping[str, torch.Tensor],
        metadata: Union[Masks, Callable[[], Optional[Masks]], None] = None,
    ):
        self.weights = dict(weights)
        self._metadata = metadata
        self._metadata_loaded = not callable(metadata)

    # -- the two sources ----------------------------------------------------------------------
    def metadata(self) -> Optional[Masks]:
        """Metadata masks for the targeted weights (others from zeros), or None if none match."""
        if not self._metadata_loaded:
            self._metadata = self._metadata()  # type: ignore[operator]
            self._metadata_loaded = True
        saved = self._metadata
        if not saved:
            return None
        covered = {n for n in self.weights if n in saved and tuple(saved[n].shape) == tuple(self.weights[n].shape)}
        if not covered:
            logger.warning(
                "hf_sparse metadata masks match none of the targeted weights (saved %d masks, e.g. %s); ignoring them",
                len(saved), sorted(saved)[:2],
            )
            return None
        zeros = masks_from_zeros(self.weights)
        masks = {n: saved[n].to(device=w.device, dtype=torch.bool) if n in covered else zeros[n] for n, w in self.weights.items()}
        missing = sorted(set(self.weights) - covered)
        if missing:
            logger.warning("hf_sparse metadata has no mask for %d targeted weights %s: masks from exact zeros", len(missing), missing[:3])
        revived = sum(int((~masks[n] & (self.weights[n] != 0)).sum()) for n in covered)
        if revived:
            logger.warning("%d weights are nonzero where the metadata masks prune them: they will be zeroed", revived)
        return masks

    def zeros(self) -> Masks:
        return masks_from_zeros(self.weights)

    def dense(self) -> Masks:
        return {name: torch.ones_like(w, dtype=torch.bool) for name, w in self.weights.items()}

    # -- policies --------------------------------------------------------------------------------
    def metadata_or_zeros(self) -> tuple[Masks, str]:
        masks = self.metadata()
        return (masks, "metadata") if masks is not None else (self.zeros(), "zeros")

    def resolve(self, mode: str) -> tuple[Masks, str]:
        """Masks for ``SparsityConfig.initial_masks`` and the source actually used."""
        if mode == "dense":
            return self.dense(), "dense"
        if mode == "zeros":
            return self.zeros(), "zeros"
        if mode == "metadata":
            masks = self.metadata()
            if masks is None:
                raise ValueError(
                    "initial_masks='metadata' but the model carries no hf_sparse masks (none attached with "
                    "hf_sparse.io.existing_masks.attach_masks, no sparse_masks.safetensors in its folder); "
                    "use initial_masks='zeros' for a model published dense-with-zeros"
                )
            return masks, "metadata"
        if mode == "auto":
            masks = self.metadata()
            if masks is not None:
                return masks, "metadata"
            zeros = self.zeros()
            if overall_sparsity(zeros) >= AUTO_MIN_SPARSITY:
                return zeros, "zeros"
            return self.dense(), "dense"
        raise ValueError(f"initial_masks must be one of {INITIAL_MASKS}, got {mode!r}")


def log_masks(masks: Mapping[str, torch.Tensor], source: str, who: str = "hf_sparse") -> None:
    """Log where starting masks came from and the inferred per-layer sparsity."""
    if source == "dense":
        logger.info("%s: starting from dense masks", who)
        return
    logger.info("%s: starting masks from %s, overall sparsity %.2f%%", who, source, 100 * overall_sparsity(masks))
    for name, value in per_layer_sparsity(masks).items():
        logger.info("  %s: %.2f%%", name, 100 * value)
