"""Overhead of SparseTrainer over Trainer, and the cost of one global mask update.

python benchmarks/overhead.py [--steps 200 --repeats 3 --update-params 100e6]

1. The same BERT (hidden 256 x 4 layers, random init) and data trained with ``Trainer`` and
   with ``SparseTrainer`` (gmp to 90%, update_every=100), repeats interleaved; prints the median
   step time of each and their ratio (goal <= 1.03), and the whole-run ratio (mask updates included).
2. One global-magnitude mask update (exact threshold over all weights) on a model of ~100M
   targeted weights (goal < 1 s on CPU).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch import nn
from torch.utils.data import Dataset
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

from hf_sparse import SparseTrainer, Sparsifier, SparsityConfig


class RandomTokens(Dataset):
    def __init__(self, n: int, seq_len: int = 64, vocab: int = 1000):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, vocab, (n, seq_len), generator=g)
        self.labels = torch.randint(0, 2, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


class StepTimer(TrainerCallback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def run_once(sparse: bool, steps: int, batch: int) -> tuple[float, float]:
    torch.manual_seed(0)
    model = BertForSequenceClassification(
        BertConfig(vocab_size=1000, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                   intermediate_size=1024, max_position_embeddings=64, num_labels=2)
    )
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(out, max_steps=steps, per_device_train_batch_size=batch, save_strategy="no",
                                 report_to=[], use_cpu=True, disable_tqdm=True, logging_strategy="no")
        timer = StepTimer()
        kwargs = dict(model=model, args=args, train_dataset=RandomTokens(steps * batch), callbacks=[timer])
        trainer = (SparseTrainer(**kwargs, sparsity_config=SparsityConfig(method="gmp", sparsity=0.9, update_every=100))
                   if sparse else Trainer(**kwargs))
        start = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - start
    return statistics.median(timer.times[5:]), total


def mask_update_time(n_params: float, repeats: int = 3) -> list[float]:
    layers = max(1, int(round(n_params / (2048 * 2048))))
    model = nn.Sequential(*[nn.Linear(2048, 2048, bias=False) for _ in range(layers)])
    # start=5: nothing is pruned at begin(), so every timed update sees dense trained-like weights
    sparsifier = Sparsifier(model, SparsityConfig(method="oneshot", sparsity=0.9, allocation="global", start=5))
    sparsifier.begin(total_steps=10)
    print(f"model: {layers} x Linear(2048, 2048) = {layers * 2048 * 2048 / 1e6:.1f}M targeted weights")
    times = []
    for _ in range(repeats):
        dense = {n: torch.ones_like(m) for n, m in sparsifier.masks.items()}
        start = time.perf_counter()
        sparsifier.method.update_masks(0, sparsifier.weights(), dense)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--update-params", type=float, default=100e6)
    args = parser.parse_args()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load average {os.getloadavg()}")
    dense, sparse = [], []
    for r in range(args.repeats):
        dense.append(run_once(False, args.steps, args.batch))
        sparse.append(run_once(True, args.steps, args.batch))
        print(f"repeat {r}: step dense {dense[-1][0]*1e3:.1f} ms, sparse {sparse[-1][0]*1e3:.1f} ms; "
              f"run dense {dense[-1][1]:.1f} s, sparse {sparse[-1][1]:.1f} s")
    step_ratio = statistics.median(s[0] for s in sparse) / statistics.median(d[0] for d in dense)
    paired = statistics.median(s[0] / d[0] for s, d in zip(sparse, dense))
    run_ratio = statistics.median(s[1] for s in sparse) / statistics.median(d[1] for d in dense)
    print(f"median step-time ratio SparseTrainer/Trainer: {step_ratio:.3f} (goal <= 1.03)")
    print(f"median of paired per-repeat ratios (robust to drift between repeats): {paired:.3f}")
    print(f"median whole-run ratio (mask updates included): {run_ratio:.3f}")
    times = mask_update_time(args.update_params)
    print(f"global magnitude mask update: median {statistics.median(times):.2f} s over {len(times)} (goal < 1 s)")


if __name__ == "__main__":
    main()
