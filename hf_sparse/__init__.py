"""hf_sparse: sparse training and fine-tuning inside the Hugging Face Trainer."""

from .callback import SparsityCallback
from .config import SparsityConfig
from .lora import MergeResult, merge_and_unload
from .peft_sparsifier import MaskedLoraDeltas, PeftSparsifier
from .methods.base import PruningMethod
from .registry import available_methods, get_method_class, register_method
from .report import SparsityReport, sparsity_report
from .sparsifier import Sparsifier
from .trainer import SparseTrainer

__version__ = "0.1.0"

__all__ = [
    "MaskedLoraDeltas",
    "MergeResult",
    "PeftSparsifier",
    "PruningMethod",
    "SparseTrainer",
    "Sparsifier",
    "SparsityCallback",
    "SparsityConfig",
    "SparsityReport",
    "available_methods",
    "get_method_class",
    "merge_and_unload",
    "register_method",
    "sparsity_report",
]
