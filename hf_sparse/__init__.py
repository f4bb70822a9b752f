"""hf_sparse: sparse training and fine-tuning inside the Hugging Face Trainer."""

from .callback import SparsityCallback
from .config import SparsityConfig
from .export import save_sparse
from .loading import load_masks, load_sparse
from .lora import MergeResult, merge_and_unload
from .peft_sparsifier import MaskedLoraDeltas, PeftSparsifier
from .inference import from_sparse_inference, to_sparse_inference
from .methods.base import PruningMethod
from .existing_masks import read_masks
from .registry import available_methods, get_method_class, register_method
from .report import SparsityReport, sparsity_report
from .semi_structured import to_semi_structured
from .size_speed import SizeSpeedReport, report  # binds hf_sparse.report to the function (module stays importable)
from .sparsifier import Sparsifier
from .trainer import SparseTrainer
from .hub import push_to_hub

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
    "SizeSpeedReport",
    "SparsityReport",
    "available_methods",
    "from_sparse_inference",
    "get_method_class",
    "load_masks",
    "load_sparse",
    "merge_and_unload",
    "push_to_hub",
    "read_masks",
    "register_method",
    "report",
    "save_sparse",
    "sparsity_report",
    "to_sparse_inference",

    "to_semi_structured",
]
