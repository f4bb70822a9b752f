"""Keep masks identical on every rank: broadcast from rank 0 (a no-op on one process).

Decisions are already computed from synchronised values (weights kept equal by DDP, seeded
generators); the broadcast guards against any drift (e.g. float ties resolved differently).
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def broadcast_masks(masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Return rank 0's masks on every rank."""
    if world_size() == 1:
        return dict(masks)
    backend = dist.get_backend()
    synced = {}
    for name, mask in masks.items():
        buffer = mask.to(torch.uint8)
        if backend == "nccl" and not buffer.is_cuda:
            buffer = buffer.cuda()
        dist.broadcast(buffer, src=0)
        synced[name] = buffer.to(device=mask.device, dtype=torch.bool)
    return synced


def gather_masks_equal(masks: Mapping[str, torch.Tensor]) -> bool:
    """True when every rank holds bitwise the same masks (for tests and debugging)."""
    if world_size() == 1:
        return True
    rank0 = broadcast_masks(masks)
    equal = torch.tensor([int(all(torch.equal(rank0[n], masks[n]) for n in masks))])
    dist.all_reduce(equal, op=dist.ReduceOp.MIN)
    return bool(equal.item())


def shutdown_distributed() -> None:
    """Leave the process group cleanly at the end of a launched script (all ranks together).

    Ranks that exit one by one with the group alive have been seen to abort at interpreter exit
    ("terminate called without an active exception") after their work succeeded.
    """
    if world_size() > 1:
        dist.barrier()
        dist.destroy_process_group()
