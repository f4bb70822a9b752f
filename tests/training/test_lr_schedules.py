"""LR rewinding as a pure function, its LambdaLR wrapper, and its use inside SparseTrainer."""

from __future__ import annotations

import io
import math

import pytest
import torch

from hf_sparse import SparseTrainer, SparsityConfig
from hf_sparse.training.lr_schedules import RewindingLambda, pruning_steps_of, rewinding_factor

from helpers import TinyMLP, VectorDataset, training_args

PRUNING = [10, 20, 30]
TOTAL = 50


@pytest.mark.parametrize("shape", ["linear", "cosine"])
def test_peak_at_each_pruning_step_and_floor_before_the_next(shape):
    f = lambda t: rewinding_factor(t, PRUNING, TOTAL, floor=0.1, shape=shape)  # noqa: E731
    for p in PRUNING:
        assert f(p) == pytest.approx(1.0)
    assert f(0) == 1.0 and f(9) == 1.0  # before the first pruning step: the peak
    assert f(19) > 0.1 and f(19) < 0.2  # one step before the next restart: near the floor
    assert f(30) == 1.0 and f(TOTAL) == pytest.approx(0.0)  # final decay to 0 at the end
    for begin, end in [(10, 20), (20, 30), (30, TOTAL)]:
        values = [f(t) for t in range(begin, end + (end == TOTAL))]
        assert all(a > b for a, b in zip(values, values[1:])), (shape, begin)


def test_linear_and_cosine_midpoints():
    assert rewinding_factor(15, PRUNING, TOTAL, floor=0.1, shape="linear") == pytest.approx(0.1 + 0.9 * 0.5)
    assert rewinding_factor(12, PRUNING, TOTAL, floor=0.2, shape="cosine") == pytest.approx(
        0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * 0.2))
    )
    assert rewinding_factor(40, PRUNING, TOTAL, floor=0.1, shape="linear", final_floor=0.0) == pytest.approx(0.5)


def test_warmup_scales_the_start_and_bad_shape_raises():
    assert rewinding_factor(0, PRUNING, TOTAL, warmup_steps=4) == 0.0
    assert rewinding_factor(2, PRUNING, TOTAL, warmup_steps=4) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="shape"):
        rewinding_factor(1, PRUNING, TOTAL, shape="step")
    with pytest.raises(ValueError, match="floor"):
        RewindingLambda(PRUNING, TOTAL, floor=1.5)


def test_lambdalr_state_loads_with_weights_only_and_resumes_at_the_same_value():
    def make():
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.5)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, RewindingLambda(PRUNING, TOTAL, 0.1, "cosine"))

    opt, sched = make()
    for _ in range(17):
        opt.step()
        sched.step()
    buffer = io.BytesIO()
    torch.save(sched.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    opt2, sched2 = make()
    sched2.load_state_dict(state)
    assert sched2.get_last_lr() == sched.get_last_lr()
    opt.step(), sched.step(), opt2.step(), sched2.step()
    assert sched2.get_last_lr() == pytest.approx(sched.get_last_lr())
    assert sched.get_last_lr()[0] == pytest.approx(0.5 * rewinding_factor(18, PRUNING, TOTAL, 0.1, "cosine"))


def test_pruning_steps_of_enumerates_update_steps():
    assert pruning_steps_of(lambda s: s % 4 == 2, 12) == [2, 6, 10]


def test_bad_config_values_raise():
    with pytest.raises(ValueError, match="lr_rewinding"):
        SparsityConfig(lr_rewinding="step")
    with pytest.raises(ValueError, match="lr_floor"):
        SparsityConfig(lr_rewinding="linear", lr_floor=2.0)


def _trainer(tmp_path, **overrides):
    config = SparsityConfig(
        method="gmp", sparsity=0.75, start=2, end=8, update_every=2, lr_rewinding="linear", lr_floor=0.1,
        recipe="none",  # exactly these steps (the recipe would stretch the run)
    )
    args = training_args(tmp_path, logging_steps=1, save_strategy="steps", save_steps=4, **overrides)
    return SparseTrainer(model=TinyMLP(), args=args, train_dataset=VectorDataset(n=96), sparsity_config=config)


def test_logged_learning_rate_follows_rewinding_and_resumes(tmp_path):
    torch.manual_seed(0)
    full = _trainer(tmp_path / "full")
    full.train()
    logged = {e["step"]: e["learning_rate"] for e in full.state.log_history if "learning_rate" in e}
    steps = [2, 4, 6, 8]  # update steps of the gmp row: start 2, every 2, end 8
    # the log of step s shows the LR optimizer step s ran with: the factor after s - 1 steps
    for step, lr in logged.items():
        assert lr == pytest.approx(1e-3 * rewinding_factor(step - 1, steps, 12, 0.1, "linear")), step
    assert logged[3] == pytest.approx(1e-3) and logged[4] == pytest.approx(0.55e-3)  # restart after step 2
    assert logged[12] == pytest.approx(0.25e-3)  # final decay 8 -> 12

    torch.manual_seed(0)
    resumed = _trainer(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-4"))
    again = {e["step"]: e["learning_rate"] for e in resumed.state.log_history if "learning_rate" in e}
    assert set(again) == set(logged)  # steps 1-4 come from the checkpoint's log_history, 5-12 are new
    for step, lr in again.items():
        assert lr == pytest.approx(logged[step]), step
