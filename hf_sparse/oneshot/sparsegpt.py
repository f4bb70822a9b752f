"""SparseGPT: one-shot pruning with weight reconstruction (Frantar & Alistarh, 2023, "SparseGPT:
Massive Language Models Can Be Accurately Pruned in One-Shot").

For a Linear ``W`` (out, in) and its calibration inputs ``X`` (tokens, in), the layer-wise problem is
``min ||W X^T - W' X^T||^2`` with ``W'`` sparse. With ``H = X^T X`` (dampened by a fraction of its mean
diagonal) and the upper Cholesky factor ``U`` of ``H^-1``, columns are processed left to right in
blocks of ``block_size``: inside a block the mask is chosen by the OBS saliency ``w^2 / U_jj^2``
(over the whole block for unstructured sparsity, per group of ``m`` columns for N:M), each pruned
weight's error ``(w - 0) / U_jj`` is spread over the block's later columns through row ``j`` of ``U``
(the optimal update of the weights still to be processed), and at the end of the block the
accumulated errors update every column to its right. Kept weights move; pruned ones are exactly 0.
"""

from __future__ import annotations

from typing import Optional

import torch


def dampened_inverse_cholesky(hessian: torch.Tensor, dampening: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + dampening * mean(diag H) * I)^-1`` in fp32.

    Features never seen (zero diagonal) get a diagonal of 1 so the factorisation exists. If the
    factorisation still fails (an ill-conditioned H in fp32), the dampening grows tenfold, up to 3 times.
    """
    h = hessian.detach().float().clone()
    diagonal = torch.diagonal(h)
    dead = diagonal == 0
    diagonal[dead] = 1.0
    mean = float(diagonal.mean())
    damp = dampening
    for _ in range(4):
        try:
            dampened = h + damp * mean * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
            inverse = torch.cholesky_inverse(torch.linalg.cholesky(dampened))
            return torch.linalg.cholesky(inverse, upper=True)
        except torch.linalg.LinAlgError:
            damp *= 10
    raise ValueError(
        f"sparsegpt: the calibration Hessian ({h.shape[0]} features) is not positive definite even with "
        f"dampening {damp / 10:g} of its mean diagonal; give more calibration tokens"
    )


@torch.no_grad()
def sparsegpt_prune(
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
