"""Continue sparse: the constant method, starting masks from zeros / metadata, gmp continuing.

The already sparse model is saved dense-with-zeros by plain ``save_pretrained`` and reloaded by
plain ``from_pretrained`` (how most sparse models are published).
"""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import BertForSequenceClassification, TrainerCallback

from hf_sparse import SparseTrainer, Sparsifier, SparsityConfig, read_masks
from hf_sparse.io.existing_masks import attach_masks
from hf_sparse.core.masks import topk_mask
from hf_sparse.core.targets import find_targets

from helpers import PairDataset, tiny_bert, training_args


def pruned_copy_on_disk(tmp_path, sparsity: float = 0.5, seed: int = 0):
    """A tiny BERT with the smallest |w| of each target zeroed, saved and reloaded plainly."""
    model = tiny_bert(seed)
    with torch.no_grad():
        for t in find_targets(model):
            keep = topk_mask(t.param.abs(), round((1 - sparsity) * t.param.numel()))
            t.param.masked_fill_(~keep, 0.0)
    folder = tmp_path / "sparse_model"
    model.save_pretrained(str(folder))
    return BertForSequenceClassification.from_pretrained(str(folder)), folder


def zero_masks(model) -> dict[str, torch.Tensor]:
    return {t.name: t.param.detach() != 0 for t in find_targets(model)}


class MaskRecorder(TrainerCallback):
    def __init__(self, trainer):
        self.sparsifier = trainer.sparsifier
        self.history: list[dict[str, torch.Tensor]] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.history.append({n: m.clone() for n, m in self.sparsifier.masks.items()})

    def on_step_end(self, args, state, control, **kwargs):
        self.history.append({n: m.clone() for n, m in self.sparsifier.masks.items()})


def _trainer(tmp_path, model, config, steps=6):
    args = training_args(tmp_path / "run", max_steps=steps, optim="adamw_torch")
    trainer = SparseTrainer(model=model, args=args, train_dataset=PairDataset(n=48), sparsity_config=config)
    recorder = MaskRecorder(trainer)
    trainer.add_callback(recorder)
    return trainer, recorder


def test_constant_keeps_zero_masks_fixed(tmp_path, caplog):
    model, _ = pruned_copy_on_disk(tmp_path, 0.5)
    expected = zero_masks(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = SparsityConfig(method="constant", method_args={"masks_from": "zeros"})
    trainer, recorder = _trainer(tmp_path, model, config)
    with caplog.at_level(logging.INFO, logger="hf_sparse"):
        trainer.train()
    assert len(recorder.history) == 7
    for masks in recorder.history:
        for name, mask in expected.items():
            assert torch.equal(masks[name], mask), name
    params = dict(model.named_parameters())
    moved = 0
    for name, mask in expected.items():
        assert torch.all(params[name].detach()[~mask] == 0), name
        moved += int((params[name].detach()[mask] != before[name][mask]).sum())
    assert moved > 0  # it trained
    assert trainer.sparsifier.update_count == 0
    assert trainer.sparsifier.target_sparsity() == pytest.approx(0.5, abs=1e-3)
    assert "starting masks from zeros" in caplog.text
    first = next(iter(expected))
    assert first in caplog.text and "50.00%" in caplog.text  # per-layer sparsity logged


def test_constant_masks_from_metadata(tmp_path):
    from hf_sparse import save_sparse

    model, folder = pruned_copy_on_disk(tmp_path, 0.5)
    metadata = zero_masks(model)
    name = next(iter(metadata))
    kept = metadata[name].nonzero()[:5]
    for row, col in kept.tolist():  # metadata prunes 5 more weights than the zeros say
        metadata[name][row, col] = False
    zeroed = BertForSequenceClassification.from_pretrained(str(folder))
    with torch.no_grad():
        dict(zeroed.named_parameters())[name].masked_fill_(~metadata[name], 0.0)
    save_sparse(zeroed, str(folder), masks=metadata)  # a folder whose files agree
    assert set(read_masks(str(folder))) == set(metadata)
    reloaded = BertForSequenceClassification.from_pretrained(str(folder))  # plain from_pretrained
    assert torch.equal(read_masks(reloaded)[name], metadata[name])  # found through name_or_path
    with torch.no_grad():  # weights moved after loading: nonzero where the metadata prunes
        dict(reloaded.named_parameters())[name].add_(1.0)
    config = SparsityConfig(method="constant", method_args={"masks_from": "metadata"})
    sparsifier = Sparsifier(reloaded, config)
    sparsifier.begin(10)
    for n, mask in metadata.items():
        assert torch.equal(sparsifier.masks[n], mask), n
    weight = dict(reloaded.named_parameters())[name].detach()
    assert torch.all(weight[~metadata[name]] == 0)  # the pruned weights were zeroed again


def test_auto_prefers_metadata_attached_by_a_loader(tmp_path):
    model, _ = pruned_copy_on_disk(tmp_path, 0.5)
    masks = zero_masks(model)
    name = next(iter(masks))
    masks[name] = torch.zeros_like(masks[name])  # distinguishable from zeros
    attach_masks(model, masks)
    for config in (SparsityConfig(method="constant"), SparsityConfig(method="gmp", sparsity=0.9)):
        sparsifier = Sparsifier(model, config)
        sparsifier.begin(100)
        assert not sparsifier.masks[name].any(), config.method


def test_metadata_requested_but_absent_is_an_error():
    model = tiny_bert()
    sparsifier = Sparsifier(model, SparsityConfig(method="constant", method_args={"masks_from": "metadata"}))
    with pytest.raises(ValueError, match="metadata"):
        sparsifier.begin(10)
    sparsifier = Sparsifier(model, SparsityConfig(method="gmp", initial_masks="metadata"))
    with pytest.raises(ValueError, match="initial_masks='metadata'"):
        sparsifier.begin(10)


def test_bad_options_name_the_field():
    with pytest.raises(ValueError, match="masks_from"):
        SparsityConfig(method="constant", method_args={"masks_from": "disk"})
    with pytest.raises(ValueError, match="initial_masks"):
        SparsityConfig(initial_masks="sometimes")


def test_initial_masks_modes(tmp_path):
    model, _ = pruned_copy_on_disk(tmp_path, 0.5)
    zeros = zero_masks(model)
    for mode, expect_sparse in (("auto", True), ("zeros", True), ("dense", False)):
        sparsifier = Sparsifier(model, SparsityConfig(method="gmp", sparsity=0.9, start=50, end=60, initial_masks=mode))
        sparsifier.begin(100)  # no update at step 0: the masks are the starting masks
        for name, mask in sparsifier.masks.items():
            assert torch.equal(mask, zeros[name] if expect_sparse else torch.ones_like(mask)), (mode, name)


def test_auto_ignores_stray_zeros_of_a_dense_model():
    model = tiny_bert()
    target = find_targets(model)[0]
    with torch.no_grad():
        target.param.view(-1)[:3] = 0.0  # far below 1% of the targeted weights
    sparsifier = Sparsifier(model, SparsityConfig(method="gmp", start=50, end=60))
    sparsifier.begin(100)
    assert all(bool(m.all()) for m in sparsifier.masks.values())
    constant = Sparsifier(model, SparsityConfig(method="constant"))
    constant.begin(100)  # constant keeps every zero, however few
    assert int((~constant.masks[target.name]).sum()) == 3


def test_gmp_continues_from_50_to_80_without_regrowth(tmp_path, caplog):
    model, _ = pruned_copy_on_disk(tmp_path, 0.5)
    start_masks = zero_masks(model)
    config = SparsityConfig(method="gmp", sparsity=0.8, start=0, end=8, update_every=2)
    trainer, recorder = _trainer(tmp_path, model, config, steps=10)
    with caplog.at_level(logging.INFO, logger="hf_sparse"):
        trainer.train()
    assert "continuing from the current sparsity 50.00%" in caplog.text
    assert trainer.sparsifier.method.initial_sparsity == pytest.approx(0.5, abs=1e-3)
    history = recorder.history
    for name, mask in start_masks.items():
        assert torch.equal(history[0][name], mask), name
    for previous, current in zip(history, history[1:]):
        for name in current:
            assert not torch.any(current[name] & ~previous[name]), f"{name} regrew a pruned weight"
    final = trainer.masks
    kept = sum(int(m.sum()) for m in final.values())
    total = sum(m.numel() for m in final.values())
    assert abs((1 - kept / total) - 0.8) <= len(final) / total
    sparsities = [1 - sum(int(m.sum()) for m in h.values()) / total for h in history]
    assert sparsities[0] == pytest.approx(0.5, abs=1e-3) and sparsities == sorted(sparsities)
    params = dict(model.named_parameters())
    for name, mask in final.items():
        assert torch.all(params[name].detach()[~mask] == 0)


def test_continuing_state_survives_a_checkpoint_round_trip(tmp_path):
    model, _ = pruned_copy_on_disk(tmp_path, 0.5)
    config = SparsityConfig(method="gmp", sparsity=0.8, start=10, end=20, update_every=5)
    sparsifier = Sparsifier(model, config)
    sparsifier.begin(30)
    state = sparsifier.state_dict()
    assert state["method"]["initial_sparsity"] == pytest.approx(0.5, abs=1e-3)
    fresh = Sparsifier(tiny_bert(), config)  # a dense model: only the saved state says 50%
    fresh.load_state_dict(state)
    fresh.begin(30)
    assert fresh.method.initial_sparsity == pytest.approx(0.5, abs=1e-3)
    assert fresh.target_sparsity() == pytest.approx(0.5, abs=1e-3)
    for name, mask in sparsifier.masks.items():
        assert torch.equal(fresh.masks[name], mask)


def test_read_masks_of_a_plain_folder_is_none(tmp_path):
    _, folder = pruned_copy_on_disk(tmp_path, 0.5)
    assert read_masks(str(folder)) is None  # no masks anywhere: None, not an error
    (tmp_path / "empty").mkdir()
    assert read_masks(str(tmp_path / "empty")) is None


def test_masks_saved_by_save_sparse_reach_constant_through_plain_from_pretrained(tmp_path):
    from hf_sparse import load_sparse, save_sparse

    model, _ = pruned_copy_on_disk(tmp_path, 0.5)
    masks = zero_masks(model)
    name = next(iter(masks))
    masks[name] = masks[name].clone()
    masks[name].view(-1)[masks[name].view(-1).nonzero()[:4, 0]] = False  # metadata differs from zeros
    with torch.no_grad():
        dict(model.named_parameters())[name].masked_fill_(~masks[name], 0.0)
        dict(model.named_parameters())[name].view(-1)[masks[name].view(-1).nonzero()[:1, 0]] = 0.0  # a kept zero
    save_sparse(model, str(tmp_path / "exported"), masks=masks)
    reloaded = BertForSequenceClassification.from_pretrained(str(tmp_path / "exported"))
    sparsifier = Sparsifier(reloaded, SparsityConfig(method="constant", method_args={"masks_from": "metadata"}))
    sparsifier.begin(10)
    assert torch.equal(sparsifier.masks[name], masks[name])  # the stored mask, not weight != 0
    assert not torch.equal(sparsifier.masks[name], zero_masks(reloaded)[name])
    loaded, loaded_masks = load_sparse(str(tmp_path / "exported"))
    assert torch.equal(read_masks(str(tmp_path / "exported"))[name], loaded_masks[name])
