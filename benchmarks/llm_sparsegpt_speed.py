"""SparseGPT's per-layer time: the vectorised loop (hf_sparse.oneshot.sparsegpt_prune) against the first,
plainly written per-column loop (tests/oneshot/sparsegpt_reference.py), paired in one process.

    OMP_NUM_THREADS=1 python benchmarks/llm_sparsegpt_speed.py [--block 0] [--rounds 5]

Real layers and Hessians: the 7 Linear layers of one decoder block of the offline default model
(SmolLM2-135M-Instruct, examples/causal_lm/run.py), X^T X from 32 calibration blocks of 128 tokens of
the training text. Rounds interleave the two implementations (A B B A ...) so machine load hits both;
the median per implementation and the median of the paired ratios are reported, with a check that
both give the same masks and bit-identical weights. Writes benchmarks/results/llm_sparsegpt_speed.{md,json}.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time

import torch
from transformers import TrainingArguments

from hf_sparse.oneshot import sparsegpt_prune
from hf_sparse.oneshot.sparsegpt import dampened_inverse_cholesky
from hf_sparse.oneshot.calibration import capture_block_inputs, run_block
from hf_sparse.oneshot.statistics import Gram, InputCollector

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")


def load(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def block_layers(block_index: int, samples: int):
    """[(name, weight, hessian)] for the Linear layers of one decoder block, Hessians from real inputs."""
    example = load("causal_lm_run", "examples/causal_lm/run.py")
    model, tokenizer, _ = example.load_model(example.ModelArguments())
    targs = TrainingArguments(output_dir="/tmp/llm_sparsegpt_speed", use_cpu=True, report_to="none")
    train_set, _ = example.load_blocks(example.DataArguments(), tokenizer, targs)
    calibration = example.calibration_batches(train_set, samples, 8, 0)
    layers = model.model.layers
    inputs = capture_block_inputs(model, layers[0], calibration)
    with torch.no_grad():
        for index in range(block_index):
            inputs = [item.with_hidden(out) for item, out in zip(inputs, run_block(layers[index], inputs))]
    block = layers[block_index]
    names = [n for n, m in block.named_modules() if isinstance(m, torch.nn.Linear)]
    collector = InputCollector(Gram)
    for name in names:
        collector.attach(name, block.get_submodule(name), block.get_submodule(name).in_features)
    with torch.no_grad():
        run_block(block, inputs, collector.begin_batch, keep_outputs=False)
    collector.remove()
    hessians = {}  # one tensor per distinct input (q/k/v share one, gate/up share one), as prune() sees them
    for name in names:
        statistic = collector.statistics[name]
        hessians.setdefault(id(statistic), statistic.value / statistic.tokens)
    return [(name, block.get_submodule(name).weight.data.clone(), hessians[id(collector.statistics[name])]) for name in names]


def shared_factors(layers, nm):
    """As prune() runs a block: one inverse Cholesky factor per distinct input, reused by the layers sharing it."""
    factors, out = {}, []
    for _, w, h in layers:
        if id(h) not in factors:
            factors[id(h)] = dampened_inverse_cholesky(h, 0.01)
        out.append(sparsegpt_prune(w, h, 0.5, nm, inverse_cholesky=factors[id(h)]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--block", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calibration_samples", type=int, default=32)
    parser.add_argument("--out", default=os.path.join(RESULTS, "llm_sparsegpt_speed"))
    args = parser.parse_args()
    reference = load("sparsegpt_reference", "tests/oneshot/sparsegpt_reference.py").reference_sparsegpt_prune
    layers = block_layers(args.block, args.calibration_samples)
    implementations = {"reference loop": lambda layers, nm: [reference(w, h, 0.5, nm) for _, w, h in layers],
                       "hf_sparse": shared_factors}
    rows = []
    for pattern, nm in (("2:4", (2, 4)), ("50% unstructured", None)):
        times = {k: [] for k in implementations}
        same = True
        for r in range(args.rounds):
            order = list(implementations) if r % 2 == 0 else list(reversed(implementations))
            outputs = {}
            for key in order:
                start = time.perf_counter()
                outputs[key] = implementations[key](layers, nm)
                times[key].append(time.perf_counter() - start)
            same &= all(torch.equal(a[1], b[1]) and torch.equal(a[0], b[0]) for a, b in zip(*outputs.values()))
        ratios = [a / b for a, b in zip(times["reference loop"], times["hf_sparse"])]
        row = {"pattern": pattern, "reference_s": statistics.median(times["reference loop"]),
               "hf_sparse_s": statistics.median(times["hf_sparse"]), "paired_speedup": statistics.median(ratios),
               "bit_identical": same, "rounds": args.rounds}
        rows.append(row)
        print(row, flush=True)
    shapes = ", ".join(f"{n.split('.')[-1]} {tuple(w.shape)}" for n, w, _ in layers)
    report = {"model": "SmolLM2-135M-Instruct", "block": args.block, "layers": shapes, "torch_threads": torch.get_num_threads(),
              "load": os.getloadavg()[0], "rows": rows}
    os.makedirs(RESULTS, exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(report, f, indent=1)
    lines = [f"# SparseGPT speed on one decoder block of {report['model']}", "",
             f"The 7 Linear layers of block {args.block} ({shapes}), real Hessians from {args.calibration_samples} x 128 "
             f"calibration tokens; {torch.get_num_threads()} torch thread(s); medians of {args.rounds} interleaved rounds "
             f"(load average {report['load']:.1f} on a 2-core VM shared with other jobs: absolute times are upper bounds, "
             "the paired ratio is the figure).", "",
             "| pattern | per-column reference loop (s) | hf_sparse (s) | paired speed-up | masks and weights bit-identical |",
             "| --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['pattern']} | {r['reference_s']:.3f} | {r['hf_sparse_s']:.3f} | {r['paired_speedup']:.2f}x | "
                     f"{'yes' if r['bit_identical'] else 'NO'} |")
    lines += ["", "hf_sparse computes one inverse Cholesky factor per distinct input (q/k/v share one, gate/up share one), "
              "as `prune` does; the reference computes one per layer. Both include the factorisations.", "",
              "`OMP_NUM_THREADS=1 python benchmarks/llm_sparsegpt_speed.py` reproduces it."]
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
