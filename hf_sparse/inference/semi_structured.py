"""2:4 semi-structured sparse Linear weights for GPU inference (PyTorch's ``to_sparse_semi_structured``).

NVIDIA GPUs from Ampere (compute capability 8.0) on multiply 2:4-sparse weights with sparse tensor
cores (CUTLASS / cuSPARSELt kernels in PyTorch), the only sparse pattern that commonly runs faster
than dense at 50%. Unstructured sparsity, CPUs and older GPUs get a clear error instead.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import torch
from torch import nn

from ..core.patterns import detect_pattern
from ..core.targets import find_targets

logger = logging.getLogger(__name__)

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)
MIN_CAPABILITY = (8, 0)


class SemiStructuredUnsupportedError(RuntimeError):
    """The model or the device cannot use 2:4 semi-structured sparse kernels."""


def _check_device(device: torch.device) -> None:
    if device.type != "cuda":
        raise SemiStructuredUnsupportedError(
            f"to_semi_structured needs the model on a CUDA GPU with compute capability >= "
            f"{MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} (sparse tensor cores); its weights are on {device.type!r}. "
            "Move the model with model.to('cuda', torch.float16) first; on CPU use unstructured sparse kernels "
            "(hf_sparse.inference.convert.to_sparse_inference) instead."
        )
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        raise SemiStructuredUnsupportedError(
            f"to_semi_structured needs compute capability >= {MIN_CAPABILITY}; "
            f"{torch.cuda.get_device_name(device)} has {capability}"
        )


@torch.no_grad()
def to_semi_structured(
    model: nn.Module,
    targets: Optional[Sequence[str]] = None,
    ignore: Optional[Sequence[str]] = None,
) -> nn.Module:
    """Convert every 2:4-sparse targeted ``nn.Linear`` weight in place; returns the model.

    Inference only: the converted weights do not train. Layers that are not 2:4, or whose shape or
    dtype the kernels reject, stay dense (logged); no 2:4 layer at all is an error.
    """
    from torch.sparse import to_sparse_semi_structured

    found = [t for t in find_targets(model, targets, ignore) if isinstance(_module(model, t.module_name), nn.Linear)]
    if not found:
        raise ValueError("to_semi_structured: the model has no targeted nn.Linear layers")
    _check_device(found[0].param.device)
    converted, skipped = [], []
    for target in found:
        module = _module(model, target.module_name)
        weight = module.weight
        if weight.dtype not in SUPPORTED_DTYPES:
            raise SemiStructuredUnsupportedError(
                f"to_semi_structured supports weight dtypes {[str(d) for d in SUPPORTED_DTYPES]}; "
                f"{target.name} is {weight.dtype}: call model.half() or model.to(torch.bfloat16) first"
            )
        if detect_pattern(weight, in_dim=1) != "2:4":
            skipped.append(f"{target.name} (not 2:4)")
            continue
        try:
            module.weight = nn.Parameter(to_sparse_semi_structured(weight.detach()), requires_grad=False)
        except (RuntimeError, ValueError) as err:  # shape constraints of the kernels
            skipped.append(f"{target.name} ({err})")
            continue
        converted.append(target.name)
    if not converted:
        raise ValueError(f"to_semi_structured: no layer could be converted: {skipped}")
    logger.info("to_semi_structured: %d Linear weights converted, %d left dense %s", len(converted), len(skipped), skipped[:3])
    return model


def _module(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)
