"""The kernel forms behind ``hf_sparse.inference.sparse_linear.SparseLinear``, one Linear at a time, on this CPU.

For each weight shape (all-MiniLM-L6-v2's 384x384, 1536x384 and 384x1536), sparsity and token
count, times ``F.linear`` (dense) against the CSR forms ``to_sparse_inference`` can choose from,
each including the copies it needs in a model (transposed input in, contiguous output out):

- ``spmm``: ``torch.sparse.mm(W_csr, x^T, "sum")`` (torch's own CSR kernel) + bias;
- ``mkl``:  ``torch.addmm(b, W_csr, x^T)`` with int32 indices (MKL);
- ``*-core``: the same kernel alone on a ready transposed input (what a chained layer pays).

Rounds are interleaved (dense, spmm, mkl, ...) and the table gives medians and speedups over dense.

    python benchmarks/sparse_kernels.py [--threads 1] [--tokens 8,128,1024,4096]

Writes benchmarks/results/sparse_kernels.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import warnings

import torch

from hf_sparse.inference.timing import interleaved_rounds
from hf_sparse.io.files import atomic_write_text

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SHAPES = [(384, 384), (1536, 384), (384, 1536)]


def csr_int32(weight: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        csr = weight.to_sparse_csr()
    return torch.sparse_csr_tensor(csr.crow_indices().int(), csr.col_indices().int(), csr.values(), csr.shape, check_invariants=False)


def interleaved(fns: dict, rounds: int) -> dict[str, float]:
    """Median ms per candidate over interleaved rounds (the package's one timing loop)."""
    return {k: 1e3 * statistics.median(v) for k, v in interleaved_rounds(fns, rounds).items()}


@torch.inference_mode()
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--tokens", default="8,128,1024,4096")
    parser.add_argument("--sparsities", default="0.5,0.9,0.95,0.99")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    header = "| out x in | sparsity | tokens | dense ms | spmm | mkl | spmm-core | mkl-core |"
    lines = [
        f"# sparse_kernels: one Linear, dense vs CSR forms ({torch.get_num_threads()} threads, torch {torch.__version__})",
        "",
        f"Load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}. Cells: ms (speedup over dense).",
        "",
        header,
        "|---|---|---|---|---|---|---|---|",
    ]
    print(header)
    for out_f, in_f in SHAPES:
        for sparsity in [float(s) for s in args.sparsities.split(",")]:
            w = torch.randn(out_f, in_f, generator=g) * (torch.rand(out_f, in_f, generator=g) > sparsity)
            b = torch.randn(out_f, generator=g)
            w_csr = csr_int32(w)
            for tokens in [int(t) for t in args.tokens.split(",")]:
                x = torch.randn(tokens, in_f, generator=g)
                x_t = x.t().contiguous()
                t = interleaved(
                    {
                        "dense": lambda: torch.nn.functional.linear(x, w, b),
                        "spmm": lambda: torch.sparse.mm(w_csr, x.t().contiguous(), "sum").t().contiguous().add_(b),
                        "mkl": lambda: torch.addmm(b[:, None], w_csr, x.t().contiguous()).t().contiguous(),
                        "spmm-core": lambda: torch.sparse.mm(w_csr, x_t, "sum"),
                        "mkl-core": lambda: torch.addmm(b[:, None], w_csr, x_t),
                    },
                    args.rounds,
                )
                cells = " | ".join(f"{t[k]:.3f} ({t['dense'] / t[k]:.2f}x)" for k in ("spmm", "mkl", "spmm-core", "mkl-core"))
                row = f"| {out_f}x{in_f} | {sparsity:.0%} | {tokens} | {t['dense']:.3f} | {cells} |"
                print(row, flush=True)
                lines.append(row)
    os.makedirs(args.out, exist_ok=True)
    suffix = f"_{args.threads}t" if args.threads else ""
    atomic_write_text(os.path.join(args.out, f"sparse_kernels{suffix}.md"), "\n".join(lines) + "\n")
    print(f"wrote {args.out}/sparse_kernels{suffix}.md")


if __name__ == "__main__":
    main()
