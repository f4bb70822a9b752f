"""The one bit-packer: bool masks to uint8 bytes and back (checkpoint formats, inference buffers).

Little bit order along the last dimension, as numpy's ``packbits(..., bitorder="little")``: bit
``j % 8`` of byte ``j // 8`` is column ``j``; each row is padded with zero bits. That is the layout of
hf_sparse's native format, its masks file and the compressed-tensors bitmask, so all three share
this code. CPU tensors go through numpy (about 10x faster than the torch loop); others stay on
their device, so a packed buffer can live beside the module that uses it.
"""

from __future__ import annotations

import numpy as np
import torch

_BIT_VALUES = (1, 2, 4, 8, 16, 32, 64, 128)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Pack a bool ``[..., cols]`` mask into uint8 ``[..., ceil(cols/8)]`` (a 0-d mask counts as ``[1, 1]``)."""
    flags = mask.detach().to(torch.bool)
    if flags.dim() == 0:
        flags = flags.reshape(1, 1)
    if flags.device.type == "cpu":
        return torch.from_numpy(np.packbits(flags.numpy(), axis=-1, bitorder="little"))
    return _pack_torch(flags)


def unpack_bits(packed: torch.Tensor, cols: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: bool ``[..., cols]`` (padding bits dropped)."""
    if packed.device.type == "cpu":
        return torch.from_numpy(np.unpackbits(packed.numpy(), axis=-1, count=cols, bitorder="little").astype(bool))
    return _unpack_torch(packed, cols)


def _pack_torch(flags: torch.Tensor) -> torch.Tensor:
    pad = (-flags.shape[-1]) % 8
    if pad:
        flags = torch.cat([flags, flags.new_zeros(*flags.shape[:-1], pad)], dim=-1)
    groups = flags.reshape(*flags.shape[:-1], -1, 8).to(torch.uint8)
    weights = torch.tensor(_BIT_VALUES, dtype=torch.uint8, device=flags.device)
    return (groups * weights).sum(-1, dtype=torch.uint8)


def _unpack_torch(packed: torch.Tensor, cols: int) -> torch.Tensor:
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(*packed.shape[:-1], -1)[..., :cols].to(torch.bool)


def pack_flat(flags: torch.Tensor) -> torch.Tensor:
    """Pack any bool tensor, flattened, into ``ceil(numel/8)`` bytes."""
    return pack_bits(flags.reshape(-1))


def unpack_flat(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_flat`: a flat bool tensor of ``numel`` entries."""
    return unpack_bits(packed.reshape(-1), numel)
