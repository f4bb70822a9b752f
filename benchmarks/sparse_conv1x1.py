"""A 1x1 convolution as a CSR matmul vs torch's dense convolution, paired in one process.

ResNet-50's bottleneck 1x1 convs are matmuls over channels: for NCHW input each sample ``x[n]`` is
a ``(C_in, H*W)`` matrix already, so ``y[n] = W_csr @ x[n]`` (torch's ``"sum"`` CSR kernel) gives
the NCHW output with no copies. Timed against ``F.conv2d`` (oneDNN) in interleaved rounds whose order
alternates; ratio = dense time / sparse time (> 1: sparse faster), with the 90% sign-test bound.

    python benchmarks/sparse_conv1x1.py --threads 2
    python benchmarks/sparse_conv1x1.py --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

from hf_sparse.inference.timing import Speedup

# (C_out, C_in, H=W, batch): ResNet-50 bottleneck 1x1 convs at 224x224 input
SHAPES = [(256, 64, 56, 1), (64, 256, 56, 1), (1024, 256, 14, 8), (256, 1024, 14, 8), (2048, 512, 7, 8), (512, 2048, 7, 8)]


def csr(weight: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        c = weight.to_sparse_csr()
    return torch.sparse_csr_tensor(c.crow_indices().int(), c.col_indices().int(), c.values(), c.shape)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sparsities", default="0.9,0.95")
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads {args.threads}, load average {os.getloadavg()[0]:.1f}, torch {torch.__version__}")
    print("| C_out x C_in, HxW, batch | sparsity | dense ms | dense/sparse | 90% bound |\n|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for c_out, c_in, hw, batch in SHAPES:
            x = torch.randn(batch, c_in, hw, hw, generator=g)
            for sparsity in [float(s) for s in args.sparsities.split(",")]:
                w = torch.randn(c_out, c_in, 1, 1, generator=g)
                w.mul_(torch.rand(w.shape, generator=g) > sparsity)
                w_csr = csr(w.view(c_out, c_in))

                def dense() -> torch.Tensor:
                    return F.conv2d(x, w)

                def sparse() -> torch.Tensor:
                    y = x.new_empty(batch, c_out, hw, hw)
                    for n in range(batch):
                        y[n].view(c_out, hw * hw).copy_(torch.sparse.mm(w_csr, x[n].view(c_in, hw * hw), "sum"))
                    return y

                assert (dense() - sparse()).abs().max() < 1e-3
                td, ts = [], []
                for r in range(args.rounds):
                    for fn, times in ([(dense, td), (sparse, ts)] if r % 2 == 0 else [(sparse, ts), (dense, td)]):
                        t0 = time.perf_counter()
                        fn()
                        times.append(time.perf_counter() - t0)
                s = Speedup.of(td, ts)
                print(f"| {c_out}x{c_in}, {hw}x{hw}, {batch} | {sparsity:.0%} | {1e3 * statistics.median(td):.2f} | "
                      f"**{s.ratio:.2f}x** | [{s.low:.2f}, {s.high:.2f}] |", flush=True)
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
