"""One-shot pruning: magnitude, Wanda and SparseGPT over calibration data, one block at a time.

``prune(model, sparsity=0.5 | pattern="2:4", method=..., calibration=...)`` zeroes the pruned weights
in place and returns (and attaches) the masks; ``SparseTrainer`` continues from them.
"""

from .api import prune
from .magnitude import magnitude_mask
from .sparsegpt import sparsegpt_prune
from .wanda import wanda_mask, wanda_scores

__all__ = ["magnitude_mask", "prune", "sparsegpt_prune", "wanda_mask", "wanda_scores"]
