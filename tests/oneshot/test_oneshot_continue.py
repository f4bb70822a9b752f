"""One-shot masks as the start of training: SparseTrainer keeps them (constant) or prunes on from them (gmp)."""

from __future__ import annotations

import torch
from helpers import training_args
from oneshot_helpers import tiny_llama, token_batches
from torch.utils.data import Dataset

import hf_sparse
from hf_sparse import SparseTrainer, SparsityConfig


class TokenDataset(Dataset):
    def __init__(self, n: int = 32, length: int = 16, seed: int = 0):
        self.ids = torch.randint(0, 128, (n, length), generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def train(model, config, tmp_path, steps=6):
    trainer = SparseTrainer(model=model, args=training_args(tmp_path, max_steps=steps, learning_rate=1e-2),
                            train_dataset=TokenDataset(), sparsity_config=config)
    trainer.train()
    return trainer


def test_constant_keeps_the_sparsegpt_masks_exactly(tmp_path):
    model = tiny_llama()
    masks = hf_sparse.prune(model, pattern="2:4", method="sparsegpt", calibration=token_batches(n=2))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, SparsityConfig(method="constant"), tmp_path)
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert torch.all(params[name][~mask] == 0), name
        assert not torch.equal(params[name][mask], before[name][mask]), name  # the kept weights trained


def test_gmp_prunes_on_from_the_wanda_masks(tmp_path):
    model = tiny_llama()
    masks = hf_sparse.prune(model, sparsity=0.5, method="wanda", calibration=token_batches(n=2))
    trainer = train(model, SparsityConfig(method="gmp", sparsity=0.75, allocation="uniform", recipe="none",
                                          update_every=2, end=0.7), tmp_path)
    final = trainer.sparsifier.masks
    for name, mask in masks.items():
        assert not torch.any(final[name] & ~mask), name  # nothing the one-shot step pruned came back
        assert abs(1 - final[name].float().mean().item() - 0.75) < 0.01, name
