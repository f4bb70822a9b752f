"""One-shot pruning, recovery and LoRA of a small causal LM: held-out perplexity, one script, CPU.

    OMP_NUM_THREADS=1 python benchmarks/llm_recovery.py      # the default below (SmolLM2-135M-Instruct, Hamlet)

1. one-shot: magnitude, Wanda and SparseGPT at 50% unstructured and 2:4 on the same calibration blocks
   (taken from the training text), perplexity on the held-out text (the last 10% of the bundled Hamlet),
   wall time of each ``hf_sparse.prune``;
2. recovery: for each ``--recover METHOD:PATTERN:STEPS`` row (PATTERN ``2:4`` or ``0.5``), the one-shot
   model trained by SparseTrainer with ``constant`` masks while it distils from the dense model (per-token
   KL, T = 1); held-out perplexity every ``--eval_every`` steps (the curve) and the wall time;
3. LoRA: for each ``--lora METHOD:PATTERN:STEPS`` row, LoRA adapters (every projection of every block)
   trained on the one-shot model with the same distillation, trained as the masked merge
   (``MaskedLoraDeltas``), merged by ``hf_sparse.merge_and_unload`` (N:M kept); the merged model's exact
   sparsity and N:M pattern are checked and its held-out perplexity is reported.

Trained rows run shortest first; each curve point is written as it comes, so a run stopped early keeps them.

Everything comes from examples/causal_lm/run.py (model loading, text blocks, perplexity), so the figures
are those of the example. Writes benchmarks/results/llm_recovery.{md,json,png} after every row. Wall times
are from a shared 2-core VM running other jobs at the same time: read them as upper bounds.
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
from hf_sparse import DistillationConfig, MaskedLoraDeltas, SparseTrainer, SparsityConfig, merge_and_unload

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
PATTERNS = ("unstructured", "2:4")
LABEL = {"unstructured": "50% unstructured", "2:4": "2:4"}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def load_example():
    path = os.path.join(ROOT, "examples", "causal_lm", "run.py")
    spec = importlib.util.spec_from_file_location("causal_lm_run", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class HeldOutPerplexity(TrainerCallback):
    """Held-out perplexity every ``every`` optimizer steps (the curve); the report is rewritten each time."""

    def __init__(self, example, dataset, every: int, batch: int, row: dict, save):
        self.example, self.dataset, self.every, self.batch, self.row, self.save = example, dataset, every, batch, row, save
        self.start = time.perf_counter()
        self.eval_seconds = 0.0

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            start = time.perf_counter()
            value = self.example.perplexity(model, self.dataset, self.batch, args.device)
            self.eval_seconds += time.perf_counter() - start
            train_seconds = time.perf_counter() - self.start - self.eval_seconds
            self.row["curve"].append((state.global_step, value, round(train_seconds, 1)))
            print(f"  step {state.global_step}: perplexity {value:.2f} ({train_seconds:.0f} s of training)", flush=True)
            self.save()


def parse_row(text: str) -> tuple[str, str, int]:
    """``METHOD:PATTERN:STEPS`` with PATTERN ``2:4`` (any N:M) or ``0.5``/``unstructured``."""
    parts = text.split(":")
    if len(parts) == 3 and parts[1] in ("0.5", "unstructured"):
        return parts[0], "unstructured", int(parts[2])
    if len(parts) == 4:
        return parts[0], f"{parts[1]}:{parts[2]}", int(parts[3])
    raise SystemExit(f"rows are METHOD:PATTERN:STEPS, e.g. sparsegpt:2:4:100 or sparsegpt:0.5:20; got {text!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--block_size", type=int, default=128)
    parser.add_argument("--calibration_samples", type=int, default=32)
    parser.add_argument("--max_eval_samples", type=int, default=None)
    parser.add_argument("--methods", nargs="+", default=["magnitude", "wanda", "sparsegpt"])
    parser.add_argument("--recover", nargs="*", default=["sparsegpt:0.5:20", "sparsegpt:2:4:100"])
    parser.add_argument("--lora", nargs="*", default=["sparsegpt:2:4:20"])
    parser.add_argument("--eval_every", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--lora_learning_rate", type=float, default=1e-3)
    parser.add_argument("--lora_rank", type=int, default=16)
    parser.add_argument("--out", default=os.path.join(RESULTS, "llm_recovery"))
    args = parser.parse_args()

    example = load_example()
    dargs = example.DataArguments(block_size=args.block_size, max_eval_samples=args.max_eval_samples)
    targs = training_args(args, 1)
    dense, tokenizer, name = example.load_model(example.ModelArguments())
    train_set, eval_set = example.load_blocks(dargs, tokenizer, targs)
    calibration = example.calibration_batches(train_set, args.calibration_samples, 8, 0)
    report: dict = {"model": name, "text": "Hamlet (bundled), last 10% of lines held out", "block_size": args.block_size,
                    "eval_tokens": len(eval_set) * args.block_size, "calibration_tokens": args.calibration_samples * args.block_size,
                    "torch_threads": torch.get_num_threads(), "batch_tokens": args.batch_size * args.block_size,
                    "command": " ".join(["python benchmarks/llm_recovery.py"] + sys.argv[1:]),
                    "load_average_at_start": os.getloadavg()[0], "oneshot": [], "recovery": [], "lora": []}
    save = lambda: write(report, args.out)  # noqa: E731
    start = time.perf_counter()
    report["dense"] = example.perplexity(dense, eval_set, 8, targs.device)
    report["eval_seconds"] = round(time.perf_counter() - start, 1)
    print(f"dense: {report['dense']:.2f} ({report['eval_seconds']:.0f} s per held-out evaluation)", flush=True)
    trained = [("recover", *parse_row(r)) for r in args.recover] + [("lora", *parse_row(r)) for r in args.lora]
    trained.sort(key=lambda row: row[3])  # shortest runs first: a deadline cuts only the longest curve
    needed = {(method, pattern) for _, method, pattern, _ in trained}
    pruned: dict = {}
    for pattern in PATTERNS:
        for method in args.methods:
            model = copy.deepcopy(dense)
            start = time.perf_counter()
            masks = hf_sparse.prune(model, sparsity=0.5, pattern=pattern, method=method, calibration=calibration)
            seconds = time.perf_counter() - start
            value = example.perplexity(model, eval_set, 8, targs.device)
            report["oneshot"].append({"method": method, "pattern": pattern, "perplexity": value, "seconds": round(seconds, 1)})
            print(f"one-shot {method} {pattern}: {value:.2f} ({seconds:.0f} s)", flush=True)
            if (method, pattern) in needed:
                pruned[(method, pattern)] = (model, masks)
            save()
    for kind, method, pattern, steps in trained:
        model, masks = pruned[(method, pattern)]
        run = recover_row if kind == "recover" else lora_row
        run(example, report, args, dense, copy.deepcopy(model), masks, method, pattern, steps, train_set, eval_set, save)
        save()


def training_args(args, steps: int, learning_rate: float = None) -> TrainingArguments:
    return TrainingArguments(output_dir="/tmp/llm_recovery", use_cpu=True, report_to="none", save_strategy="no",
                             max_steps=steps, per_device_train_batch_size=args.batch_size,
                             learning_rate=learning_rate or args.learning_rate, warmup_steps=5, weight_decay=0.0,
                             logging_steps=5, disable_tqdm=True, seed=0)


def oneshot_of(report, method, pattern) -> float:
    return next(r["perplexity"] for r in report["oneshot"] if r["method"] == method and r["pattern"] == pattern)


def recover_row(example, report, args, dense, model, masks, method, pattern, steps, train_set, eval_set, save) -> None:
    """Recovery of one one-shot model: constant masks, KL to the dense model, the held-out curve."""
    oneshot = oneshot_of(report, method, pattern)
    row = {"method": method, "pattern": pattern, "steps": steps, "oneshot": oneshot, "tokens": steps * args.batch_size * args.block_size,
           "learning_rate": args.learning_rate, "curve": []}
    report["recovery"].append(row)
    callback = HeldOutPerplexity(example, eval_set, args.eval_every, 8, row, save)
    trainer = SparseTrainer(model=model, args=training_args(args, steps), train_dataset=train_set,
                            data_collator=default_data_collator, sparsity_config=SparsityConfig(method="constant"),
                            teacher_model=copy.deepcopy(dense), distillation=DistillationConfig(**example.DISTILLATION_DEFAULTS),
                            callbacks=[callback])
    trainer.train()
    finish(row, report, callback, model, masks, pattern)
    print(f"recovery {method} {pattern}: {oneshot:.2f} -> {row['recovered']:.2f} ({row['gap_closed']:.0%} of the gap, "
          f"{row['train_seconds']:.0f} s of training)", flush=True)


def lora_row(example, report, args, dense, model, masks, method, pattern, steps, train_set, eval_set, save) -> None:
    """LoRA on the one-shot model, trained as its masked merge, merged at the one-shot masks; sparsity checked."""
    from peft import LoraConfig, get_peft_model

    oneshot = oneshot_of(report, method, pattern)
    row = {"method": method, "pattern": pattern, "steps": steps, "oneshot": oneshot, "tokens": steps * args.batch_size * args.block_size,
           "learning_rate": args.lora_learning_rate, "rank": args.lora_rank, "curve": []}
    report["lora"].append(row)
    peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=args.lora_rank, lora_alpha=2 * args.lora_rank,
                                                  lora_dropout=0.0, target_modules=LORA_TARGETS))
    row["trainable_parameters"] = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    callback = HeldOutPerplexity(example, eval_set, args.eval_every, 8, row, save)
    trainer = SparseTrainer(model=peft_model, args=training_args(args, steps, args.lora_learning_rate), train_dataset=train_set,
                            data_collator=default_data_collator, base_masks=masks, teacher_model=copy.deepcopy(dense),
                            distillation=DistillationConfig(**example.DISTILLATION_DEFAULTS), callbacks=[callback])
    with MaskedLoraDeltas(peft_model, masks):
        trainer.train()
        row["trained_perplexity"] = row["curve"][-1][1]
    probe = {"input_ids": torch.tensor(eval_set[:2]["input_ids"])}
    result = merge_and_unload(peft_model, masks, inputs=probe, nm="keep_mask" if ":" in pattern else "error")
    merged = result.model
    row["merged_perplexity"] = example.perplexity(merged, eval_set, 8, torch.device("cpu"))
    row["max_logit_diff_of_merge"] = result.max_logit_diff
    finish(row, report, callback, merged, masks, pattern, final=row["merged_perplexity"])
    print(f"LoRA {method} {pattern}: {oneshot:.2f} -> trained {row['trained_perplexity']:.2f}, merged {row['merged_perplexity']:.2f} "
          f"({row['gap_closed']:.0%} of the gap, {row['train_seconds']:.0f} s); merged sparsity {row['sparsity']:.4f}, "
          f"nonzeros outside the masks {row['nonzero_outside_masks']}, exact 2:4 {row.get('exact_nm')}", flush=True)


def finish(row, report, callback, model, masks, pattern, final=None) -> None:
    """Final perplexity, share of the one-shot gap closed, training time, and the sparsity actually kept."""
    row["recovered"] = final if final is not None else row["curve"][-1][1]
    row["gap_closed"] = (row["oneshot"] - row["recovered"]) / (row["oneshot"] - report["dense"])
    row["train_seconds"] = row["curve"][-1][2]
    row["eval_seconds"] = round(callback.eval_seconds, 1)
    params = dict(model.named_parameters())
    outside = kept = total = 0
    exact_nm = True
    for name, mask in masks.items():
        weight = params[name].detach()
        outside += int(torch.count_nonzero(weight[~mask]))
        kept += int(torch.count_nonzero(weight))
        total += weight.numel()
        if ":" in pattern:
            n, m = (int(x) for x in pattern.split(":"))
            exact_nm &= bool(((weight != 0).reshape(-1, m).sum(1) <= n).all()) and bool((mask.reshape(-1, m).sum(1) == n).all())
    row["sparsity"] = 1 - kept / total
    row["nonzero_outside_masks"] = outside
    if ":" in pattern:
        row["exact_nm"] = exact_nm


def write(report: dict, out: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".json.tmp", "w") as f:
        json.dump(report, f, indent=1)
    os.replace(out + ".json.tmp", out + ".json")
    dense = report.get("dense")
    lines = [f"# One-shot pruning, recovery and LoRA: {report['model']}", "",
             f"Held-out perplexity on {report['text']} ({report['eval_tokens']} tokens in blocks of {report['block_size']}); "
             f"calibration {report['calibration_tokens']} training tokens; recovery batches of {report['batch_tokens']} tokens; "
             f"{report['torch_threads']} torch thread(s). Times: `prune` wall time for one-shot rows, training time (held-out "
             f"evaluations excluded; one takes ~{report.get('eval_seconds', 0):.0f} s) for trained rows.", "",
             "| model | 50% unstructured | time | 2:4 | time |", "| --- | --- | --- | --- | --- |",
             f"| dense | {dense:.1f} | | {dense:.1f} | |"]
    methods = list(dict.fromkeys(r["method"] for r in report["oneshot"]))
    for method in methods:
        cells = {r["pattern"]: r for r in report["oneshot"] if r["method"] == method}
        row = [f"{cells[p]['perplexity']:.1f}" if p in cells else "" for p in PATTERNS]
        secs = [f"{cells[p]['seconds']:.0f} s" if p in cells else "" for p in PATTERNS]
        lines.append(f"| {method}, one-shot | {row[0]} | {secs[0]} | {row[1]} | {secs[1]} |")
    for kind, label in (("recovery", "recovered (full fine-tuning, KL to dense)"), ("lora", "LoRA, merged (KL to dense)")):
        for r in report[kind]:
            if "recovered" not in r:
                if not r["curve"]:
                    continue
                step, value, seconds = r["curve"][-1]
                cell, when = f"{value:.1f} (at step {step}, run cut short)", f"{seconds:.0f} s"
            else:
                cell, when = f"**{r['recovered']:.1f}** ({r['gap_closed']:.0%} of the gap)", f"{r['train_seconds']:.0f} s"
            cells = [cell, when, "", ""] if r["pattern"] == "unstructured" else ["", "", cell, when]
            lines.append(f"| {r['method']} + {label}, {r['steps']} steps | " + " | ".join(cells) + " |")
    curves = report["recovery"] + report["lora"]
    if curves:
        lines += ["", "Curves (step: held-out perplexity, training seconds):"]
        for kind in ("recovery", "lora"):
            for r in report[kind]:
                lines.append(f"- {kind} {r['method']} {LABEL[r['pattern']]} (lr {r['learning_rate']:g}): one-shot {r['oneshot']:.1f}, "
                             + ", ".join(f"{s}: {p:.1f} ({t:.0f} s)" for s, p, t in r["curve"]))
    for r in report["lora"]:
        if "merged_perplexity" in r:
            lines += ["", f"LoRA {r['method']} {LABEL[r['pattern']]}: rank {r['rank']} on every projection "
                      f"({r['trainable_parameters']:,} trainable parameters), trained as the masked merge (`MaskedLoraDeltas`); "
                      f"held-out perplexity one-shot {r['oneshot']:.1f} -> trained {r['trained_perplexity']:.2f} -> merged "
                      f"{r['merged_perplexity']:.2f} (the merge is the trained model; the same adapters merged unmasked, as plain LoRA "
                      f"would, move the logits by up to {r['max_logit_diff_of_merge']:.1f}); merged "
                      f"targeted weights {r['sparsity']:.2%} zeros, {r['nonzero_outside_masks']} nonzeros outside the one-shot masks"
                      + (f", exact {r['pattern']}: {r['exact_nm']}" if "exact_nm" in r else "") + "."]
    lines += ["", f"Measured on a shared 2-core VM with other jobs running (load average {report['load_average_at_start']:.1f} at the "
              f"start; wall times are upper bounds); `OMP_NUM_THREADS=1 {report['command']}` reproduces it."]
    with open(out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.25
    for i, method in enumerate(methods):
        cells = {r["pattern"]: r["perplexity"] for r in report["oneshot"] if r["method"] == method}
        xs = [j + (i - 1) * width for j, p in enumerate(PATTERNS) if p in cells]
        left.bar(xs, [cells[p] for p in PATTERNS if p in cells], width, label=f"{method} one-shot")
    for kind, marker in (("recovery", "*"), ("lora", "P")):
        for r in report[kind]:
            if "recovered" in r:
                left.scatter([PATTERNS.index(r["pattern"]) + 0.25], [r["recovered"]], marker=marker, s=120, zorder=3,
                             label=f"{r['method']} + {'recovery' if kind == 'recovery' else 'LoRA'} ({r['steps']} steps)")
    left.axhline(dense, color="k", linestyle="--", label="dense")
    left.set_xticks([0, 1], [LABEL[p] for p in PATTERNS])
    left.set_yscale("log")
    left.set_ylabel("held-out perplexity")
    left.set_title("one-shot and recovered")
    left.legend(fontsize=7)
    for kind, style in (("recovery", "-"), ("lora", ":")):
        for r in report[kind]:
            xs = [0] + [t for _, _, t in r["curve"]]
            ys = [r["oneshot"]] + [p for _, p, _ in r["curve"]]
            right.plot(xs, ys, style, marker="o", label=f"{r['method']} {LABEL[r['pattern']]} {'full' if kind == 'recovery' else 'LoRA'}")
    right.axhline(dense, color="k", linestyle="--", label="dense")
    right.set_xlabel("training seconds (loaded 2-core CPU)")
    right.set_ylabel("held-out perplexity")
    right.set_title("recovery with distillation")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out + ".png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
