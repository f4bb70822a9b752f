"""The first hf_sparse SparseGPT (commit 246fc64), kept verbatim as a reference: a plain loop over
the columns of each block, one in-place update of the block per column, written for clarity.
``hf_sparse.oneshot.sparsegpt_prune`` must give the same masks and the same weights up to float
rounding (tests/oneshot/test_sparsegpt_speedup.py)."""

from __future__ import annotations

from typing import Optional

import torch

from hf_sparse.oneshot.sparsegpt import dampened_inverse_cholesky


@torch.no_grad()
def reference_sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    nm: Optional[tuple[int, int]] = None,
    block_size: int = 128,
    dampening: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune ``weight`` (out, in) given ``hessian`` = ``X^T X`` over calibration tokens (in, in).

    Returns (new weight in the input's dtype, mask with True = kept). Unstructured: each block of
    columns prunes exactly ``round(rows * block_columns * sparsity)`` weights (the lowest saliencies of
    the block, so rows differ, as in the paper); N:M: ``m - n`` of every ``m`` consecutive columns per row.
    """
    rows, cols = weight.shape
    if hessian.shape != (cols, cols):
        raise ValueError(f"sparsegpt: Hessian {tuple(hessian.shape)} does not fit a weight with {cols} input features")
    if nm is not None:
        n, m = nm
        if cols % m or block_size % m:
            raise ValueError(f"sparsegpt: N:M needs in_features ({cols}) and block_size ({block_size}) to be multiples of M={m}")
    w = weight.detach().float().clone()
    u = dampened_inverse_cholesky(hessian, dampening)
    keep = torch.ones_like(w, dtype=torch.bool)
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        block = w[:, start:end].clone()
        u_block = u[start:end, start:end]
        u_diag = torch.diagonal(u_block)
        errors = torch.zeros_like(block)
        block_keep = torch.ones_like(block, dtype=torch.bool)
        if nm is None:
            saliency = block.pow(2) / u_diag.pow(2).unsqueeze(0)
            n_prune = int(round(block.numel() * sparsity))
            if n_prune:
                lowest = torch.topk(saliency.reshape(-1), n_prune, largest=False, sorted=False).indices
                block_keep.view(-1)[lowest] = False
        for j in range(end - start):
            if nm is not None and j % nm[1] == 0:
                group = slice(j, j + nm[1])
                saliency = block[:, group].pow(2) / u_diag[group].pow(2).unsqueeze(0)
                lowest = torch.topk(saliency, nm[1] - nm[0], dim=1, largest=False).indices
                block_keep[:, group].scatter_(1, lowest, False)
            column = block[:, j]
            pruned = torch.where(block_keep[:, j], column, torch.zeros_like(column))
            error = (column - pruned) / u_block[j, j]
            block[:, j:] -= error.unsqueeze(1) * u_block[j, j:].unsqueeze(0)
            block[:, j] = pruned  # exactly the kept value or 0 (the update above moved it by its own error)
            errors[:, j] = error
        w[:, start:end] = block
        keep[:, start:end] = block_keep
        w[:, end:] -= errors @ u[start:end, end:]
    w.masked_fill_(~keep, 0.0)
    return w.to(weight.dtype), keep
