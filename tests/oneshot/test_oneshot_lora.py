"""LoRA on a one-shot pruned causal LM: the base stays exactly sparse while adapters train, and the
merge keeps the unstructured sparsity and the exact 2:4 pattern (the existing hf_sparse.lora path)."""

from __future__ import annotations

import pytest
import torch
from helpers import training_args
from oneshot_helpers import tiny_llama, token_batches
from test_oneshot_continue import TokenDataset

import hf_sparse
from hf_sparse import SparseTrainer, merge_and_unload


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_lora_merge_keeps_one_shot_sparsity(pattern, tmp_path):
    from peft import LoraConfig, get_peft_model

    model = tiny_llama()
    masks = hf_sparse.prune(model, pattern=pattern, method="sparsegpt", calibration=token_batches(n=2))
    peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8,
                                                  target_modules=["q_proj", "v_proj", "down_proj"]))
    trainer = SparseTrainer(model=peft_model, args=training_args(tmp_path, max_steps=4, learning_rate=1e-2),
                            train_dataset=TokenDataset(), base_masks=masks)
    trainer.train()
    result = merge_and_unload(peft_model, masks, nm="keep_mask" if pattern == "2:4" else "error")
    merged = dict(result.model.named_parameters())
    assert abs(result.sparsity - 0.5) < 1e-9
    assert result.mean_delta_dropped > 0  # the adapters did train and the masks cut their dense delta
    for name, mask in masks.items():
        weight = merged[name]
        assert torch.equal(weight != 0, mask), name  # exactly the one-shot masks: nothing pruned came back
        if pattern == "2:4":
            assert torch.equal((weight.view(-1, 4) != 0).sum(1), torch.full((weight.numel() // 4,), 2)), name
