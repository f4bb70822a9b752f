"""load_sparse hands its masks to the rest of hf_sparse: fine-tuning and sparse inference."""

from __future__ import annotations

import torch

import hf_sparse
from hf_sparse import SparsityConfig, Sparsifier, read_masks, save_sparse

from helpers import tiny_bert


def _sparse_folder(tmp_path):
    model = tiny_bert()
    sparsifier = Sparsifier(model, SparsityConfig(method="oneshot", sparsity=0.9))
    sparsifier.begin(total_steps=1)
    save_sparse(model, tmp_path / "sparse", masks=sparsifier.masks, compressed=True)
    return model, sparsifier.masks


def test_loaded_masks_are_attached_for_fine_tuning(tmp_path):
    _, masks = _sparse_folder(tmp_path)
    model, loaded = hf_sparse.load_sparse(tmp_path / "sparse")
    attached = read_masks(model)
    assert attached is not None and set(attached) == set(masks)
    assert all(torch.equal(attached[n], m) for n, m in masks.items())
    # a constant fine-tune starts from exactly these masks, from metadata
    sparsifier = Sparsifier(model, SparsityConfig(method="constant", method_args={"masks_from": "metadata"}))
    sparsifier.begin(total_steps=4)
    assert all(torch.equal(sparsifier.masks[n], m) for n, m in masks.items())


def test_load_sparse_can_return_a_sparse_inference_model(tmp_path):
    original, _ = _sparse_folder(tmp_path)
    batch = {"input_ids": torch.randint(1, 50, (4, 8)), "attention_mask": torch.ones(4, 8, dtype=torch.long)}
    model, _ = hf_sparse.load_sparse(tmp_path / "sparse", sparse_inference=True, example_inputs=batch)
    assert not model.training and hasattr(model, "sparse_inference_plan")
    original.eval()
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, original(**batch).logits, atol=1e-5)
