"""A saved sparse folder to a fast model or pipeline in one call, reusing the plan saved with it.

    pipe = hf_sparse.inference.serving.sparse_pipeline("text-classification", folder)

loads the folder (any layout, :func:`hf_sparse.load_sparse`), puts CSR kernels where its saved
``sparse_inference_plan.json`` says (no timing, on the same kind of machine; else it re-times on
``example_inputs`` or random tokens, and logs why), and builds the ``transformers.pipeline`` with
the tokenizer / image processor saved in the folder.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from torch import nn

from .loaded import convert_loaded

_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.txt")
_PROCESSOR_FILES = ("preprocessor_config.json",)


def load_sparse_inference(folder: str | os.PathLike, example_inputs: Any = None, **convert_kwargs: Any) -> nn.Module:
    """The model saved in ``folder``, in eval mode, on CSR kernels: by its saved plan when one was
    measured on this kind of machine, else timed here (on ``example_inputs`` when given).
    ``convert_kwargs`` go to :func:`hf_sparse.to_sparse_inference`."""
    from ..io.load import load_sparse

    model, masks = load_sparse(folder)
    return convert_loaded(model, masks, folder, example_inputs, **convert_kwargs)


def sparse_pipeline(task: str, folder: str | os.PathLike, example_inputs: Any = None, *,
                    convert_kwargs: Optional[dict] = None, **pipeline_kwargs: Any) -> Any:
    """``transformers.pipeline(task, ...)`` over the sparse model saved in ``folder`` (see module doc).

    The tokenizer and image processor come from ``folder`` unless given in ``pipeline_kwargs``."""
    from transformers import pipeline

    folder = os.fspath(folder)
    model = load_sparse_inference(folder, example_inputs, **(convert_kwargs or {}))
    if "tokenizer" not in pipeline_kwargs and any(os.path.isfile(os.path.join(folder, f)) for f in _TOKENIZER_FILES):
        pipeline_kwargs["tokenizer"] = folder
    if "image_processor" not in pipeline_kwargs and any(os.path.isfile(os.path.join(folder, f)) for f in _PROCESSOR_FILES):
        pipeline_kwargs["image_processor"] = folder
    pipeline_kwargs.setdefault("device", "cpu")
    return pipeline(task, model=model, **pipeline_kwargs)


__all__ = ["load_sparse_inference", "sparse_pipeline"]
