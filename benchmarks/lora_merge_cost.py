"""What a sparsity-preserving LoRA merge costs, and what MaskedLoraDeltas saves.

A small BERT is made sparse with gmp on task A, then LoRA adapts it to task B with the base kept
exactly sparse, once with plain (dense) adapters and once with ``MaskedLoraDeltas``. For each we
print accuracy on B before the merge, after ``hf_sparse.merge_and_unload`` (exact base sparsity)
and after peft's own merge (dense delta: what sparsity is left), plus the logit change and the share
of the delta that masking dropped. Offline, CPU, a few minutes at the defaults.

    python benchmarks/lora_merge_cost.py [--sparsities 0.5 0.9] [--base-steps 80] [--lora-steps 60]

Writes benchmarks/results/lora_merge_cost.json and .png.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from peft import LoraConfig, get_peft_model
from torch.utils.data import Dataset
from tqdm import tqdm
from transformers import BertConfig, BertForSequenceClassification, TrainingArguments

from hf_sparse import MaskedLoraDeltas, SparseTrainer, SparsityConfig, merge_and_unload, sparsity_report

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
VOCAB = 200


class TokenTask(Dataset):
    """Random token sequences labelled by whether the token at ``position`` is in the upper half."""

    def __init__(self, n: int, position: int, seed: int, seq_len: int = 12):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, VOCAB, (n, seq_len), generator=g)
        self.labels = (self.ids[:, position] >= VOCAB // 2).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}

    def batch(self) -> dict:
        return {"input_ids": self.ids}


def _args(out: str, steps: int, lr: float) -> TrainingArguments:
    return TrainingArguments(out, max_steps=steps, per_device_train_batch_size=16, learning_rate=lr,
                             logging_steps=max(steps, 1), save_strategy="no", report_to=[], use_cpu=True,
                             disable_tqdm=True, seed=0)


@torch.no_grad()
def accuracy(model: torch.nn.Module, data: TokenTask) -> float:
    model.eval()
    return float((model(**data.batch()).logits.argmax(-1) == data.labels).float().mean())


def run(sparsity: float, base_steps: int, lora_steps: int, out: str) -> list[dict]:
    torch.manual_seed(0)
    base = BertForSequenceClassification(
        BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=128, max_position_embeddings=32, num_labels=2)
    )
    config = SparsityConfig(method="gmp", sparsity=sparsity, end=0.6, update_every=10)
    base_trainer = SparseTrainer(model=base, args=_args(out, base_steps, 2e-3), sparsity_config=config,
                                 train_dataset=TokenTask(1280, position=0, seed=0))
    base_trainer.train()
    task_b, eval_b = TokenTask(1280, position=-1, seed=1), TokenTask(256, position=-1, seed=2)
    rows = []
    for mode in ("plain", "masked"):
        peft_model = get_peft_model(copy.deepcopy(base), LoraConfig(
            task_type="SEQ_CLS", r=8, lora_alpha=16, target_modules=["query", "key", "value", "dense"]))
        trainer = SparseTrainer(model=peft_model, args=_args(out, lora_steps, 5e-3), train_dataset=task_b,
                                base_masks=base_trainer)
        if mode == "masked":
            MaskedLoraDeltas(peft_model, trainer.sparsifier)
        trainer.train()
        before = accuracy(peft_model, eval_b)
        dense = copy.deepcopy(peft_model)
        for module in dense.modules():  # peft's own merge folds in the dense delta
            module.__dict__.pop("forward", None)
        dense = dense.merge_and_unload()
        result = merge_and_unload(peft_model, base_trainer, inputs=eval_b.batch())
        rows.append(dict(
            sparsity=sparsity, mode=mode, base_acc_task_a=accuracy(base, TokenTask(256, position=0, seed=3)),
            acc_before_merge=before, acc_after_sparse_merge=accuracy(result.model, eval_b),
            acc_after_peft_merge=accuracy(dense, eval_b),
            sparsity_after_sparse_merge=sparsity_report(result.model)["sparsity"],
            sparsity_after_peft_merge=sparsity_report(dense)["sparsity"],
            max_logit_diff=result.max_logit_diff, mean_logit_diff=result.mean_logit_diff,
            changed_predictions=result.changed_predictions, delta_dropped=result.mean_delta_dropped,
        ))
    return rows


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['sparsity']:.0%} {r['mode']}" for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.38
    ax.bar([i - width / 2 for i in x], [r["acc_before_merge"] for r in rows], width, label="before merge")
    ax.bar([i + width / 2 for i in x], [r["acc_after_sparse_merge"] for r in rows], width,
           label="after hf_sparse merge (exact sparsity)")
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("task B accuracy")
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("LoRA on a sparse base: plain vs MaskedLoraDeltas")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.9])
    parser.add_argument("--base-steps", type=int, default=80)
    parser.add_argument("--lora-steps", type=int, default=60)
    options = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for sparsity in tqdm(options.sparsities, desc="sparsities"):
            rows += run(sparsity, options.base_steps, options.lora_steps, out)
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "lora_merge_cost.json"), "w", encoding="utf-8") as handle:
        json.dump(rows, handle, indent=1)
    plot(rows, os.path.join(RESULTS, "lora_merge_cost.png"))
    header = ("sparsity", "mode", "acc before", "acc sparse merge", "acc peft merge", "sparsity peft merge",
              "max |dlogit|", "mean |dlogit|", "changed", "delta dropped")
    print(" | ".join(header))
    for r in rows:
        print(" | ".join([
            f"{r['sparsity']:.2f}", r["mode"], f"{r['acc_before_merge']:.3f}", f"{r['acc_after_sparse_merge']:.3f}",
            f"{r['acc_after_peft_merge']:.3f}", f"{r['sparsity_after_peft_merge']:.3f}", f"{r['max_logit_diff']:.3g}",
            f"{r['mean_logit_diff']:.3g}", f"{r['changed_predictions']:.3f}", f"{r['delta_dropped']:.3f}",
        ]))


if __name__ == "__main__":
    main()
