"""Weight sharing across ResNet blocks (EAST): later blocks reuse block 2's convs times a scalar.

In each stage, every block after the first two computes its convs with ``alpha * W`` where ``W`` is
the matching conv weight of the stage's second block and ``alpha`` a learnable scalar of its own
(init U(0, 1)); each block keeps its own BatchNorm. Only block 2's weights are sparsification
targets (the shared convs are not ``nn.Conv2d``), so one mask governs every use of a weight, and
``uses_of(param)`` tells a method how many convs a weight stands for: the density of the owned
weights is raised so that the effective budget (``(1 - sparsity) x`` the unshared model's conv
weights) is kept. :func:`materialize_shared_weights` turns every shared conv back into an
``nn.Conv2d`` holding ``alpha * W`` (same mask), so the saved model is a plain ResNet.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.nn import functional as F
from transformers import TrainerCallback

from ..core.module_surgery import set_module

logger = logging.getLogger(__name__)

_USES_ATTR = "_hf_sparse_uses"


class SharedConv2d(nn.Module):
    """A conv whose weight is ``scale * source.weight``; ``source`` is not a submodule (no duplicate keys)."""

    def __init__(self, source: nn.Conv2d, like: nn.Conv2d, generator: torch.Generator):
        super().__init__()
        if source.weight.shape != like.weight.shape or like.bias is not None:
            raise ValueError(
                f"cannot share: weight {tuple(source.weight.shape)} vs {tuple(like.weight.shape)} "
                f"(bias: {like.bias is not None})"
            )
        object.__setattr__(self, "source", source)
        init = torch.rand((), generator=generator)
        self.scale = nn.Parameter(init.to(device=source.weight.device, dtype=source.weight.dtype))
        self.stride, self.padding, self.dilation, self.groups = like.stride, like.padding, like.dilation, like.groups
        self.in_channels, self.out_channels = like.in_channels, like.out_channels
        self.kernel_size = like.kernel_size

    def effective_weight(self) -> torch.Tensor:
        return self.scale * self.source.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.effective_weight(), None, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, shared"


def resnet_stages(model: nn.Module) -> list[list[nn.Module]]:
    """The blocks of each stage of a transformers or timm ResNet; a clear error for anything else."""
    from transformers import ResNetModel

    inner = getattr(model, "timm_model", None)
    if inner is not None:
        import timm.models.resnet as timm_resnet

        if isinstance(inner, timm_resnet.ResNet):
            return [list(getattr(inner, f"layer{i}")) for i in range(1, 5)]
    resnet = getattr(model, "resnet", model)
    if isinstance(resnet, ResNetModel):
        return [list(stage.layers) for stage in resnet.encoder.stages]
    try:
        import timm.models.resnet as timm_resnet

        if isinstance(model, timm_resnet.ResNet):
            return [list(getattr(model, f"layer{i}")) for i in range(1, 5)]
    except ImportError:  # pragma: no cover
        pass
    raise ValueError(
        f"weight sharing supports ResNets only (transformers ResNetModel/ResNetForImageClassification, "
        f"timm ResNet or TimmWrapperForImageClassification over one); got {type(model).__name__}"
    )


def _block_convs(block: nn.Module) -> dict[str, nn.Module]:
    """Convs of a block's main path (shortcut/downsample convs excluded), by relative name."""
    return {
        name: m
        for name, m in block.named_modules()
        if isinstance(m, (nn.Conv2d, SharedConv2d)) and not any(k in name for k in ("shortcut", "downsample"))
    }


def share_weights(model: nn.Module, seed: int = 0) -> int:
    """Make blocks 3.. of every stage reuse block 2's convs; returns the number of shared convs."""
    generator = torch.Generator().manual_seed(seed)
    shared = 0
    for blocks in resnet_stages(model):
        if len(blocks) < 3:
            continue
        sources = _block_convs(blocks[1])
        for block in blocks[2:]:
            for name, conv in _block_convs(block).items():
                if isinstance(conv, SharedConv2d):
                    continue
                source = sources.get(name)
                if not isinstance(source, nn.Conv2d):
                    raise ValueError(f"weight sharing: block has conv {name!r} that block 2 lacks")
                set_module(block, name, SharedConv2d(source, conv, generator))
                setattr(source.weight, _USES_ATTR, uses_of(source.weight) + 1)
                shared += 1
    if shared == 0:
        logger.warning("weight sharing: no stage has more than two blocks; nothing is shared")
    return shared


def uses_of(param: torch.Tensor) -> int:
    """How many convs a weight serves (1 unless shared)."""
    return int(getattr(param, _USES_ATTR, 1))


def owned_sparsity(sparsity: float, params: list[torch.Tensor]) -> float:
    """Sparsity over the owned weights that keeps ``(1 - sparsity)`` of the unshared model's weights."""
    owned = sum(p.numel() for p in params)
    effective = sum(p.numel() * uses_of(p) for p in params)
    density = min(1.0, (1.0 - sparsity) * effective / max(owned, 1))
    return max(0.0, 1.0 - density)


@torch.no_grad()
def materialize_shared_weights(model: nn.Module) -> int:
    """Replace each :class:`SharedConv2d` with an ``nn.Conv2d`` holding ``scale * W``; returns the count."""
    names = [name for name, m in model.named_modules() if isinstance(m, SharedConv2d)]
    for name in names:
        shared = model.get_submodule(name)
        weight = shared.effective_weight().detach().clone()
        conv = nn.Conv2d(
            shared.in_channels,
            shared.out_channels,
            shared.kernel_size,
            stride=shared.stride,
            padding=shared.padding,
            dilation=shared.dilation,
            groups=shared.groups,
            bias=False,
        ).to(device=weight.device, dtype=weight.dtype)
        conv.weight.copy_(weight)
        set_module(model, name, conv)
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and hasattr(m.weight, _USES_ATTR):
            delattr(m.weight, _USES_ATTR)
    return len(names)


class MaterializeSharedWeightsCallback(TrainerCallback):
    """At the end of training, turn shared convs into plain ``nn.Conv2d`` so the model saves as a ResNet."""

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if model is not None:
            count = materialize_shared_weights(model)
            logger.info("weight sharing: materialised %d shared convs", count)
