"""Schedule scaling, gmp initial_jump, presets, distillation and the under-training diagnostic."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from hf_sparse import (
    DistillationConfig,
    SparseTrainer,
    Sparsifier,
    SparsityConfig,
    available_presets,
    recommend_schedule_scale,
)
from hf_sparse.training.diagnostics import undertraining_verdict
from hf_sparse.training.distill import distillation_loss, hidden_states_loss, kd_loss

from helpers import TinyMLP, VectorDataset, training_args


# -- schedule scaling ------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [0.5, 0, -1, "2", True])
def test_schedule_scale_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="schedule_scale"):
        SparsityConfig(schedule_scale=bad)


def test_integer_steps_and_update_interval_scale_in_one_place():
    config = SparsityConfig(start=10, end=40, update_every=5, schedule_scale=3)
    assert config.resolve_step(config.start, 300) == 30 and config.resolve_step(config.end, 300) == 120
    assert config.resolve_step(0.5, 300) == 150  # fractions of the (scaled) run stretch by themselves
    assert config.update_interval(30, 120) == 15
    method = Sparsifier(TinyMLP(), config).method
    method.setup(300)
    assert [s for s in range(301) if method.is_update_step(s)] == list(range(30, 121, 15))


def test_trainer_scales_max_steps_and_epochs_without_touching_caller_args(tmp_path):
    args = training_args(tmp_path, max_steps=6, warmup_steps=2)
    trainer = SparseTrainer(
        model=TinyMLP(), args=args, train_dataset=VectorDataset(), sparsity_config=SparsityConfig(schedule_scale=3)
    )
    assert trainer.args.max_steps == 18 and trainer.args.warmup_steps == 6
    assert args.max_steps == 6 and args.warmup_steps == 2
    epochs = training_args(tmp_path, max_steps=-1, num_train_epochs=2)
    trainer = SparseTrainer(
        model=TinyMLP(), args=epochs, train_dataset=VectorDataset(), sparsity_config=SparsityConfig(schedule_scale=2.5)
    )
    assert trainer.args.num_train_epochs == 5.0


def test_recommended_scale_grows_with_sparsity():
    values = [recommend_schedule_scale(s) for s in (0.0, 0.5, 0.8, 0.9, 0.95, 0.99)]
    assert values == [1.0, 2.0, 3.0, 3.0, 4.0, 4.0]
    with pytest.raises(ValueError, match="sparsity"):
        recommend_schedule_scale(1.0)


# -- gmp initial jump --------------------------------------------------------------------------------
def test_initial_jump_then_cubic_to_target():
    config = SparsityConfig(method="gmp", sparsity=0.9, start=10, end=50, update_every=10, method_args={"initial_jump": 0.7},
                            recipe="none")
    method = Sparsifier(TinyMLP(), config).method
    method.setup(100)
    schedule = method.sparsity_schedule()
    assert schedule(10) == pytest.approx(0.7) and schedule(50) == pytest.approx(0.9)
    assert schedule(30) == pytest.approx(0.9 + (0.7 - 0.9) * 0.5**3)
    values = [schedule(t) for t in range(10, 51, 10)]
    assert all(a < b for a, b in zip(values, values[1:]))
    assert method.target_sparsity(5) == 0.0 and method.target_sparsity(10) == pytest.approx(0.7)


@pytest.mark.parametrize("jump", [0.95, -0.1, "big"])
def test_initial_jump_outside_range_raises(jump):
    with pytest.raises(ValueError, match="initial_jump"):
        SparsityConfig(method="gmp", sparsity=0.9, method_args={"initial_jump": jump})


# -- presets ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", available_presets())
def test_presets_round_trip_through_json(name, tmp_path):
    config = SparsityConfig.from_preset(name)
    assert SparsityConfig.from_dict(json.loads(config.to_json_string())) == config
    config.save_pretrained(tmp_path)
    assert SparsityConfig.from_pretrained(tmp_path) == config


def test_preset_overrides_and_unknown_name():
    config = SparsityConfig.from_preset("bert-glue-extended", sparsity=0.8)
    assert config.sparsity == 0.8 and config.schedule_scale == 3.0 and config.lr_rewinding == "linear"
    assert config.method_args == {"initial_jump": 0.7}
    with pytest.raises(ValueError, match="available presets"):
        SparsityConfig.from_preset("bert-glue-10x")
    with pytest.raises(ValueError, match="unknown SparsityConfig fields"):
        SparsityConfig.from_preset("acdc", epochs=3)


# -- distillation ---------------------------------------------------------------------------------------
def test_kd_loss_matches_a_hand_computed_value():
    # student logits (1, 0), teacher (0, 1), T = 2: p_t = softmax(0, .5), p_s = softmax(.5, 0)
    e = math.exp(0.5)
    p_t = [1 / (1 + e), e / (1 + e)]
    p_s = [e / (1 + e), 1 / (1 + e)]
    expected = 4 * sum(t * math.log(t / s) for t, s in zip(p_t, p_s))  # T^2 * KL(p_t || p_s)
    got = kd_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), temperature=2.0)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.4898, abs=1e-4)
    assert kd_loss(torch.randn(3, 5), torch.randn(3, 5)).item() > 0
    same = torch.randn(4, 3)
    assert kd_loss(same, same.clone()).item() == pytest.approx(0.0, abs=1e-6)


def test_distillation_mixes_task_and_soft_loss():
    student, teacher = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    task = torch.tensor(2.0)
    soft = kd_loss(student, teacher, 2.0)
    mixed = distillation_loss(task, student, teacher, DistillationConfig(temperature=2.0, alpha=0.25))
    assert mixed.item() == pytest.approx(0.75 * 2.0 + 0.25 * soft.item())
    assert distillation_loss(task, student, teacher, DistillationConfig()).item() == pytest.approx(soft.item())


@pytest.mark.parametrize("kwargs,match", [({"temperature": 0}, "temperature"), ({"alpha": 1.5}, "alpha")])
def test_distillation_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DistillationConfig(**kwargs)


def test_trainer_distills_from_a_frozen_eval_teacher(tmp_path):
    torch.manual_seed(0)
    student = TinyMLP()
    teacher = copy.deepcopy(student)
    teacher.train()
    before = {n: p.clone() for n, p in teacher.named_parameters()}
    trainer = SparseTrainer(
        model=student,
        args=training_args(tmp_path, max_steps=6, logging_steps=1, gradient_accumulation_steps=2),
        train_dataset=VectorDataset(n=96),
        sparsity_config=SparsityConfig(sparsity=0.5, start=2, end=4, update_every=2),
        teacher_model=teacher,
        distillation=DistillationConfig(temperature=2.0, alpha=1.0),
    )
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    batch = VectorDataset(n=8)[slice(0, 8)]
    loss = trainer.compute_loss(student, dict(batch))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)  # identical teacher: no soft-target loss yet
    trainer.train()
    for name, param in teacher.named_parameters():
        assert torch.equal(param, before[name]) and param.grad is None, name
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert losses[0] < 1e-3 and max(losses) > 0  # the student moves away once it is pruned
    student.train()
    with torch.no_grad():
        expected = kd_loss(student(batch["x"])["logits"], teacher(batch["x"])["logits"], 2.0)
        task = torch.nn.functional.cross_entropy(student(batch["x"])["logits"], batch["labels"])
    assert trainer.compute_loss(student, dict(batch)).item() == pytest.approx(expected.item(), rel=1e-5)
    student.eval()  # evaluation reports the task loss, not the distillation loss
    assert trainer.compute_loss(student, dict(batch)).item() == pytest.approx(task.item(), rel=1e-5)


def test_hidden_states_loss_averages_real_tokens_then_layers():
    student = (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4))
    teacher = (torch.ones(1, 2, 4), torch.tensor([[[2.0] * 4, [9.0] * 4]]))  # the 9s sit on a padding token
    mask = torch.tensor([[1, 0]])
    assert hidden_states_loss(student, teacher, mask).item() == pytest.approx((1.0 + 4.0) / 2)
    assert hidden_states_loss(student, teacher).item() == pytest.approx((1.0 + (4.0 + 81.0) / 2) / 2)
    with pytest.raises(ValueError, match="teacher's shape"):
        hidden_states_loss(student[:1], teacher)
    with pytest.raises(ValueError, match="hidden_states_weight"):
        DistillationConfig(hidden_states_weight=-1)
    with pytest.raises(ValueError, match="cache_teacher_logits"):
        DistillationConfig(hidden_states_weight=1.0, cache_teacher_logits=True)


def test_trainer_adds_the_layerwise_term(tmp_path):
    from helpers import PairDataset, tiny_bert

    student = tiny_bert(0)
    for module in student.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0  # deterministic forward passes, to recompute the loss by hand
    teacher = copy.deepcopy(student)
    config = DistillationConfig(temperature=2.0, hidden_states_weight=0.5)
    trainer = SparseTrainer(
        model=student, args=training_args(tmp_path, max_steps=4, logging_steps=1), train_dataset=PairDataset(n=32),
        sparsity_config=SparsityConfig(sparsity=0.5, start=1, end=1, recipe="none"), teacher_model=teacher,
        distillation=config,
    )  # fmt: skip
    batch = {k: v for k, v in PairDataset(n=8)[slice(0, 8)].items()}
    student.train()
    assert trainer.compute_loss(student, dict(batch)).item() == pytest.approx(0.0, abs=1e-6)  # its own copy
    trainer.train()
    student.train()
    with torch.no_grad():
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        mine = student(**inputs, output_hidden_states=True)
        theirs = teacher(**inputs, output_hidden_states=True)
        kd = kd_loss(mine.logits, theirs.logits, 2.0)
        layers = hidden_states_loss(mine.hidden_states, theirs.hidden_states, batch["attention_mask"])
    assert layers.item() > 0  # pruning moved the student's hidden states away from the teacher's
    assert trainer.compute_loss(student, dict(batch)).item() == pytest.approx((kd + 0.5 * layers).item(), rel=1e-5)
    stale = dict(batch, teacher_logits=torch.zeros(8, 2))  # a cached column left in the data: the teacher still runs
    assert trainer.compute_loss(student, stale).item() == pytest.approx((kd + 0.5 * layers).item(), rel=1e-5)


def test_distillation_needs_a_teacher():
    with pytest.raises(ValueError, match="teacher_model"):
        SparseTrainer(
            model=TinyMLP(), args=training_args("/tmp/unused"), train_dataset=VectorDataset(),
            distillation=DistillationConfig(),
        )  # fmt: skip


# -- under-training diagnostic ---------------------------------------------------------------------------
def _history(losses):
    return [{"step": 10 * (i + 1), "loss": v} for i, v in enumerate(losses)]


def test_verdict_flags_a_loss_still_falling():
    falling = [2.0 - 0.01 * i for i in range(100)]
    verdict = undertraining_verdict(_history(falling))
    assert verdict.undertrained is True and verdict.slope < 0 and verdict.points >= 4


def test_verdict_clears_a_flat_loss_and_abstains_without_data():
    g = torch.Generator().manual_seed(0)
    flat = (1.0 + 0.01 * torch.randn(100, generator=g)).tolist()
    assert undertraining_verdict(_history(flat)).undertrained is False
    assert undertraining_verdict(_history([1.0, 0.9])).undertrained is None
    assert undertraining_verdict([]).undertrained is None


def test_trainer_stores_the_verdict_in_the_logs(tmp_path):
    trainer = SparseTrainer(
        model=TinyMLP(), args=training_args(tmp_path, max_steps=12, logging_steps=1), train_dataset=VectorDataset(),
        sparsity_config=SparsityConfig(sparsity=0.5, start=2, end=6, update_every=2),
    )  # fmt: skip
    trainer.train()
    entry = trainer.state.log_history[-1]
    assert "undertraining_undertrained" in entry and "undertraining_slope" in entry
    assert trainer.undertraining.verdict is not None
    assert entry["undertraining_undertrained"] == trainer.undertraining.verdict.undertrained


# -- the shared invariants hold for the extended recipe -------------------------------------------------
def test_extended_recipe_keeps_the_invariants(tmp_path):
    from test_methods_common import InvariantChecker

    from helpers import PairDataset, tiny_bert

    config = SparsityConfig.from_preset(
        "bert-glue-extended", sparsity=0.75, update_every=2, schedule_scale=2, lr_rewinding="cosine"
    )
    args = training_args(tmp_path, max_steps=6, logging_steps=1, gradient_accumulation_steps=2, max_grad_norm=1.0)
    trainer = SparseTrainer(model=tiny_bert(), args=args, train_dataset=PairDataset(n=96), sparsity_config=config)
    checker = InvariantChecker(trainer)
    trainer.add_callback(checker)
    trainer.train()
    assert trainer.state.global_step == 12 and checker.steps_checked == 12
    assert checker.violations == []
    updates = [s for s in range(13) if trainer.sparsifier.method.is_update_step(s)]
    assert updates == [0, 4, 8, 9]  # start 0, every 2*2, end 0.75*12 = 9
    assert trainer.sparsifier.sparsity == pytest.approx(0.75, abs=0.01)
    lrs = {e["step"]: e["learning_rate"] for e in trainer.state.log_history if "learning_rate" in e}
    assert lrs[1] == pytest.approx(1e-3) and lrs[5] == pytest.approx(1e-3) and lrs[4] < 1e-3  # rewound at 4


def test_teacher_runs_under_the_students_autocast(tmp_path):
    torch.manual_seed(0)
    student = TinyMLP()
    teacher = copy.deepcopy(student)
    dtypes = []
    teacher.out.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    trainer = SparseTrainer(
        model=student, args=training_args(tmp_path, max_steps=2, bf16=True), train_dataset=VectorDataset(),
        sparsity_config=SparsityConfig(sparsity=0.5, start=1, end=1, recipe="none"), teacher_model=teacher,
    )  # fmt: skip
    assert isinstance(trainer.distillation, DistillationConfig)  # defaults when only a teacher is given
    trainer.train()
    assert dtypes == [torch.bfloat16, torch.bfloat16]


def test_cli_lists_and_prints_presets(capsys):
    from hf_sparse.__main__ import main

    assert main(["presets"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in available_presets())
    assert main(["presets", "acdc"]) == 0
    assert SparsityConfig.from_dict(json.loads(capsys.readouterr().out)) == SparsityConfig.from_preset("acdc")
    assert main(["presets", "nope"]) == 2  # bad input: the message, no traceback
    assert "available presets" in capsys.readouterr().err
