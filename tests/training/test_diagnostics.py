"""Training diagnostics: a model that is not learning is flagged loudly, never called "flattened"."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from hf_sparse import SparseTrainer, SparsityConfig
from hf_sparse.training.diagnostics import (
    UnderTrainingCallback,
    at_majority_rate,
    chance_level_verdict,
    chance_loss_of,
    classifier_labels,
    eval_at_chance,
    majority_rate,
    prior_entropy,
    undertraining_verdict,
    PredictionStats,
)

from helpers import PairDataset, tiny_bert, training_args


def _history(losses):
    return [{"step": 10 * (i + 1), "loss": v} for i, v in enumerate(losses)]


def test_a_flat_loss_at_ln_k_is_chance_not_flattened():
    g = torch.Generator().manual_seed(0)
    flat = (math.log(2) + 0.002 * torch.randn(100, generator=g)).tolist()
    assert chance_level_verdict(_history(flat), math.log(2)).at_chance is True
    assert undertraining_verdict(_history(flat)).undertrained is False  # the slope test alone would say "flattened"
    assert chance_level_verdict(_history([v + math.log(3) - math.log(2) for v in flat]), math.log(3)).at_chance is True


def test_a_learned_loss_is_not_chance_and_regression_is_not_judged():
    assert chance_level_verdict(_history([0.6, 0.5, 0.4, 0.35]), math.log(2)).at_chance is False
    assert chance_level_verdict(_history([0.69, 0.69]), None).at_chance is None
    assert chance_level_verdict([], math.log(2)).at_chance is None


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
    assert final["chance_at_chance"] is True and final["not_learning"] is True
    assert final["chance_chance_loss"] == pytest.approx(prior_entropy(data.labels.tolist()))
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


@pytest.mark.parametrize("sparse", [True, False])
def test_the_eval_labels_are_read_once_per_eval_set(tmp_path, sparse):
    """Evaluating every few steps must not read every label of the eval set again each time. SparseTrainer
    reads none at all (its compute_metrics is watched: the rate comes with the predictions)."""
    from transformers import Trainer

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
    common = dict(model=model, args=args, train_dataset=PairDataset(n=32), eval_dataset=eval_data,
                  compute_metrics=lambda p: {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())})
    if sparse:
        trainer = SparseTrainer(**common, sparsity_config=SparsityConfig(sparsity=0.5, recipe="none", start=1, end=1))
    else:
        trainer = Trainer(**common, callbacks=[UnderTrainingCallback(sparse=False)])
    trainer.train()
    evaluations = sum("eval_accuracy" in e for e in trainer.state.log_history)
    assert evaluations == 3 and sum("majority_rate" in e for e in trainer.state.log_history) == 3
    assert len(reads) == 16 * evaluations + (0 if sparse else 16)  # the eval loops, plus at most one read of the labels


# -- issue 23, deliverable 8: one test per case --------------------------------------------------------------
def test_the_chance_level_is_the_prior_entropy_not_ln_k():
    """A 2-class task with a 63% majority: predicting the prior gives a loss of H(0.63) = 0.659, not ln 2."""
    labels = [1] * 63 + [0] * 37
    entropy = prior_entropy(labels)
    assert entropy == pytest.approx(-(0.63 * math.log(0.63) + 0.37 * math.log(0.37)))
    at_prior = _history([entropy] * 10)
    assert chance_level_verdict(at_prior, math.log(2)).at_chance is False  # what ln(K) missed
    assert chance_level_verdict(at_prior, chance_loss_of(tiny_bert(), labels)).at_chance is True
    assert chance_loss_of(tiny_bert(), None) == pytest.approx(math.log(2))  # no labels readable: ln(K)
    regression = tiny_bert(num_labels=1)
    assert chance_loss_of(regression, [0.0, 1.0, 2.0, 3.0]) == pytest.approx(1.25)  # MSE of predicting the mean


def test_the_prior_is_read_evenly_over_a_sorted_dataset():
    """A large dataset sorted by label: its head alone would say one class (entropy 0)."""
    from types import SimpleNamespace

    from hf_sparse.training.diagnostics.task_prior import _dataset_labels

    sorted_items = [{"labels": 0}] * 15_000 + [{"labels": 1}] * 15_000
    labels = _dataset_labels(SimpleNamespace(dataset=sorted_items))
    assert len(labels) <= 10_000 and prior_entropy(labels) == pytest.approx(math.log(2), abs=1e-3)


def test_the_trainer_flags_a_classifier_at_an_imbalanced_prior(tmp_path, caplog):
    """lr 0 and a classifier whose bias is the log prior: the loss sits at H(prior) < ln 2, and is flagged."""
    data = PairDataset(n=64)
    data.labels = (data.ids[:, 0] > 15).long()  # ~70% ones
    share = float(data.labels.float().mean())
    model = tiny_bert()
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([math.log(1 - share), math.log(share)]))
    trainer = SparseTrainer(model=model, args=training_args(tmp_path, learning_rate=0.0, max_steps=8, logging_steps=1),
                            train_dataset=data, sparsity_config=SparsityConfig(sparsity=0.5, recipe="none", start=1, end=2))
    with caplog.at_level(logging.WARNING, logger="hf_sparse"):
        trainer.train()
    verdict = trainer.undertraining.chance
    assert verdict.tail_loss < math.log(2) * 0.97  # ln(K) would have called this learning
    assert verdict.at_chance is True and "NOT learning" in caplog.text


@pytest.mark.parametrize(
    "metrics,stats,at_chance",
    [
        ({"eval_matthews_correlation": 0.0}, None, True),  # CoLA, a constant predictor
        ({"eval_matthews_correlation": 0.31}, None, False),
        ({"eval_pearson": float("nan"), "eval_spearmanr": float("nan"), "eval_mse": 2.0}, None, True),  # STS-B, constant
        ({"eval_pearson": 0.01, "eval_spearmanr": 0.6}, None, False),  # one correlation learned something
        ({"eval_accuracy": 0.63}, PredictionStats(0.8, 0.63), True),
        ({"eval_accuracy": 0.80}, PredictionStats(0.7, 0.63), False),
        ({"eval_f1": 0.0}, PredictionStats(1.0, 0.6), True),  # every prediction in one class
        ({"eval_f1": 0.0}, PredictionStats(1.0, 0.995), False),  # the labels are one class too: cannot tell
        ({"eval_f1": 0.7}, None, False),  # no known chance value: not judged
    ],
)
def test_the_eval_side_check_reads_any_metric(metrics, stats, at_chance):
    assert bool(eval_at_chance(metrics, stats=stats)) is at_chance


def test_a_watched_compute_metrics_hands_the_prediction_distribution_to_the_callback():
    from transformers import EvalPrediction

    def accuracy(p):
        return {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())}

    callback = UnderTrainingCallback()
    watched = callback.watch(accuracy)
    logits = np.array([[2.0, 0.0]] * 6 + [[0.0, 1.0]] * 2)
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    assert watched(EvalPrediction(predictions=logits, label_ids=labels)) == {"accuracy": 7 / 8}  # metrics untouched
    assert callback.prediction_stats == PredictionStats(0.75, 5 / 8)
    assert callback.watch(watched) is watched and callback.watch(None) is None
    watched(EvalPrediction(predictions=np.array([0.1, 0.2]), label_ids=np.array([0.0, 1.0])))  # regression: no stats
    assert callback.prediction_stats is None


def test_the_trainer_flags_an_mcc_at_zero_without_accuracy(tmp_path, caplog):
    """CoLA-like: only MCC is reported; a constant classifier has MCC 0 and is flagged."""
    from sklearn.metrics import matthews_corrcoef

    model = tiny_bert()
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
    data = PairDataset(n=32)
    trainer = SparseTrainer(model=model, args=training_args(tmp_path, learning_rate=0.0, max_steps=4, eval_strategy="steps", eval_steps=4),
                            train_dataset=data, eval_dataset=data,
                            compute_metrics=lambda p: {"matthews_correlation": matthews_corrcoef(p.label_ids, p.predictions.argmax(-1))},
                            sparsity_config=SparsityConfig(sparsity=0.5, recipe="none", start=1, end=2))
    with caplog.at_level(logging.WARNING, logger="hf_sparse"):
        trainer.train()
    assert "evaluation at chance" in caplog.text
    assert any(e.get("not_learning_eval") for e in trainer.state.log_history)


def test_a_distilled_student_at_the_majority_rate_is_not_learning(tmp_path, caplog):
    """With a teacher the loss is KD and says nothing about chance; the eval side still judges the student."""
    import copy

    student = tiny_bert()
    with torch.no_grad():
        student.classifier.weight.zero_()
        student.classifier.bias.zero_()
    data = PairDataset(n=32)
    args = training_args(tmp_path, learning_rate=0.0, max_steps=8, logging_steps=1, eval_strategy="steps", eval_steps=8)
    trainer = SparseTrainer(model=student, args=args, train_dataset=data, eval_dataset=data, teacher_model=copy.deepcopy(student),
                            compute_metrics=lambda p: {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())},
                            sparsity_config=SparsityConfig(sparsity=0.5, recipe="none", start=1, end=2, update_every=1))
    with caplog.at_level(logging.WARNING, logger="hf_sparse"):
        trainer.train()
    final = trainer.state.log_history[-1]
    assert trainer.undertraining.chance.at_chance is None  # the KD loss is not judged against the prior
    assert final["not_learning"] is True and "NOT learning" in caplog.text
    assert "flattened" not in caplog.text and "under-trained" not in caplog.text
    assert any("NOT learning" in w for w in trainer.undertraining.warnings)


def test_a_plain_trainer_diagnoses_the_dense_stage(tmp_path, caplog):
    """The dense teacher is trained by a plain Trainer: the callback works there too, with dense advice."""
    from transformers import Trainer

    model = tiny_bert()
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
    data = PairDataset(n=32)
    callback = UnderTrainingCallback(sparse=False)
    trainer = Trainer(model=model, args=training_args(tmp_path, learning_rate=0.0, max_steps=8, logging_steps=1,
                                                      eval_strategy="steps", eval_steps=8),
                      train_dataset=data, eval_dataset=data, callbacks=[callback],
                      compute_metrics=callback.watch(lambda p: {"f1": 0.0}))
    with caplog.at_level(logging.WARNING, logger="hf_sparse"):
        trainer.train()
    assert callback.chance.at_chance is True and "NOT learning" in caplog.text
    assert "of the predictions are one class" in caplog.text  # from the predictions, with an F1-only metric
    assert "SparsityConfig" not in " ".join(callback.warnings[:1])  # dense advice


class _Tokens(torch.utils.data.Dataset):
    ids = torch.randint(1, 50, (96, 8), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(8, dtype=torch.long), "labels": self.ids[i]}


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16))


@pytest.mark.parametrize("learning_rate,at_chance", [(3e-3, False), (0.0, True)])
def test_a_causal_lm_is_judged_against_its_vocabulary(tmp_path, caplog, learning_rate, at_chance):
    """Its loss sits near ln(vocab), far above ln(num_labels=2): it was always flagged before; now only
    an LM that learns nothing is (chance = unigram entropy of the training tokens)."""
    model = _tiny_llama()
    assert classifier_labels(model) is None and chance_loss_of(model, None) == pytest.approx(math.log(50))
    trainer = SparseTrainer(model=model, args=training_args(tmp_path, learning_rate=learning_rate, max_steps=40, logging_steps=2),
                            train_dataset=_Tokens(), sparsity_config=SparsityConfig(sparsity=0.5, recipe="none", start=2, end=6, update_every=2))
    with caplog.at_level(logging.WARNING, logger="hf_sparse"):
        trainer.train()
    verdict = trainer.undertraining.chance
    assert verdict.chance_loss == pytest.approx(prior_entropy(_Tokens.ids.reshape(-1).tolist()))
    assert verdict.tail_loss > math.log(2)  # what the old check compared with
    assert verdict.at_chance is at_chance and ("NOT learning" in caplog.text) is at_chance


def test_at_majority_rate_marks_rows_that_learned_nothing():
    labels = [1, 1, 1, 0, 0, 1, 1, 0]  # majority rate 5/8
    assert at_majority_rate([1] * 8, labels) is True  # always the majority
    assert at_majority_rate([0, 1, 1, 0, 1, 1, 0, 0], labels) is True  # 4/8: no better
    assert at_majority_rate(labels, labels) is False
    logits = np.eye(2)[labels]  # [n, 2] logits work too
    assert at_majority_rate(logits, labels) is False
    assert at_majority_rate([[1, 1], [0, 0]], [[1, -100], [0, -100]]) is False  # ignored tokens skipped
    with pytest.raises(ValueError, match="one class per example"):
        at_majority_rate([1, 0], [1, 0, 1])


def test_majority_rate_counts_per_token_labels_token_by_token():
    """Token classification: labels are a list per example with -100 at ignored positions (was a TypeError)."""
    import numpy as np
    import torch

    assert majority_rate([[0, 1, 1, -100], [1, -100]]) == 0.75
    assert majority_rate([np.array([2, 2, -100]), np.array([0])]) == 2 / 3
    assert majority_rate([torch.tensor([1, 1]), torch.tensor([0, -100])]) == 2 / 3
    assert majority_rate([0, 1, 1]) == 2 / 3  # one label per example, as before
