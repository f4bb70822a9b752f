"""A save interrupted at any write leaves the previous checkpoint exact (byte for byte, and loadable).

Every file-system write a save makes (safetensors writes, text files opened for writing, renames,
folder creations) is counted, then the save is repeated with a failure injected at each one in turn.
"""

from __future__ import annotations

import builtins
import os
import shutil

import pytest
import torch

import hf_sparse
import hf_sparse.io.shards as shards
import hf_sparse.io.training_state as training_state

from ckpt_helpers import files_of, masks_equal, save
from helpers import PairDataset, tiny_bert, training_args
from export_helpers import assert_bitwise_equal, prune, state


class Injected(OSError):
    pass


class Faults:
    """Counts write events; raises :class:`Injected` at the ``fail_at``-th one (once)."""

    def __init__(self, monkeypatch):
        self.count, self.fail_at = 0, None
        import safetensors.torch
        import transformers.modeling_utils as modeling_utils

        def hook(original):
            def wrapped(*args, **kwargs):
                self.event()
                return original(*args, **kwargs)

            return wrapped

        real_open = builtins.open

        def open_(file, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax+"):
                self.event()
            return real_open(file, mode, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", open_)
        for module, name in ((os, "replace"), (os, "mkdir"), (shards, "save_file"), (training_state, "save_file"),
                             (modeling_utils, "safe_save_file"), (safetensors.torch, "save_file")):
            monkeypatch.setattr(module, name, hook(getattr(module, name)))

    def event(self) -> None:
        self.count += 1
        if self.fail_at is not None and self.count == self.fail_at:
            raise Injected(f"injected failure at write {self.count}")

    def arm(self, at) -> None:
        self.count, self.fail_at = 0, at


def _run_with_faults(tmp_path, monkeypatch, write_old, write_new, check_old, check_new) -> int:
    template = tmp_path / "template"
    write_old(template)
    before = files_of(template)
    check_old(template)
    faults = Faults(monkeypatch)
    faults.arm(None)
    write_new(tmp_path / "count")  # a save into an empty folder: at least as many events as below
    shutil.copytree(template, tmp_path / "probe")
    faults.arm(None)
    write_new(tmp_path / "probe")
    total = faults.count
    assert total >= 5
    failed = 0
    for at in range(1, total + 1):
        target = tmp_path / f"run{at}"
        shutil.copytree(template, target)
        faults.arm(at)
        try:
            write_new(target)
        except Injected:
            failed += 1
            faults.arm(None)
            assert files_of(target) == before, f"write {at} of {total} changed the previous checkpoint"
            assert not [n for n in os.listdir(target) if n.startswith(".tmp-")], at
        else:  # the failure hit a step after the commit (e.g. cleanup): the new checkpoint is complete
            faults.arm(None)
            check_new(target)
        shutil.rmtree(target)
    monkeypatch.undo()
    check_old(template)
    return failed


@pytest.mark.parametrize("compressed", [False, True, "compressed-tensors"])
def test_interrupted_save_sparse_keeps_previous_checkpoint(tmp_path, monkeypatch, compressed):
    old, new = tiny_bert(seed=1), tiny_bert(seed=2)
    old_masks, new_masks = prune(old, 0.9), prune(new, 0.5)
    for model, masks in ((old, old_masks), (new, new_masks)):  # kept zeros: the masks file is needed
        name = next(iter(masks))
        with torch.no_grad():
            dict(model.named_parameters())[name].view(-1)[masks[name].view(-1).nonzero()[0, 0]] = 0.0

    def check(model, masks):
        def run(folder):
            loaded, loaded_masks = hf_sparse.load_sparse(folder)
            assert_bitwise_equal(state(loaded), state(model))
            assert masks_equal(loaded_masks, masks)

        return run

    failed = _run_with_faults(
        tmp_path, monkeypatch,
        lambda d: save(old, d, masks=old_masks, compressed=compressed, config={"sparsity": 0.9}),
        lambda d: save(new, d, masks=new_masks, compressed=compressed, max_shard_size="40KB"),
        check(old, old_masks), check(new, new_masks),
    )
    assert failed >= 5


def test_interrupted_trainer_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    from hf_sparse import SparseTrainer, SparsityConfig

    trainer = SparseTrainer(model=tiny_bert(), args=training_args(tmp_path / "run", max_steps=4),
                            train_dataset=PairDataset(n=16),
                            sparsity_config=SparsityConfig(sparsity=0.5, start=0.0, end=0.5, update_every=1))
    trainer.train()
    old = tiny_bert(seed=3)
    old_masks = prune(old, 0.9)

    def check_old(folder):
        loaded, masks = hf_sparse.load_sparse(folder)
        assert_bitwise_equal(state(loaded), state(old))
        assert masks_equal(masks, old_masks)

    def check_new(folder):
        loaded, masks = hf_sparse.load_sparse(folder)
        assert_bitwise_equal(state(loaded), state(trainer.model))
        assert masks_equal(masks, trainer.masks)
        resumed_state, _ = training_state.load_sparsity_state(str(folder))
        assert masks_equal(resumed_state["masks"], trainer.masks)

    failed = _run_with_faults(tmp_path, monkeypatch, lambda d: hf_sparse.save_sparse(old, d, masks=old_masks),
                              lambda d: trainer.save_model(str(d)), check_old, check_new)
    assert failed >= 5
