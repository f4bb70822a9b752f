"""hf_sparse: sparse training and fine-tuning inside the Hugging Face Trainer."""

from .callback import SparsityCallback
from .config import SparsityConfig
from .inference import from_sparse_inference, to_sparse_inference
from .methods.base import PruningMethod
from .registry import available_methods, get_method_class, register_method
from .report import SparsityReport, sparsity_report
from .sparsifier import Sparsifier
from .trainer import SparseTrainer

__version__ = "0.1.0"

__all__ = [
    "PruningMethod",
    "SparseTrainer",
    "Sparsifier",
    "SparsityCallback",
    "SparsityConfig",
    "SparsityReport",
    "available_methods",
    "from_sparse_inference",
    "get_method_class",
    "register_method",
    "sparsity_report",
    "to_sparse_inference",
]
