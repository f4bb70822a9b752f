"""train_dense_then_sparse: dense fine-tuning, then a pruned copy distilling from it (tiny BERT, seconds)."""

from __future__ import annotations

import os

import pytest
import torch

from helpers import PairDataset, tiny_bert, training_args
from hf_sparse import SparseTrainer, SparsityConfig, sparsity_report, train_dense_then_sparse
from hf_sparse.training.distill import DistillationConfig


def _args(tmp_path, **overrides):
    return training_args(tmp_path / "run", **{"max_steps": 6, "logging_steps": 2, **overrides})


def test_dense_then_a_pruned_copy_that_distils_from_it(tmp_path):
    start = tiny_bert()
    initial = {k: v.clone() for k, v in start.state_dict().items()}
    result = train_dense_then_sparse(
        start, _args(tmp_path), SparsityConfig(sparsity=0.75), PairDataset(), PairDataset(n=16, seed=1),
        distillation=DistillationConfig(temperature=3.0),
    )
    dense, sparse = result.dense, result.sparse
    assert dense.output_dir == str(tmp_path / "run" / "dense_teacher") and sparse.output_dir == str(tmp_path / "run")
    assert os.path.isfile(os.path.join(dense.output_dir, "model.safetensors"))
    assert os.path.isfile(os.path.join(sparse.output_dir, "sparsity_config.json"))
    assert type(dense.trainer) is not SparseTrainer and isinstance(sparse.trainer, SparseTrainer)
    # the recipe's own length: 2x the dense run at 75%
    assert dense.trainer.state.global_step == 6 and sparse.trainer.state.global_step == 12
    assert sparse.trainer.teacher_model is dense.model and sparse.model is not dense.model
    assert sparse.trainer.distillation.temperature == 3.0
    assert sparsity_report(sparse.model)["sparsity"] == pytest.approx(0.75, abs=0.01)
    assert sparsity_report(dense.model)["sparsity"] < 0.01
    # the dense model trained (it is not the starting point) and the teacher stayed as the dense stage left it
    saved = type(start).from_pretrained(dense.output_dir).state_dict()
    name = "classifier.weight"
    assert not torch.equal(saved[name], initial[name])
    assert torch.equal(dense.model.state_dict()[name].cpu(), saved[name])
    assert {"eval_loss", "train_loss", "train_samples"} <= set(dense.metrics) and "eval_loss" in sparse.metrics
    assert result.gap("eval_loss") == dense.metrics["eval_loss"] - sparse.metrics["eval_loss"]


@pytest.mark.parametrize("distill", [False, True])
def test_sparsity_zero_is_a_dense_continuation_of_the_chosen_length(tmp_path, distill):
    """The budget-matched dense reference: stage 2 at sparsity 0, 3x the dense run, with or without self-KD."""
    result = train_dense_then_sparse(
        tiny_bert(), _args(tmp_path), SparsityConfig(sparsity=0.0), PairDataset(),
        distill=distill, sparse_schedule_scale=3,
    )
    sparse = result.sparse
    assert sparse.trainer.state.global_step == 18
    assert (sparse.trainer.teacher_model is result.dense.model) == distill
    assert (sparse.trainer.teacher_model is None) == (not distill)
    assert sparsity_report(sparse.model)["sparsity"] < 0.01
    assert "eval_loss" not in sparse.metrics  # no eval set given


def test_reusing_a_dense_folder_skips_stage_one_and_writes_nothing_there(tmp_path):
    folder = tmp_path / "dense"
    teacher = tiny_bert(seed=1)
    teacher.save_pretrained(folder)
    before = sorted(os.listdir(folder))
    result = train_dense_then_sparse(
        tiny_bert(), _args(tmp_path), {"sparsity": 0.5, "recipe": "none", "update_every": 2}, PairDataset(),
        PairDataset(n=16, seed=1), dense_model=str(folder),
    )
    assert sorted(os.listdir(folder)) == before and result.dense.output_dir == str(folder)
    assert "train_loss" not in result.dense.metrics and "eval_loss" in result.dense.metrics
    assert not os.path.exists(tmp_path / "run" / "dense_teacher")
    for name, value in result.dense.model.state_dict().items():  # the teacher is the folder's model, untouched
        assert torch.equal(value.cpu(), teacher.state_dict()[name]), name
    assert result.sparse.trainer.state.global_step == 6  # recipe none: the run as given


def test_model_given_as_a_folder_and_a_teacher_with_the_wrong_head(tmp_path):
    student_dir, wrong_dir = tmp_path / "student", tmp_path / "wrong"
    tiny_bert().save_pretrained(student_dir)
    tiny_bert(num_labels=3).save_pretrained(wrong_dir)
    result = train_dense_then_sparse(str(student_dir), _args(tmp_path, max_steps=2),
                                     {"sparsity": 0.5, "recipe": "none"}, PairDataset(n=16))
    assert result.sparse.trainer.state.global_step == 2
    with pytest.raises(ValueError, match="teacher .* has 3 outputs, the task needs 2"):
        train_dense_then_sparse(tiny_bert(), _args(tmp_path), SparsityConfig(), PairDataset(), dense_model=str(wrong_dir))
    with pytest.raises(ValueError, match="needs distill=True"):
        train_dense_then_sparse(tiny_bert(), _args(tmp_path), None, PairDataset(), distill=False,
                                distillation=DistillationConfig())


def test_the_dense_stage_is_diagnosed_too(tmp_path, caplog):
    """A dense teacher that never learns (LR 0) is flagged before the sparse stage distils from it."""
    from hf_sparse import UnderTrainingCallback

    result = train_dense_then_sparse(
        tiny_bert(), _args(tmp_path, learning_rate=0.0), SparsityConfig(sparsity=0.5), PairDataset(),
        PairDataset(n=16, seed=1), sparse_schedule_scale=1.0,
    )
    callbacks = [c for c in result.dense.trainer.callback_handler.callbacks if isinstance(c, UnderTrainingCallback)]
    assert len(callbacks) == 1
    assert any(entry.get("not_learning") for entry in result.dense.trainer.state.log_history)
    assert any("NOT learning" in line for line in callbacks[0].warnings)
