"""One-shot pruning and recovery of a small causal LM: held-out perplexity, one script, CPU.

    python benchmarks/llm_recovery.py                      # the default below (SmolLM2-135M-Instruct, Hamlet)
    python benchmarks/llm_recovery.py --steps 20 --eval_every 5 --recover sparsegpt:2:4

1. one-shot: magnitude, Wanda and SparseGPT at 50% unstructured and 2:4 on the same calibration blocks
   (taken from the training text), perplexity on the held-out text (the last 10% of the bundled Hamlet);
2. recovery: for each ``--recover METHOD:PATTERN`` row, the one-shot model trained by SparseTrainer with
   ``constant`` masks while it distils from the dense model (per-token KL, T = 1), held-out perplexity
   every ``--eval_every`` steps (the curve), wall time stated.

Everything comes from examples/causal_lm/run.py (model loading, text blocks, perplexity), so the figures
are those of the example. Writes benchmarks/results/llm_recovery.{md,json,png}. Wall times are from a
shared 2-core VM running other jobs at the same time: read them as upper bounds.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import sys
import time

import torch
from transformers import TrainerCallback, TrainingArguments, default_data_collator

import hf_sparse
from hf_sparse import DistillationConfig, SparseTrainer, SparsityConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")


def load_example():
    path = os.path.join(ROOT, "examples", "causal_lm", "run.py")
    spec = importlib.util.spec_from_file_location("causal_lm_run", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class HeldOutPerplexity(TrainerCallback):
    """Held-out perplexity every ``every`` optimizer steps (the recovery curve)."""

    def __init__(self, example, dataset, every: int, batch: int):
        self.example, self.dataset, self.every, self.batch = example, dataset, every, batch
        self.curve: list[tuple[int, float, float]] = []
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0:
            value = self.example.perplexity(model, self.dataset, self.batch, args.device)
            self.curve.append((state.global_step, value, round(time.perf_counter() - self.start, 1)))
            print(f"  step {state.global_step}: perplexity {value:.2f}", flush=True)


def parse_row(text: str) -> tuple[str, str]:
    method, _, pattern = text.partition(":")
    return method, ("unstructured" if pattern in ("", "0.5") else pattern)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--block_size", type=int, default=128)
    parser.add_argument("--calibration_samples", type=int, default=32)
    parser.add_argument("--max_eval_samples", type=int, default=None)
    parser.add_argument("--methods", nargs="+", default=["magnitude", "wanda", "sparsegpt"])
    parser.add_argument("--recover", nargs="*", default=["sparsegpt:2:4", "sparsegpt:0.5"])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--eval_every", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--out", default=os.path.join(RESULTS, "llm_recovery"))
    args = parser.parse_args()

    example = load_example()
    margs = example.ModelArguments()
    dargs = example.DataArguments(block_size=args.block_size, max_eval_samples=args.max_eval_samples)
    targs = TrainingArguments(output_dir="/tmp/llm_recovery", use_cpu=True, report_to="none", save_strategy="no",
                              max_steps=args.steps, per_device_train_batch_size=args.batch_size, learning_rate=args.learning_rate,
                              warmup_steps=5, weight_decay=0.0, logging_steps=5, disable_tqdm=True, seed=0)
    dense, tokenizer, name = example.load_model(margs)
    train_set, eval_set = example.load_blocks(dargs, tokenizer, targs)
    calibration = example.calibration_batches(train_set, args.calibration_samples, 8, 0)
    report: dict = {"model": name, "text": "Hamlet (bundled), last 10% of lines held out", "block_size": args.block_size,
                    "eval_tokens": len(eval_set) * args.block_size, "calibration_tokens": args.calibration_samples * args.block_size,
                    "torch_threads": torch.get_num_threads(), "command": " ".join(["python benchmarks/llm_recovery.py"] + sys.argv[1:]),
                    "oneshot": [], "recovery": []}
    report["dense"] = example.perplexity(dense, eval_set, 8, targs.device)
    print(f"dense: {report['dense']:.2f}", flush=True)
    recover = [parse_row(r) for r in args.recover]
    for pattern in ("2:4", "unstructured"):
        pruned_models = {}
        for method in args.methods:
            model = copy.deepcopy(dense)
            start = time.perf_counter()
            hf_sparse.prune(model, sparsity=0.5, pattern=pattern, method=method, calibration=calibration)
            seconds = time.perf_counter() - start
            value = example.perplexity(model, eval_set, 8, targs.device)
            report["oneshot"].append({"method": method, "pattern": pattern, "perplexity": value, "seconds": round(seconds, 1)})
            print(f"one-shot {method} {pattern}: {value:.2f} ({seconds:.0f} s)", flush=True)
            if (method, pattern) in recover:
                pruned_models[method] = model
            write(report, args.out)
        for method, model in pruned_models.items():
            recover_row(example, report, args, targs, dense, model, method, pattern, train_set, eval_set)
            write(report, args.out)


def recover_row(example, report, args, targs, dense, model, method, pattern, train_set, eval_set) -> None:
    """Recovery of one one-shot model: constant masks, KL to the dense model, the held-out curve."""
    oneshot = next(r["perplexity"] for r in report["oneshot"] if r["method"] == method and r["pattern"] == pattern)
    callback = HeldOutPerplexity(example, eval_set, args.eval_every, 8)
    trainer = SparseTrainer(model=model, args=targs, train_dataset=train_set, data_collator=default_data_collator,
                            sparsity_config=SparsityConfig(method="constant"), teacher_model=copy.deepcopy(dense),
                            distillation=DistillationConfig(**example.DISTILLATION_DEFAULTS), callbacks=[callback])
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    final = callback.curve[-1][1] if callback.curve and callback.curve[-1][0] == args.steps else \
        example.perplexity(model, eval_set, 8, targs.device)
    gap_closed = (oneshot - final) / (oneshot - report["dense"])
    report["recovery"].append({"method": method, "pattern": pattern, "steps": args.steps, "oneshot": oneshot,
                               "recovered": final, "gap_closed": gap_closed, "train_seconds": round(seconds, 1),
                               "tokens": args.steps * args.batch_size * args.block_size, "curve": callback.curve})
    print(f"recovery {method} {pattern}: {oneshot:.2f} -> {final:.2f} ({gap_closed:.0%} of the gap, {seconds:.0f} s)", flush=True)


def write(report: dict, out: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".json", "w") as f:
        json.dump(report, f, indent=1)
    lines = [f"# One-shot pruning and recovery: {report['model']}", "",
             f"Held-out perplexity on {report['text']} ({report['eval_tokens']} tokens in blocks of {report['block_size']}); "
             f"calibration {report['calibration_tokens']} training tokens. Dense: **{report['dense']:.2f}**.", "",
             "| one-shot | 50% unstructured | 2:4 | seconds (50% / 2:4) |", "| --- | --- | --- | --- |"]
    methods = list(dict.fromkeys(r["method"] for r in report["oneshot"]))
    for method in methods:
        cells = {r["pattern"]: r for r in report["oneshot"] if r["method"] == method}
        ppl = [f"{cells[p]['perplexity']:.1f}" if p in cells else "" for p in ("unstructured", "2:4")]
        secs = " / ".join(f"{cells[p]['seconds']:.0f}" for p in ("unstructured", "2:4") if p in cells)
        lines.append(f"| {method} | {ppl[0]} | {ppl[1]} | {secs} |")
    if report["recovery"]:
        lines += ["", "| recovery (constant masks, KL to the dense model) | one-shot | recovered | gap closed | steps (tokens) | train seconds |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for r in report["recovery"]:
            lines.append(f"| {r['method']} {r['pattern']} | {r['oneshot']:.1f} | {r['recovered']:.1f} | {r['gap_closed']:.0%} | "
                         f"{r['steps']} ({r['tokens']}) | {r['train_seconds']:.0f} |")
        lines += ["", "Curves (step: perplexity, seconds since the start of training):"]
        for r in report["recovery"]:
            lines.append(f"- {r['method']} {r['pattern']}: " + ", ".join(f"{s}: {p:.1f} ({t:.0f} s)" for s, p, t in r["curve"]))
    lines += ["", "Measured on a shared 2-core VM with other jobs running (wall times are upper bounds); "
              f"`{report.get('command', 'python benchmarks/llm_recovery.py')}` reproduces it."]
    with open(out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.25
    for i, method in enumerate(methods):
        cells = {r["pattern"]: r["perplexity"] for r in report["oneshot"] if r["method"] == method}
        xs = [j + (i - 1) * width for j, p in enumerate(("unstructured", "2:4")) if p in cells]
        left.bar(xs, [cells[p] for p in ("unstructured", "2:4") if p in cells], width, label=method)
    left.axhline(report["dense"], color="k", linestyle="--", label="dense")
    left.set_xticks([0, 1], ["50% unstructured", "2:4"])
    left.set_yscale("log")
    left.set_ylabel("held-out perplexity")
    left.set_title("one-shot")
    left.legend()
    for r in report["recovery"]:
        steps = [0] + [s for s, _, _ in r["curve"]]
        values = [r["oneshot"]] + [p for _, p, _ in r["curve"]]
        right.plot(steps, values, marker="o", label=f"{r['method']} {r['pattern']}")
    right.axhline(report["dense"], color="k", linestyle="--", label="dense")
    right.set_xlabel("recovery step")
    right.set_ylabel("held-out perplexity")
    right.set_title("recovery with distillation")
    right.legend()
    fig.tight_layout()
    fig.savefig(out + ".png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
