"""Teacher logits computed once before training (hf_sparse.training.teacher_cache)."""

from __future__ import annotations

import copy

import datasets
import pytest
import torch
from transformers import default_data_collator

from hf_sparse import DistillationConfig, SparseTrainer, SparsityConfig
from hf_sparse.training.teacher_cache import TEACHER_LOGITS, is_deterministic_collator

from helpers import PairDataset, VectorDataset, TinyMLP, tiny_bert, training_args


def _dataset(n: int = 40) -> datasets.Dataset:
    pairs = PairDataset(n=n)
    return datasets.Dataset.from_dict({
        "input_ids": pairs.ids.tolist(), "attention_mask": torch.ones_like(pairs.ids).tolist(),
        "label": pairs.labels.tolist(), "text": [f"row {i}" for i in range(n)],  # a column the model does not take
    })


class CountingCollator:
    """Pads nothing, but is not a collator the cache knows: auto must not trust it."""

    def __call__(self, features):
        return default_data_collator(features)


def _trainer(tmp_path, cache, collator=default_data_collator, dataset=None, seed=0):
    student = tiny_bert(seed)
    teacher = tiny_bert(seed + 1)  # a different model: the soft targets are not the student's own
    with torch.no_grad():
        teacher.classifier.weight.mul_(50)  # confident logits, far from the untrained student's
    calls = []
    teacher.register_forward_hook(lambda module, inputs, output: calls.append(1))
    trainer = SparseTrainer(
        model=student,
        args=training_args(tmp_path, max_steps=6, logging_steps=1, per_device_eval_batch_size=16),
        train_dataset=_dataset() if dataset is None else dataset,
        data_collator=collator,
        sparsity_config=SparsityConfig(sparsity=0.5, start=2, end=4, update_every=2, recipe="none"),
        teacher_model=teacher,
        distillation=DistillationConfig(cache_teacher_logits=cache),
    )
    return trainer, calls


def test_cached_logits_train_exactly_like_a_teacher_pass_per_step(tmp_path):
    per_step, per_step_calls = _trainer(tmp_path / "a", cache=False)
    per_step.train()
    cached, cached_calls = _trainer(tmp_path / "b", cache=None)
    cached.train()
    assert len(per_step_calls) == 6  # one teacher forward per step
    assert len(cached_calls) == 3  # 40 rows in eval batches of 16, before the first step, and never again
    assert TEACHER_LOGITS in cached.train_dataset.column_names
    losses = lambda t: [e["loss"] for e in t.state.log_history if "loss" in e]  # noqa: E731
    assert losses(cached) == pytest.approx(losses(per_step), rel=1e-5) and max(losses(cached)) > 0
    for (name, a), b in zip(per_step.model.state_dict().items(), cached.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_the_cached_column_holds_the_teachers_eval_logits(tmp_path):
    trainer, _ = _trainer(tmp_path, cache=True)
    trainer.get_train_dataloader()
    rows = trainer.train_dataset
    with torch.no_grad():
        expected = trainer.teacher_model(
            input_ids=torch.tensor(rows["input_ids"]), attention_mask=torch.tensor(rows["attention_mask"])
        ).logits
    torch.testing.assert_close(torch.tensor(rows[TEACHER_LOGITS]), expected)
    batch = next(iter(trainer.get_train_dataloader()))  # the column reaches the batches, the text does not
    assert TEACHER_LOGITS in batch and "text" not in batch
    assert len(rows.column_names) == len(set(rows.column_names))  # a second call does not add it twice


def test_auto_does_not_trust_an_unknown_collator_or_a_torch_dataset(tmp_path):
    assert is_deterministic_collator(default_data_collator) and not is_deterministic_collator(CountingCollator())
    trainer, calls = _trainer(tmp_path / "a", cache=None, collator=CountingCollator())
    trainer.train()
    assert len(calls) == 6 and TEACHER_LOGITS not in trainer.train_dataset.column_names
    student = TinyMLP()
    vectors = SparseTrainer(
        model=student, args=training_args(tmp_path / "b", max_steps=2), train_dataset=VectorDataset(),
        sparsity_config=SparsityConfig(sparsity=0.5, start=1, end=1, recipe="none"), teacher_model=copy.deepcopy(student),
    )  # fmt: skip
    vectors.train()  # auto falls back to a teacher pass per step
    assert not hasattr(vectors.train_dataset, "column_names")


def test_asking_for_the_cache_where_it_cannot_work_is_an_error(tmp_path):
    trainer, _ = _trainer(tmp_path, cache=True, dataset=PairDataset(n=16))
    with pytest.raises(ValueError, match="not a datasets.Dataset"):
        trainer.train()
    with pytest.raises(ValueError, match="cache_teacher_logits"):
        DistillationConfig(cache_teacher_logits="yes")


def test_logits_of_no_known_shape_or_too_many_are_not_cached(tmp_path):
    from hf_sparse.training import teacher_cache

    trainer, _ = _trainer(tmp_path, cache=None)
    inputs = trainer._remove_unused_columns(_dataset(), description="test")
    args = (inputs, default_data_collator, 16, torch.device("cpu"))
    assert teacher_cache.teacher_logits(trainer.teacher_model, *args, show_progress=False).shape == (40, 2)
    assert teacher_cache.teacher_logits(trainer.teacher_model, *args, show_progress=False, max_floats=79) is None
    with pytest.raises(ValueError, match="cannot be honoured"):
        teacher_cache.with_teacher_logits(
            _dataset(), _ScalarTeacher(), default_data_collator, DistillationConfig(cache_teacher_logits=True),
            model_inputs=lambda d: d.remove_columns("text"), batch_size=8, device=torch.device("cpu"),
            show_progress=False,
        )  # fmt: skip


class _ScalarTeacher(torch.nn.Module):
    """Logits of one number per example: neither per example (2-d) nor per token (3-d)."""

    def forward(self, input_ids, attention_mask=None):
        return {"logits": input_ids.float().sum(-1)}
