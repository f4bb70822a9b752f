"""Tiny ResNets and a learnable tiny image dataset for the vision tests (nothing downloads)."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

IMAGE_SIZE = 16


class TinyImages(Dataset):
    """Random 16x16 RGB images; the label is the brightest channel (learnable by a CNN)."""

    def __init__(self, n: int = 48, seed: int = 0, classes: int = 3):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.rand(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
        self.y = torch.randint(0, classes, (n,), generator=g)
        self.x[torch.arange(n), self.y] += 1.0

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": self.x[i], "labels": self.y[i]}


def tiny_hf_resnet(seed: int = 0, depths=(3, 3), classes: int = 3):
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(seed)
    config = ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=list(depths), layer_type="basic", num_labels=classes
    )
    return ResNetForImageClassification(config)


def tiny_timm_resnet(seed: int = 0, classes: int = 3):
    """timm resnet18 (11M params) is slow on a shared CPU; a narrow resnet via model_args keeps it small."""
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    torch.manual_seed(seed)
    config = TimmWrapperConfig(
        architecture="resnet18", num_labels=classes, model_args={"layers": [1, 3, 1, 1], "channels": [8, 16, 16, 16], "stem_width": 8}
    )
    return TimmWrapperForImageClassification(config)
