"""How long ``python -m hf_sparse inspect DIR`` takes in a fresh process, with and without ``--verify``.

Folders: a tiny BERT (hidden 32) and a ~110M-parameter BERT-base shape (hidden 768, 12 layers,
random init, magnitude-pruned to 90%), each saved dense + masks and native compressed. Each
command runs ``--repeats`` times in a fresh interpreter; the median wall time (interpreter start
included) is printed. Timings, not goals: the issue asks < 2 s (tiny) and < 5 s (100M).

    python benchmarks/inspect_speed.py [--repeats 3] [--skip-large]

Writes benchmarks/results/inspect_speed.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from transformers import BertConfig, BertForSequenceClassification

import hf_sparse
from hf_sparse.io.files import atomic_write_text

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def build(hidden: int, layers: int, heads: int, intermediate: int) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=intermediate, vocab_size=30522)
    model = BertForSequenceClassification(config).eval()
    hf_sparse.prune(model, 0.9)
    return model


def wall(args: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "hf_sparse", *args], check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-large", action="store_true")
    args = parser.parse_args()
    shapes = {"tiny (hidden 32, 2 layers)": (32, 2, 2, 64)}
    if not args.skip_large:
        shapes["BERT-base shape (110M params)"] = (768, 12, 12, 3072)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, shape in shapes.items():
            model = build(*shape)
            params = sum(p.numel() for p in model.parameters())
            for layout, compressed in (("dense + masks", False), ("native", True)):
                folder = os.path.join(tmp, f"{shape[0]}-{compressed}")
                hf_sparse.save_sparse(model, folder, compressed=compressed)
                fast = wall(["inspect", folder], args.repeats)
                full = wall(["inspect", "--verify", folder], max(1, args.repeats // 2))
                rows.append((label, params, layout, fast, full))
                print(f"{label}, {layout}: inspect {fast:.2f} s, inspect --verify {full:.2f} s", flush=True)
            del model
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    lines = [
        "# inspect speed: `python -m hf_sparse inspect DIR` in a fresh process (median wall time, start-up included)",
        "",
        f"`python benchmarks/inspect_speed.py --repeats {args.repeats}`; torch {torch.__version__}, "
        f"{os.cpu_count()} logical CPUs shared with other jobs (load average {load}).",
        "",
        "| model | params | layout | inspect | inspect --verify |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {label} | {params / 1e6:.1f}M | {layout} | {fast:.2f} s | {full:.2f} s |" for label, params, layout, fast, full in rows]
    os.makedirs(RESULTS, exist_ok=True)
    atomic_write_text(os.path.join(RESULTS, "inspect_speed.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
