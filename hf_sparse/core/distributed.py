"""Ranks: identical masks under DDP, and FSDP2's row-sharded parameters.

DDP: decisions are already computed from synchronised values (weights kept equal by DDP, seeded
generators); the broadcast from rank 0 guards against any drift (e.g. float ties resolved differently).

FSDP2: every rank holds row chunks of each weight (DTensor, ``Shard(0)``); the helpers below find
a rank's rows, cut whole tensors into them, gather them back for saving, and build the
:class:`~hf_sparse.core.reduction.Reduction` the exact selections communicate through.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch
import torch.distributed as dist

from .reduction import LOCAL, GroupReduction, Reduction


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of the default process group; ``(0, 1)`` when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def world_size() -> int:
    return rank_and_world()[1]


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


# -- FSDP2: parameters are DTensors sharded by rows (Shard(0) on a 1-D mesh) ----------------------
def is_sharded(tensor: object) -> bool:
    """Whether ``tensor`` is a DTensor (an FSDP2 parameter, its gradient or optimizer state)."""
    if not dist.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``tensor`` (a view: in-place changes reach the sharded storage)."""
    return tensor.to_local() if is_sharded(tensor) else tensor


def shard_rows(param: torch.Tensor) -> tuple[int, int]:
    """(first row, row count) of this rank's chunk of a row-sharded parameter.

    FSDP2 splits dim 0 like ``torch.chunk``: ceil(rows / world) per rank, the last chunks possibly
    short or empty. Anything else (HSDP's 2-D mesh, other placements) is refused: the selections
    assume rank order = row order over one process group.
    """
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    if param.device_mesh.ndim != 1 or tuple(param.placements) != (Shard(0),):
        raise ValueError(
            f"hf_sparse under FSDP2 needs parameters sharded by rows on a 1-D mesh (Shard(0)), got placements "
            f"{tuple(param.placements)} on a {param.device_mesh.ndim}-D mesh (HSDP / tensor parallel are not supported)"
        )
    shape, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
    if tuple(shape) != tuple(param.to_local().shape):
        raise ValueError(f"unexpected FSDP2 shard: local {tuple(param.to_local().shape)} vs computed {tuple(shape)}")
    return int(offset[0]) if len(offset) else 0, int(shape[0]) if len(shape) else 1


def cut_rows(full: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """This rank's rows of ``full`` (a tensor shaped like the whole ``param``); no communication."""
    if not is_sharded(param):
        return full
    first, rows = shard_rows(param)
    return full[first: first + rows].clone()


def gather_rows(part: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """The whole tensor from every rank's rows ``part`` (a collective; every rank gets it).

    For saving only: masks and per-weight state are never kept whole during training.
    """
    if not is_sharded(param):
        return part
    from torch.distributed.tensor import DTensor

    wire = part.to(torch.uint8) if part.dtype == torch.bool else part  # gloo has no bool collectives
    whole = DTensor.from_local(
        wire.to(param.to_local().device), param.device_mesh, param.placements,
        run_check=False, shape=param.shape, stride=param.stride(),
    ).full_tensor().cpu()
    return whole.to(torch.bool) if part.dtype == torch.bool else whole


def shard_reduction(params: Iterable[torch.Tensor]) -> Reduction:
    """The reduction over the process group the parameters are sharded on (``LOCAL`` if none is)."""
    params = list(params)
    sharded = [is_sharded(p) for p in params]
    if not any(sharded):
        return LOCAL
    if not all(sharded):
        raise ValueError(
            "under FSDP2 every targeted weight must be sharded, but "
            f"{sharded.count(False)} of {len(params)} are plain tensors: wrap their modules with fully_shard too"
        )
    meshes = {id(p.device_mesh) for p in params}
    for p in params:
        shard_rows(p)  # validates the placement
    if len(meshes) > 1 and len({tuple(p.device_mesh.mesh.tolist()) for p in params}) > 1:
        raise ValueError("targeted weights are sharded over different device meshes; hf_sparse needs one")
    return GroupReduction(params[0].device_mesh.get_group())


def reshard_fsdp(model: torch.nn.Module) -> None:
    """Put FSDP2 modules back into their sharded state.

    After a forward-only pass (``evaluate()``) the root group's parameters stay unsharded plain
    ``Parameter``s until the next backward; the sharded DTensors are what the optimizer holds.
    """
    if not dist.is_available():
        return
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()
