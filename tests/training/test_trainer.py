"""SparseTrainer behaviour beyond the shared matrix: logging, clipping, plain modules, errors."""

from __future__ import annotations

import json

import pytest
import torch

from hf_sparse import SparseTrainer, Sparsifier, SparsityConfig, sparsity_report
from hf_sparse.io.training_state import KEY_STATE, STATE_FILE

from helpers import PairDataset, TinyMLP, VectorDataset, tiny_bert, training_args
from test_methods_common import InvariantChecker

GMP = dict(method="gmp", sparsity=0.75, start=2, end=8, update_every=2, recipe="none")  # the mechanics at exactly these steps


def test_plain_module_trains_sparse(tmp_path):
    model = TinyMLP()
    trainer = SparseTrainer(model=model, args=training_args(tmp_path), train_dataset=VectorDataset(),
                            sparsity_config=SparsityConfig(**GMP))
    checker = InvariantChecker(trainer)
    trainer.add_callback(checker)
    trainer.train()
    assert checker.violations == []
    report = sparsity_report(model)
    assert abs(report["sparsity"] - 0.75) < 3 / report["numel"]
    assert set(report["layers"]) == set(trainer.masks)
    assert "total" in str(report)


def test_logs_carry_sparsity_and_target(tmp_path):
    trainer = SparseTrainer(model=tiny_bert(), args=training_args(tmp_path, logging_steps=1),
                            train_dataset=PairDataset(), sparsity_config=SparsityConfig(**GMP))
    trainer.train()
    train_logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(train_logs) == 12
    by_step = {h["step"]: h for h in train_logs}
    assert by_step[1]["sparsity"] == 0.0 and by_step[1]["target_sparsity"] == 0.0
    assert by_step[12]["target_sparsity"] == 0.75 and abs(by_step[12]["sparsity"] - 0.75) < 1e-3
    sparsities = [by_step[s]["sparsity"] for s in sorted(by_step)]
    assert sparsities == sorted(sparsities)  # gmp only ever prunes


def test_pruned_gradients_are_zero_before_clipping(tmp_path):
    trainer = SparseTrainer(model=tiny_bert(), args=training_args(tmp_path, max_grad_norm=0.5),
                            train_dataset=PairDataset(), sparsity_config=SparsityConfig(**GMP))
    seen = []
    original = trainer.accelerator.clip_grad_norm_

    def spy(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        if max_norm != float("inf"):
            seen.append(all(
                p.grad is None or torch.all(p.grad[~trainer.masks[n]] == 0)
                for n, p in trainer.sparsifier.params.items()
            ))
        return original(parameters, max_norm, *args, **kwargs)

    trainer.accelerator.clip_grad_norm_ = spy
    trainer.train()
    assert len(seen) == 12 and all(seen)


def test_bf16_autocast_keeps_exact_zeros(tmp_path):
    trainer = SparseTrainer(model=tiny_bert(), args=training_args(tmp_path, bf16=True),
                            train_dataset=PairDataset(), sparsity_config=SparsityConfig(**GMP))
    checker = InvariantChecker(trainer)
    trainer.add_callback(checker)
    trainer.train()
    assert checker.violations == [] and trainer.sparsifier.sparsity > 0.7


def test_oneshot_at_start_prunes_before_the_first_step(tmp_path):
    trainer = SparseTrainer(model=tiny_bert(), args=training_args(tmp_path, max_steps=2),
                            train_dataset=PairDataset(), sparsity_config=SparsityConfig(method="oneshot", sparsity=0.5))
    checker = InvariantChecker(trainer)
    trainer.add_callback(checker)
    trainer.train()
    first = checker.masks_at_step[0]
    assert abs(1 - sum(int(m.sum()) for m in first.values()) / sum(m.numel() for m in first.values()) - 0.5) < 1e-3
    assert all(torch.equal(first[n], m) for n, m in trainer.masks.items())


def test_config_forms_accepted(tmp_path):
    SparsityConfig(**GMP).to_json_file(tmp_path / "c.json")
    for form in (GMP, str(tmp_path / "c.json"), None):
        trainer = SparseTrainer(model=tiny_bert(), args=training_args(tmp_path), sparsity_config=form)
        assert isinstance(trainer.sparsity_config, SparsityConfig)
    with pytest.raises(TypeError, match="sparsity_config"):
        SparseTrainer(model=tiny_bert(), args=training_args(tmp_path), sparsity_config=0.9)
    with pytest.raises(ValueError, match="no sparsifiable weights"):
        SparseTrainer(model=tiny_bert(), args=training_args(tmp_path), sparsity_config=dict(targets=["nothing"]))


def _checkpointed_run(tmp_path):
    trainer = SparseTrainer(model=tiny_bert(), args=training_args(tmp_path, save_strategy="steps", save_steps=4),
                            train_dataset=PairDataset(), sparsity_config=SparsityConfig(**GMP))
    trainer.train()
    return tmp_path / "checkpoint-4"


def test_resume_rejects_mismatched_or_missing_state(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    checkpoint = _checkpointed_run(tmp_path / "run")
    assert (checkpoint / STATE_FILE).is_file() and (checkpoint / "sparse_masks.safetensors").is_file()
    assert not (checkpoint / "sparsity_state.json").exists()  # one state file, one masks file
    # masks for other targets than the model's
    other = SparseTrainer(model=tiny_bert(), args=training_args(tmp_path / "other"), train_dataset=PairDataset(),
                          sparsity_config=SparsityConfig(**GMP, targets=[r"attention\.self"]))
    with pytest.raises(ValueError, match="masks do not match the model's targets"):
        other.train(resume_from_checkpoint=str(checkpoint))
    fresh = SparseTrainer(model=tiny_bert(), args=training_args(tmp_path / "fresh"), train_dataset=PairDataset(),
                          sparsity_config=SparsityConfig(**GMP))
    # a newer format
    with safe_open(str(checkpoint / STATE_FILE), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(checkpoint / STATE_FILE))
    document = json.loads(meta[KEY_STATE])
    document["format_version"] = 99
    save_file(tensors, str(checkpoint / STATE_FILE), metadata={**meta, KEY_STATE: json.dumps(document)})
    with pytest.raises(ValueError, match="upgrade hf_sparse"):
        fresh.train(resume_from_checkpoint=str(checkpoint))
    # corrupt state file
    (checkpoint / STATE_FILE).write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="corrupt or truncated"):
        fresh.train(resume_from_checkpoint=str(checkpoint))
    # a checkpoint written by a plain Trainer
    (checkpoint / STATE_FILE).unlink()
    with pytest.raises(ValueError, match="not written by SparseTrainer"):
        fresh.train(resume_from_checkpoint=str(checkpoint))


def test_skipped_amp_step_defers_the_update():
    model = TinyMLP()
    sparsifier = Sparsifier(model, SparsityConfig(method="oneshot", sparsity=0.5, start=3))
    sparsifier.begin(total_steps=10)
    assert sparsifier.after_optimizer_step(3, skipped=True) is False
    assert sparsifier.sparsity == 0.0 and sparsifier.pending_update
    assert sparsifier.after_optimizer_step(4) is True
    assert abs(sparsifier.sparsity - 0.5) < 1e-3 and not sparsifier.pending_update


def test_load_best_model_restores_its_masks(tmp_path):
    from hf_sparse.io.training_state import load_sparsity_state

    args = training_args(tmp_path, eval_strategy="steps", eval_steps=4, save_strategy="steps", save_steps=4,
                         load_best_model_at_end=True, metric_for_best_model="sparsity_probe", greater_is_better=True)
    trainer = SparseTrainer(model=tiny_bert(), args=args, train_dataset=PairDataset(), eval_dataset=PairDataset(n=16),
                            sparsity_config=SparsityConfig(**GMP),
                            compute_metrics=lambda _: {"sparsity_probe": -trainer.sparsifier.sparsity})
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best is not None and best.endswith("checkpoint-4")  # the least sparse: masks differ from the last
    state, _ = load_sparsity_state(best)
    for name, mask in trainer.masks.items():
        assert torch.equal(mask, state["masks"][name])
        assert torch.all(trainer.sparsifier.params[name].detach()[~mask] == 0)
