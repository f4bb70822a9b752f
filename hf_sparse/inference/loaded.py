"""Converting a model just loaded from a folder, by the inference plan saved in that folder.

The one place every loader converts (``hf_sparse.load_sparse(..., sparse_inference=True)``,
:func:`hf_sparse.inference.serving.load_sparse_inference`, ``sparse_pipeline``), so that they all
treat a saved ``sparse_inference_plan.json`` the same way. Kept out of ``serving`` (an application
layer) so that ``hf_sparse.io`` may call it.
"""

from __future__ import annotations

import os
import re
from typing import Any

from torch import nn

from .convert import to_sparse_inference
from .plan import PLAN_FILE


def convert_loaded(model: nn.Module, masks: dict, folder: str | os.PathLike, example_inputs: Any = None,
                   **convert_kwargs: Any) -> nn.Module:
    """Put a model just loaded from ``folder`` on CSR kernels over the layers its ``masks`` name,
    by the plan saved in ``folder`` when there is one (applied without timing on the same kind of
    machine; re-timed, with a warning saying what differs, elsewhere). The one place every loader
    (``load_sparse_inference``, ``load_sparse(..., sparse_inference=True)``) converts."""
    folder = os.fspath(folder)
    model.eval()
    patterns = [f"^{re.escape(name.rsplit('.', 1)[0])}$" for name in masks if name.endswith(".weight")]
    convert_kwargs.setdefault("targets", patterns or None)
    if os.path.isfile(os.path.join(folder, PLAN_FILE)):
        convert_kwargs.setdefault("plan", folder)
    return to_sparse_inference(model, example_inputs, **convert_kwargs)


__all__ = ["convert_loaded"]
