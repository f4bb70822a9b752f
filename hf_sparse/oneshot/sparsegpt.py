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
    inverse_cholesky: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune ``weight`` (out, in) given ``hessian`` = ``X^T X`` over calibration tokens (in, in).

    Returns (new weight in the input's dtype, mask with True = kept). Unstructured: each block of
    columns prunes exactly ``round(rows * block_columns * sparsity)`` weights (the lowest saliencies of
    the block, so rows differ, as in the paper); N:M: ``m - n`` of every ``m`` consecutive columns per row.
    ``inverse_cholesky``: ``dampened_inverse_cholesky(hessian, dampening)`` when already computed (layers
    that share an input, e.g. q/k/v, share it).

    Speed: the block is held transposed, so column ``j`` is a contiguous row and its update of the
    block's later columns is one outer product into a reused buffer and one in-place subtraction; the
    0/1 prune flags of a block (or of an N:M group) are computed once, not per column. The arithmetic
    is that of the plain per-column loop, operation for operation, so the result is bit-identical to it.
    """
    rows, cols = weight.shape
    if hessian.shape != (cols, cols):
        raise ValueError(f"sparsegpt: Hessian {tuple(hessian.shape)} does not fit a weight with {cols} input features")
    if nm is not None:
        n, m = nm
        if cols % m or block_size % m:
            raise ValueError(f"sparsegpt: N:M needs in_features ({cols}) and block_size ({block_size}) to be multiples of M={m}")
    w = weight.detach().float().clone()
    u = dampened_inverse_cholesky(hessian, dampening) if inverse_cholesky is None else inverse_cholesky
    keep = torch.ones_like(w, dtype=torch.bool)
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        u_block = u[start:end, start:end]
        u_diag = torch.diagonal(u_block)
        if nm is None:
            block_keep = _block_mask(w[:, start:end], u_diag, sparsity)
            prune_t = (~block_keep).t().float()  # (columns, rows): 1.0 where pruned
        else:
            block_keep = torch.ones(rows, end - start, dtype=torch.bool, device=w.device)
            prune_t = torch.empty(end - start, rows, dtype=w.dtype, device=w.device)
        block_t = w[:, start:end].t().contiguous()  # row j = input column start + j
        errors_t = torch.empty_like(block_t)
        update = torch.empty_like(block_t)
        for j in range(end - start):
            if nm is not None and j % m == 0:  # the group's mask from its weights as updated so far
                group = block_t[j:j + m].t().contiguous()
                saliency = group.pow(2) / u_diag[j:j + m].pow(2).unsqueeze(0)
                lowest = torch.topk(saliency, m - n, dim=1, largest=False).indices
                block_keep[:, j:j + m].scatter_(1, lowest, False)
                torch.logical_not(block_keep[:, j:j + m].t(), out=prune_t[j:j + m])  # bool -> 0/1 floats
            error = torch.div(block_t[j], u_diag[j], out=errors_t[j])  # (w - pruned) / U_jj: w / U_jj where pruned, else 0
            error.mul_(prune_t[j])
            if j + 1 < end - start:  # the rest of the block absorbs the error (product, then difference:
                rest = update[j + 1:]  # the roundings of the plain loop, so masks and weights stay bit-identical)
                torch.outer(u_block[j, j + 1:], error, out=rest)
                block_t[j + 1:].sub_(rest)
        w[:, start:end] = block_t.t()
        keep[:, start:end] = block_keep
        if end < cols:
            w[:, end:] -= errors_t.t() @ u[start:end, end:]  # lazy update of the columns to the right
    w.masked_fill_(~keep, 0.0)
    return w.to(weight.dtype), keep


def _block_mask(block: torch.Tensor, u_diag: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Unstructured mask of one block (rows, columns): the ``round(numel * sparsity)`` lowest ``w^2 / U_jj^2`` pruned."""
    keep = torch.ones_like(block, dtype=torch.bool)
    n_prune = int(round(block.numel() * sparsity))
    if n_prune:
        saliency = block.pow(2) / u_diag.pow(2).unsqueeze(0)
        lowest = torch.topk(saliency.reshape(-1), n_prune, largest=False, sorted=False).indices
        keep.view(-1)[lowest] = False
    return keep
