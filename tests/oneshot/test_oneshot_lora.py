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


def test_masked_lora_with_distillation_merges_to_the_model_it_trained(tmp_path):
    """The path benchmarks/llm_recovery.py measures: LoRA on a SparseGPT 2:4 model, trained as the masked
    merge (MaskedLoraDeltas) while distilling from the dense model; the merge changes nothing and keeps 2:4."""
    import copy

    from peft import LoraConfig, get_peft_model

    from hf_sparse import DistillationConfig, MaskedLoraDeltas

    dense = tiny_llama()
    model = copy.deepcopy(dense)
    masks = hf_sparse.prune(model, pattern="2:4", method="sparsegpt", calibration=token_batches(n=2))
    pruned = {name: p.detach().clone() for name, p in model.named_parameters()}
    peft_model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, lora_dropout=0.0,
                                                  target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                  "gate_proj", "up_proj", "down_proj"]))
    trainer = SparseTrainer(model=peft_model, args=training_args(tmp_path, max_steps=4, learning_rate=1e-2),
                            train_dataset=TokenDataset(), base_masks=masks, teacher_model=dense,
                            distillation=DistillationConfig(temperature=1.0, alpha=1.0))
    probe = {"input_ids": token_batches(n=1)[0]["input_ids"]}
    with MaskedLoraDeltas(peft_model, masks):
        trainer.train()
        peft_model.eval()
        with torch.no_grad():
            trained_logits = peft_model(**probe).logits
    result = merge_and_unload(peft_model, masks, inputs=probe, nm="keep_mask")
    with torch.no_grad():
        merged_logits = result.model(**probe).logits
    torch.testing.assert_close(merged_logits, trained_logits, rtol=1e-4, atol=1e-4)
    merged = dict(result.model.named_parameters())
    for name, mask in masks.items():
        weight = merged[name]
        assert torch.all(weight[~mask] == 0), name
        assert torch.all((weight.view(-1, 4) != 0).sum(1) <= 2), name
        assert not torch.equal(weight, pruned[name]), name  # the adapters trained and were merged in
