"""Checkpoint sizes and save/load times: dense+masks vs hf_sparse native vs compressed-tensors layout.

A BERT-base-shaped model built offline from a config (default: hidden 256, 4 layers, vocab 30522,
so the dense word embedding dominates whole-file sizes, as in real checkpoints), magnitude-pruned
per Linear weight to 50/90/95/99/99.9% and 2:4, in fp32 and bf16. Reports, per layout:
the whole folder's safetensors bytes, the bytes of the sparsified Linear weights alone (ratio to
their dense bytes), and save/load wall times. Writes benchmarks/results/checkpoint_size.{md,json,png}.

    python benchmarks/checkpoint_size.py [--hidden 256 --layers 4]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings

import torch
from safetensors import safe_open

import hf_sparse

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
LAYOUTS = {"dense": False, "native": True, "compressed-tensors": "compressed-tensors"}
SPARSITIES = [0.5, 0.9, 0.95, 0.99, 0.999, "2:4"]


def build(hidden: int, layers: int, dtype: torch.dtype):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                        intermediate_size=4 * hidden, num_labels=2)
    return BertForSequenceClassification(config).to(dtype)


def prune(model, sparsity) -> list[str]:
    """Magnitude one-shot pruning of the default targets (exact per-tensor counts); their names."""
    masks = hf_sparse.prune(model, pattern="2:4") if sparsity == "2:4" else hf_sparse.prune(model, sparsity)
    return list(masks)


def linear_bytes(folder: str, targets: list[str]) -> int:
    """Bytes of the tensors that encode the targeted weights (plus their masks in the dense layout)."""
    total = 0
    for name in os.listdir(folder):
        if not name.endswith(".safetensors"):
            continue
        with safe_open(os.path.join(folder, name), "pt") as f:
            for key in f.keys():
                sparse_part = key in targets or any(key.startswith(n + ".sparse_") for n in targets)
                ct_part = key.rsplit(".", 1)[0] + ".weight" in targets and key.rsplit(".", 1)[1] in (
                    "shape", "compressed", "bitmask", "row_offsets")
                if sparse_part or ct_part:
                    t = f.get_slice(key)
                    numel = 1
                    for s in t.get_shape():
                        numel *= s
                    total += numel * {"F32": 4, "BF16": 2, "U8": 1, "I16": 2, "I32": 4, "I64": 8, "BOOL": 1}[t.get_dtype()]
    return total


def folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder) if n.endswith(".safetensors"))


def run(hidden: int, layers: int) -> list[dict]:
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for sparsity in SPARSITIES:
            model = build(hidden, layers, dtype)
            targets = prune(model, sparsity)
            dense_linear = sum(dict(model.named_parameters())[n].numel() for n in targets) * model.dtype.itemsize
            for layout, compressed in LAYOUTS.items():
                with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    start = time.perf_counter()
                    hf_sparse.save_sparse(model, folder, compressed=compressed)
                    save_s = time.perf_counter() - start
                    start = time.perf_counter()
                    hf_sparse.load_sparse(folder)
                    load_s = time.perf_counter() - start
                    lin = linear_bytes(folder, targets) if layout != "dense" else dense_linear
                    rows.append({
                        "dtype": str(dtype).removeprefix("torch."), "sparsity": sparsity, "layout": layout,
                        "file_bytes": folder_bytes(folder), "linear_bytes": lin,
                        "linear_ratio": lin / dense_linear, "save_s": save_s, "load_s": load_s,
                    })
                print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    dense_file = {(r["dtype"], r["sparsity"]): r["file_bytes"] for r in rows if r["layout"] == "dense"}
    lines = ["| dtype | sparsity | layout | folder MB | vs dense folder | Linear weights MB | Linear vs dense | save s | load s |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(
            f"| {r['dtype']} | {r['sparsity']} | {r['layout']} | {r['file_bytes'] / 1e6:.2f} | "
            f"{r['file_bytes'] / dense_file[(r['dtype'], r['sparsity'])]:.3f} | {r['linear_bytes'] / 1e6:.3f} | "
            f"{r['linear_ratio']:.4f} | {r['save_s']:.2f} | {r['load_s']:.2f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, dtype in zip(axes, ("float32", "bfloat16")):
        for layout, color in (("native", "tab:green"), ("compressed-tensors", "tab:orange")):
            pts = [(r["sparsity"], r["linear_ratio"]) for r in rows if r["dtype"] == dtype and r["layout"] == layout and r["sparsity"] != "2:4"]
            ax.plot([1 - s for s, _ in pts], [v for _, v in pts], marker="o", color=color, label=layout)
            two4 = [r["linear_ratio"] for r in rows if r["dtype"] == dtype and r["layout"] == layout and r["sparsity"] == "2:4"]
            ax.scatter([0.5], two4, marker="*", s=120, color=color, edgecolor="k", label=f"{layout} 2:4")
        ax.axhline(1.0, color="gray", linestyle="--", label="dense")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("density (1 - sparsity)")
        ax.set_title(f"Linear weights, {dtype}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("bytes / dense bytes")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    rows = run(args.hidden, args.layers)
    os.makedirs(RESULTS, exist_ok=True)
    text = f"# Checkpoint sizes (BERT hidden {args.hidden}, {args.layers} layers, vocab 30522)\n\n{table(rows)}\n"
    with open(os.path.join(RESULTS, "checkpoint_size.md"), "w") as f:
        f.write(text)
    with open(os.path.join(RESULTS, "checkpoint_size.json"), "w") as f:
        json.dump(rows, f, indent=1)
    plot(rows, os.path.join(RESULTS, "checkpoint_size.png"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
