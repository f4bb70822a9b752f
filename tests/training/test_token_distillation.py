"""Distillation for token classification: the KD term per token, cached or not (distill.py, teacher_cache.py)."""

from __future__ import annotations

import math

import datasets
import pytest
import torch
from transformers import BertConfig, BertForTokenClassification, DataCollatorForTokenClassification, PreTrainedTokenizerFast

from hf_sparse import DistillationConfig, SparseTrainer, SparsityConfig
from hf_sparse.training.distill import distillation_loss, kd_loss, kd_mask
from hf_sparse.training.teacher_cache import TEACHER_LOGITS, CachedLogitsCollator

from helpers import training_args

LABELS = 4


def _token_model(seed: int) -> BertForTokenClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48,
                        max_position_embeddings=32, num_labels=LABELS, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    return BertForTokenClassification(config)


def _tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models

    vocab = {"[PAD]": 0, "[UNK]": 1, **{f"w{i}": i for i in range(2, 60)}}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="[UNK]")),
                                   pad_token="[PAD]", unk_token="[UNK]")


def _dataset(n: int = 24) -> datasets.Dataset:
    """Sentences of 3 to 11 tokens (padding differs per batch), some positions unlabelled (-100)."""
    generator = torch.Generator().manual_seed(0)
    rows = {"input_ids": [], "attention_mask": [], "labels": []}
    for i in range(n):
        length = 3 + i % 9
        ids = torch.randint(2, 60, (length,), generator=generator)
        labels = (ids % LABELS).tolist()
        labels[0] = -100  # a special token, as [CLS] is
        if length > 4:
            labels[2] = -100  # a word's second sub-token
        rows["input_ids"].append(ids.tolist())
        rows["attention_mask"].append([1] * length)
        rows["labels"].append(labels)
    return datasets.Dataset.from_dict(rows)


def _by_hand(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, temperature: float) -> float:
    """T^2 * mean over counted positions of sum_c p_t(c) * (log p_t(c) - log p_s(c)), in plain Python."""
    total, count = 0.0, 0
    for position in mask.nonzero().tolist():
        s = [v / temperature for v in student[tuple(position)].tolist()]
        t = [v / temperature for v in teacher[tuple(position)].tolist()]
        log_zs = math.log(sum(math.exp(v) for v in s))
        log_zt = math.log(sum(math.exp(v) for v in t))
        total += sum(math.exp(tv - log_zt) * ((tv - log_zt) - (sv - log_zs)) for sv, tv in zip(s, t))
        count += 1
    return temperature**2 * total / count


def test_per_token_kd_averages_over_labelled_real_tokens_only():
    generator = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(3, 7, LABELS, generator=generator), torch.randn(3, 7, LABELS, generator=generator) * 3
    labels = torch.randint(0, LABELS, (3, 7), generator=generator)
    labels[:, 0] = -100
    labels[1, 4:] = -100  # padding of a shorter sentence
    attention = torch.ones(3, 7, dtype=torch.long)
    attention[2, 5:] = 0
    labels[2, 5:] = 3  # a label under padding still does not count: the attention mask says padding
    mask = kd_mask(student, labels, attention)
    assert mask.sum().item() == 3 * 7 - 3 - 3 - 2
    for temperature in (1.0, 2.0, 4.0):
        got = kd_loss(student, teacher, temperature, mask).item()
        assert got == pytest.approx(_by_hand(student, teacher, mask, temperature), rel=1e-5)
    unmasked = kd_loss(student, teacher, 2.0).item()  # padding changes the average when not masked
    assert unmasked != pytest.approx(kd_loss(student, teacher, 2.0, mask).item(), rel=1e-3)
    # the padded positions' logits do not matter at all
    noisy = student.clone()
    noisy[~mask] = 100.0
    assert kd_loss(noisy, teacher, 2.0, mask).item() == pytest.approx(kd_loss(student, teacher, 2.0, mask).item())
    task = torch.tensor(0.7)
    mixed = distillation_loss(task, student, teacher, DistillationConfig(temperature=2.0, alpha=0.25), mask)
    assert mixed.item() == pytest.approx(0.75 * 0.7 + 0.25 * kd_loss(student, teacher, 2.0, mask).item(), rel=1e-6)


def test_kd_mask_per_example_logits_and_edge_cases():
    assert kd_mask(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long)) is None  # sequence classification
    assert kd_mask(torch.zeros(2, 5, 3)) is None
    only_attention = kd_mask(torch.zeros(2, 5, 3), None, torch.tensor([[1, 1, 1, 0, 0], [1] * 5]))
    assert only_attention.sum().item() == 8
    nothing = torch.zeros(2, 5, 3, requires_grad=True)
    zero = kd_loss(nothing, torch.randn(2, 5, 3), 2.0, torch.zeros(2, 5, dtype=torch.bool))
    assert zero.item() == 0.0 and zero.requires_grad
    with pytest.raises(ValueError, match="does not fit"):
        kd_loss(torch.zeros(2, 5, 3), torch.zeros(2, 5, 3), 2.0, torch.ones(2, 4, dtype=torch.bool))


def _trainer(tmp_path, cache, max_steps=6):
    tokenizer = _tokenizer()
    teacher = _token_model(1)
    with torch.no_grad():
        teacher.classifier.weight.mul_(20)  # confident soft targets, far from the student's
    calls = []
    teacher.register_forward_hook(lambda module, inputs, output: calls.append(1))
    trainer = SparseTrainer(
        model=_token_model(0),
        args=training_args(tmp_path, max_steps=max_steps, logging_steps=1, per_device_eval_batch_size=5,
                           train_sampling_strategy="sequential"),
        train_dataset=_dataset(),
        data_collator=DataCollatorForTokenClassification(tokenizer),
        sparsity_config=SparsityConfig(sparsity=0.5, start=2, end=4, update_every=2, recipe="none"),
        teacher_model=teacher,
        distillation=DistillationConfig(cache_teacher_logits=cache, temperature=2.0),
    )
    return trainer, calls


def _losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def test_token_classification_distils_the_same_with_and_without_the_cache(tmp_path):
    per_step, per_step_calls = _trainer(tmp_path / "a", cache=False)
    per_step.train()
    cached, cached_calls = _trainer(tmp_path / "b", cache=None)  # auto: the token collator only pads
    cached.train()
    assert len(per_step_calls) == 6  # the teacher at every step
    assert len(cached_calls) == 5  # 24 rows in eval batches of 5, before training, never again
    assert TEACHER_LOGITS in cached.train_dataset.column_names
    assert isinstance(cached.data_collator, CachedLogitsCollator)
    assert _losses(cached) == pytest.approx(_losses(per_step), rel=1e-5) and min(_losses(cached)) > 0
    for (name, a), b in zip(per_step.model.state_dict().items(), cached.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_the_training_loss_is_the_hand_computed_per_token_kd(tmp_path):
    trainer, _ = _trainer(tmp_path, cache=True, max_steps=1)
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch[TEACHER_LOGITS].shape == (*batch["input_ids"].shape, LABELS)
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, dict(batch)).item()
    with torch.no_grad():
        student = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        teacher = trainer.teacher_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    real = (batch["labels"] != -100) & batch["attention_mask"].bool()
    assert real.sum() < real.numel()  # the batch has padding and unlabelled positions
    assert loss == pytest.approx(_by_hand(student, teacher, real, 2.0), rel=1e-4)
    # the cached logits are the teacher's at the real positions, zeros at padding
    torch.testing.assert_close(batch[TEACHER_LOGITS][batch["attention_mask"].bool()],
                               teacher[batch["attention_mask"].bool()], rtol=1e-5, atol=1e-5)


def test_the_collator_refuses_cached_logits_that_do_not_fit(tmp_path):
    collator = CachedLogitsCollator(DataCollatorForTokenClassification(_tokenizer()))
    rows = [{"input_ids": [2, 3, 4], "attention_mask": [1, 1, 1], "labels": [0, 1, 2], TEACHER_LOGITS: [[0.0] * LABELS] * 2}]
    with pytest.raises(ValueError, match="real tokens"):
        collator(rows)
    plain = [{k: v for k, v in rows[0].items() if k != TEACHER_LOGITS}]
    assert TEACHER_LOGITS not in collator(plain)  # eval batches: no column, the collator's own output
