"""The size/speed report for a BERT-base-sized model (random init) at 50% / 90% unstructured and 2:4.

Builds ``BertForSequenceClassification(BertConfig())`` (110M parameters, no download), prunes the
targeted weights by magnitude per layer, and runs ``hf_sparse.report`` on the current device
(dense baseline vs sparse with dense kernels; CPU sparse kernels when ``hf_sparse.inference.convert`` is
installed; 2:4 semi-structured kernels on a CUDA GPU in fp16). Prints one row per setting and
writes ``benchmarks/results/speed_report.json``, one PNG per setting and a summary PNG.

    python benchmarks/speed_report.py                      # ~2-5 min on 2 CPU cores
    python benchmarks/speed_report.py --layers 2 --repeats 2   # a quick look
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import torch
from tqdm import tqdm

import hf_sparse
from hf_sparse.io.files import atomic_write_text

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SETTINGS = [("dense", None), ("unstructured 50%", 0.5), ("unstructured 90%", 0.9), ("2:4", "2:4")]


def build_model(layers: int):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(num_hidden_layers=layers, num_labels=2)).eval()


def prune(model, setting) -> None:
    """One-shot magnitude pruning of hf_sparse's default targets (per layer, or 2:4)."""
    if setting == "2:4":
        hf_sparse.prune(model, pattern="2:4", attach=False)
    else:
        hf_sparse.prune(model, setting, attach=False)


def summary_plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["setting"].replace(" ", "\n", 1) for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    kinds = sorted({k for r in rows for k in r["ms"]}, key=lambda k: ["dense", "sparse, dense kernels"].index(k)
                   if k in ("dense", "sparse, dense kernels") else 9)
    width = 0.8 / max(len(kinds), 1)
    for i, kind in enumerate(kinds):
        values = [r["ms"].get(kind) or 0 for r in rows]
        a.bar([x + i * width for x in range(len(rows))], values, width=width, label=kind)
    a.set_xticks([x + width * (len(kinds) - 1) / 2 for x in range(len(rows))], names)
    a.set_ylabel("ms per forward (median)")
    a.set_title(f"BERT-base forward latency, {rows[0]['device']} ({rows[0]['threads']} threads, shared: noisy)")
    a.legend(fontsize=8)
    b.bar([x - 0.2 for x in range(len(rows))], [r["size_fp32"] for r in rows], width=0.4, label="fp32")
    b.bar([x + 0.2 for x in range(len(rows))], [r["size_bf16"] for r in rows], width=0.4, label="bf16")
    b.set_xticks(range(len(rows)), names)
    b.set_ylabel("compressed / dense (targeted weights)")
    b.set_title("size with bitmask + values")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=12, help="encoder layers (12 = BERT-base)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out", default=RESULTS)
    parser.add_argument("--settings", nargs="*", default=[n for n, _ in SETTINGS], choices=[n for n, _ in SETTINGS],
                        metavar="NAME", help="subset of the settings, e.g. 'unstructured 90%%' (default: all)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.makedirs(args.out, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    for name, setting in tqdm([s for s in SETTINGS if s[0] in args.settings], desc="settings"):
        model = build_model(args.layers)
        if setting is not None:
            prune(model, setting)
        if device == "cuda":  # semi-structured kernels want fp16/bf16
            model = model.to(device, torch.float16)
        start = time.perf_counter()
        r = hf_sparse.report(model, input_shape=(args.batch_size, args.seq_len), repeats=args.repeats, warmup=args.warmup)
        slug = name.replace(" ", "_").replace("%", "").replace(":", "-")
        r.plot(os.path.join(args.out, f"speed_report_{slug}.png"))
        rows.append({
            "setting": name,
            "device": r["device"],
            "threads": r["threads"],
            "sparsity": r["totals"]["sparsity"],
            "pattern": r["totals"]["pattern"],
            "gflops_dense": r["model"]["flops_dense"] / 1e9,
            "gflops_sparse": r["model"]["flops_sparse"] / 1e9,
            "size_fp32": r["totals"]["bytes"]["float32"]["ratio"],
            "size_bf16": r["totals"]["bytes"]["bfloat16"]["ratio"],
            "model_size_fp32": r["model"]["bytes"]["float32"]["ratio"],
            "ms": {v["name"]: v["ms"] for v in r["latency"]["variants"]},
            "speedup": {v["name"]: v["speedup"] for v in r["latency"]["variants"]},
            "verdict": r["verdict"],
            "report_seconds": time.perf_counter() - start,
        })
        del model
    atomic_write_text(os.path.join(args.out, "speed_report.json"), json.dumps(rows, indent=2) + "\n")
    summary_plot(rows, os.path.join(args.out, "speed_report.png"))
    print(f"BERT-base-sized ({args.layers} layers), input {args.batch_size}x{args.seq_len}, {rows[0]['device']}, "
          f"{rows[0]['threads']} threads, median of {args.repeats} (shared machine: timings are noisy)")
    print(f"{'setting':<18} {'sparsity':>8} {'GFLOPs d->s':>14} {'size fp32':>9} {'bf16':>6} {'model fp32':>10}  latencies")
    for row in rows:
        lat = ", ".join(f"{k}: {v:.0f} ms" if v else f"{k}: n/a" for k, v in row["ms"].items())
        print(f"{row['setting']:<18} {row['sparsity']:>8.1%} {row['gflops_dense']:>6.1f}->{row['gflops_sparse']:<6.1f} "
              f"{row['size_fp32']:>9.3f} {row['size_bf16']:>6.3f} {row['model_size_fp32']:>10.3f}  {lat}")
        print(f"{'':<18} verdict: {row['verdict']}")
    print(f"results: {args.out}/speed_report.json, speed_report.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
