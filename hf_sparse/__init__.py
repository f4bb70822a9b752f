"""hf_sparse: sparse training and fine-tuning inside the Hugging Face Trainer."""

from .training.callback import SparsityCallback
from .config import SparsityConfig
from .training.distill import DistillationConfig
from .io.save import save_sparse
from .io.load import load_masks, load_sparse
from .lora.merge import MergeResult, merge_and_unload
from .lora.peft_sparsifier import MaskedLoraDeltas, PeftSparsifier
from .inference.convert import from_sparse_inference, to_sparse_inference
from .methods.base import PruningMethod
from .io.existing_masks import read_masks
from .training.presets import available_presets, recommend_schedule_scale
from .registry import available_methods, get_method_class, register_method
from .reporting.sparsity_report import SparsityReport, sparsity_report
from .inference.semi_structured import to_semi_structured
from .reporting.size_speed import SizeSpeedReport, report  # hf_sparse.report is the function (no module of that name)
from .core.sparsifier import Sparsifier
from .training.trainer import SparseTrainer
from .io.hub import push_to_hub

__version__ = "0.1.0"

__all__ = [
    "DistillationConfig",
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
    "available_presets",
    "from_sparse_inference",
    "get_method_class",
    "load_masks",
    "load_sparse",
    "merge_and_unload",
    "push_to_hub",
    "read_masks",
    "recommend_schedule_scale",
    "register_method",
    "report",
    "save_sparse",
    "sparsity_report",
    "to_sparse_inference",

    "to_semi_structured",
]
