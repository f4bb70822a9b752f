"""A one-minute offline demo: sparsify a small BERT to 90% with gradual magnitude pruning.

python examples/demo.py
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch.utils.data import Dataset
from transformers import BertConfig, BertForSequenceClassification, TrainingArguments

from hf_sparse import SparseTrainer, SparsityConfig, sparsity_report


class ToyTask(Dataset):
    """Token sequences labelled by whether the first token is in the upper half of the vocabulary."""

    def __init__(self, n: int = 512, seq_len: int = 16, vocab: int = 200):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, vocab, (n, seq_len), generator=g)
        self.labels = (self.ids[:, 0] >= vocab // 2).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def main() -> None:
    torch.manual_seed(0)
    model = BertForSequenceClassification(
        BertConfig(vocab_size=200, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=256, max_position_embeddings=32, num_labels=2)
    )
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(out, max_steps=200, per_device_train_batch_size=32, learning_rate=5e-4,
                                 logging_steps=50, save_strategy="no", report_to=[], use_cpu=True)
        config = SparsityConfig(method="gmp", sparsity=0.9, end=0.6, update_every=20)
        SparseTrainer(model=model, args=args, train_dataset=ToyTask(), sparsity_config=config).train()
    print(sparsity_report(model))


if __name__ == "__main__":
    main()
