"""hf_sparse: sparse training and fine-tuning inside the Hugging Face Trainer."""

from .callback import SparsityCallback
from .config import SparsityConfig
from .distill import DistillationConfig
from .methods.base import PruningMethod
from .presets import available_presets, recommend_schedule_scale
from .registry import available_methods, get_method_class, register_method
from .report import SparsityReport, sparsity_report
from .sparsifier import Sparsifier
from .trainer import SparseTrainer

__version__ = "0.1.0"

__all__ = [
    "DistillationConfig",
    "PruningMethod",
    "SparseTrainer",
    "Sparsifier",
    "SparsityCallback",
    "SparsityConfig",
    "SparsityReport",
    "available_methods",
    "available_presets",
    "get_method_class",
    "recommend_schedule_scale",
    "register_method",
    "sparsity_report",
]
