"""Starting masks for a fresh run from the masks a model already has: hf_sparse metadata, exact zeros in
its weights, or nothing (pure tensor code; reading them from a model or a folder is
``hf_sparse.io.existing_masks``). Methods choose through ``PruningMethod.starting_masks``."""

from __future__ import annotations

import logging
from typing import Callable, Mapping, Optional, Union

import torch

from .choices import INITIAL_MASKS
from .masks import nonzero_mask, overall_sparsity

logger = logging.getLogger(__name__)

Masks = dict[str, torch.Tensor]
#: Under ``initial_masks="auto"``, targeted weights at least this sparse (exact zeros) are treated
#: as already pruned; below it, stray exact zeros of a dense model (e.g. bf16 round-off) are ignored.
AUTO_MIN_SPARSITY = 0.01


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
