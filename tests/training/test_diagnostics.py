"""Training diagnostics: a model that is not learning is flagged loudly, never called "flattened"."""

from __future__ import annotations

import logging
import math

import torch

from hf_sparse import SparseTrainer, SparsityConfig
from hf_sparse.training.diagnostics import chance_level_verdict, classifier_labels, majority_rate, undertraining_verdict

from helpers import PairDataset, tiny_bert, training_args


def _history(losses):
    return [{"step": 10 * (i + 1), "loss": v} for i, v in enumerate(losses)]


def test_a_flat_loss_at_ln_k_is_chance_not_flattened():
    g = torch.Generator().manual_seed(0)
    flat = (math.log(2) + 0.002 * torch.randn(100, generator=g)).tolist()
    assert chance_level_verdict(_history(flat), num_labels=2).at_chance is True
    assert undertraining_verdict(_history(flat)).undertrained is False  # the slope test alone would say "flattened"
    assert chance_level_verdict(_history([v + math.log(3) - math.log(2) for v in flat]), num_labels=3).at_chance is True


def test_a_learned_loss_is_not_chance_and_regression_is_not_judged():
    assert chance_level_verdict(_history([0.6, 0.5, 0.4, 0.35]), num_labels=2).at_chance is False
    assert chance_level_verdict(_history([0.69, 0.69]), num_labels=None).at_chance is None
    assert chance_level_verdict([], num_labels=2).at_chance is None


def test_majority_rate_and_classifier_labels():
    assert majority_rate([1, 1, 0, 1]) == 0.75 and majority_rate([]) is None
    assert classifier_labels(tiny_bert(num_labels=3)) == 3
    regression = tiny_bert(num_labels=1)
    assert classifier_labels(regression) is None


def test_trainer_flags_a_model_that_does_not_learn(tmp_path, caplog):
    """Learning rate 0: the loss stays at ln 2 and eval accuracy at the majority rate; both are flagged."""
    data = PairDataset(n=64)
    args = training_args(tmp_path, learning_rate=0.0, max_steps=12, logging_steps=1, eval_strategy="steps", eval_steps=12)
    model = tiny_bert()
    with torch.no_grad():  # a constant classifier: predicts the uniform prior whatever the input
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
    trainer = SparseTrainer(model=model, args=args, train_dataset=data, eval_dataset=data,
                            compute_metrics=lambda p: {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())},
                            sparsity_config=SparsityConfig(sparsity=0.5, recipe="none", start=2, end=6, update_every=2))
    with caplog.at_level(logging.WARNING, logger="hf_sparse"):
        trainer.train()
    assert "NOT learning" in caplog.text and "flattened" not in caplog.text
    assert "majority class" in caplog.text
    final = trainer.state.log_history[-1]
    assert final["chance_at_chance"] is True and final["chance_chance_loss"] == math.log(2)
    assert any("majority_rate" in e for e in trainer.state.log_history)
    trainer.create_model_card()
    card = (tmp_path / "README.md").read_text()
    assert "NOT learning" in card and "majority class" in card


def test_a_distillation_loss_is_not_judged_against_ln_k(tmp_path):
    """T^2 * KL can sit anywhere; only the eval accuracy can say "not learning" when a teacher is used."""
    import copy

    student = tiny_bert()
    args = training_args(tmp_path, learning_rate=0.0, max_steps=4, logging_steps=1)
    trainer = SparseTrainer(model=student, args=args, train_dataset=PairDataset(n=32), teacher_model=copy.deepcopy(student),
                            sparsity_config=SparsityConfig(sparsity=0.5, recipe="none", start=1, end=2, update_every=1))
    trainer.train()
    assert trainer.undertraining.chance.at_chance is None
    assert "chance_at_chance" not in trainer.state.log_history[-1]


def test_trainer_does_not_flag_a_model_that_learns(tmp_path, caplog):
    data = PairDataset(n=96)
    args = training_args(tmp_path, learning_rate=3e-3, max_steps=40, logging_steps=2)
    trainer = SparseTrainer(model=tiny_bert(), args=args, train_dataset=data,
                            sparsity_config=SparsityConfig(sparsity=0.5, recipe="none", start=2, end=6, update_every=2))
    with caplog.at_level(logging.WARNING, logger="hf_sparse"):
        trainer.train()
    assert trainer.undertraining.chance.at_chance is False, trainer.state.log_history[-3:]
    assert "NOT learning" not in caplog.text
    assert not any("NOT learning" in w for w in trainer.undertraining.warnings)


def test_the_eval_labels_are_read_once_per_eval_set(tmp_path):
    """Evaluating every few steps must not read every label of the eval set again each time."""
    reads = []

    class CountingPairs(PairDataset):
        def __getitem__(self, i):
            reads.append(i)
            return super().__getitem__(i)

    eval_data = CountingPairs(n=16)
    args = training_args(tmp_path, learning_rate=0.0, max_steps=6, eval_strategy="steps", eval_steps=2)
    model = tiny_bert()
    with torch.no_grad():  # a constant classifier: accuracy at the majority rate, so the rate is needed
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
    trainer = SparseTrainer(model=model, args=args, train_dataset=PairDataset(n=32), eval_dataset=eval_data,
                            compute_metrics=lambda p: {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())},
                            sparsity_config=SparsityConfig(sparsity=0.5, recipe="none", start=1, end=1))
    trainer.train()
    evaluations = sum("eval_accuracy" in e for e in trainer.state.log_history)
    assert evaluations == 3 and sum("majority_rate" in e for e in trainer.state.log_history) == 3
    assert len(reads) == 16 * evaluations + 16  # the eval loops, plus one read of the labels

