"""gmp's fresh Fisher (oBERT): re-estimated right before each pruning step from fresh gradients of the masked model."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from helpers import PairDataset, TinyMLP, VectorDataset, tiny_bert, training_args
from hf_sparse import SparsityConfig, SparseTrainer, apply_recipe
from hf_sparse.core.calibration import GradientRequest, GradientSampler, seeded_batches, split_examples
from hf_sparse.methods.criteria import FreshFisherCriterion
from hf_sparse.sparsifier import Sparsifier
from hf_sparse.training import fsdp

FRESH = {"criterion": "fisher", "fisher_estimate": "fresh", "fisher_batches": 3}


def _stack(items: list[dict]) -> dict:
    return {k: torch.stack([item[k] for item in items]) for k in items[0]}


def _loss(model, batch):
    return model(**batch)["loss"]


def _sampler(model, dataset, batch_size=8):
    return GradientSampler(model, seeded_batches(dataset, batch_size, _stack), _loss)


def _hand_fisher(model, dataset, names, request, batch_size=8):
    """Mean of squared gradients over the request's batches (or their examples), by torch.func, in eval mode."""
    model.eval()
    params = {n: p.detach() for n, p in model.named_parameters()}
    batches = list(seeded_batches(dataset, batch_size, _stack)(request.batches, request.seed))

    def loss_of(weights, x, y):
        return functional_call(model, {**params, **weights}, (x,), {"labels": y})["loss"]

    weights = {n: params[n] for n in names}
    squares, count = {n: torch.zeros_like(params[n]) for n in names}, 0
    for batch in batches:
        if request.per_example:  # one gradient per example: vmap over the batch of a one-example loss
            per = vmap(grad(lambda w, x, y: loss_of(w, x[None], y[None])), in_dims=(None, 0, 0))(weights, batch["x"], batch["labels"])
            for n in names:
                squares[n] += per[n].pow(2).sum(0)
            count += len(batch["x"])
        else:
            g = grad(loss_of)(weights, batch["x"], batch["labels"])
            for n in names:
                squares[n] += g[n].pow(2)
            count += 1
    return {n: s / count for n, s in squares.items()}


@pytest.mark.parametrize("per_example", [False, True])
def test_the_fresh_fisher_equals_a_hand_computation(per_example):
    torch.manual_seed(0)
    model, dataset = TinyMLP(), VectorDataset(n=40)
    names = ["fc1.weight", "fc2.weight"]
    params = dict(model.named_parameters())
    request = GradientRequest(batches=3, per_example=per_example, seed=7)
    criterion = FreshFisherCriterion(batches=3, per_example=per_example)
    sampler = _sampler(model, dataset)
    criterion.estimate(sampler(request, {n: params[n] for n in names}))
    expected = _hand_fisher(model, dataset, names, request)
    assert criterion.last_count == (24 if per_example else 3) == sampler.passes
    for n in names:
        torch.testing.assert_close(criterion.fisher[n], expected[n], rtol=1e-5, atol=1e-10)


def test_the_sampler_restores_gradients_and_mode_and_leaves_the_global_rng_alone():
    model, dataset = TinyMLP(), VectorDataset(n=40)
    batch = _stack([dataset[i] for i in range(8)])
    _loss(model, batch).backward()
    before = {n: p.grad for n, p in model.named_parameters()}
    copies = {n: g.clone() for n, g in before.items()}
    model.train()
    rng = torch.get_rng_state()
    for _ in _sampler(model, dataset)(GradientRequest(2), {"fc1.weight": model.fc1.weight}):
        pass
    assert model.training and torch.equal(torch.get_rng_state(), rng)
    for n, p in model.named_parameters():
        assert p.grad is before[n] and torch.equal(p.grad, copies[n])


def test_split_examples_slices_every_batch_tensor():
    batch = {"input_ids": torch.arange(6).view(3, 2), "labels": torch.tensor([0, 1, 0]), "note": "x"}
    parts = split_examples(batch)
    assert len(parts) == 3 and torch.equal(parts[1]["input_ids"], torch.tensor([[2, 3]])) and parts[2]["note"] == "x"
    with pytest.raises(ValueError, match="leading sizes"):
        split_examples({"a": torch.zeros(2, 1), "b": torch.zeros(3)})


def _hand_loop(config, sampler_factory=_sampler, steps=8):
    torch.manual_seed(0)
    model, dataset = TinyMLP(), VectorDataset(n=64)
    sparsifier = Sparsifier(model, config)
    sampler = sampler_factory(model, dataset)
    sparsifier.gradient_sampler = sampler
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sparsifier.begin(total_steps=steps)
    return model, dataset, sparsifier, sampler, optimizer


def test_each_pruning_step_estimates_its_own_fisher_on_the_current_masked_model():
    config = SparsityConfig(sparsity=0.75, method="gmp", recipe="none", start=2, end=6, update_every=2,
                            targets=["fc1", "fc2"], method_args=FRESH)
    model, dataset, sparsifier, sampler, optimizer = _hand_loop(config)
    criterion = sparsifier.method.criterion
    seen: list[tuple[int, dict, dict]] = []
    original_scores = criterion.scores

    def recording_scores(weights, masks):  # what F each update ranks with, and the masks it starts from
        seen.append((engine_step[0], {n: f.clone() for n, f in criterion.fisher.items()}, {n: m.clone() for n, m in masks.items()}))
        return original_scores(weights, masks)

    criterion.scores = recording_scores
    engine_step = [0]
    expected: dict[int, dict] = {}
    for step in range(1, 9):
        engine_step[0] = step
        batch = _stack([dataset[i] for i in range(step * 8 % 64, step * 8 % 64 + 8)])
        optimizer.zero_grad()
        _loss(model, batch).backward()
        sparsifier.prepare_gradients(step)
        optimizer.step()
        if sparsifier.method.is_update_step(step):  # the hand computation, on the weights the update sees
            sparsifier.apply_masks()
            request = sparsifier.method.fresh_gradients_wanted(step)
            expected[step] = _hand_fisher(model, dataset, ["fc1.weight", "fc2.weight"], request)
            model.train()
        sparsifier.after_optimizer_step(step, optimizer)
        for name, p in sparsifier.params.items():  # masks stay exact zeros
            assert torch.all(p[~sparsifier.masks[name]] == 0)
    assert [s for s, _, _ in seen] == [2, 4, 6] == sorted(expected)
    assert sampler.passes == 3 * 3  # fisher_batches per update, nothing on other steps
    assert criterion.fisher == {}  # used once, then dropped
    for step, fisher, _ in seen:
        for name in fisher:
            torch.testing.assert_close(fisher[name], expected[step][name], rtol=1e-5, atol=1e-10)
    assert not torch.equal(seen[0][1]["fc1.weight"], seen[1][1]["fc1.weight"])  # not reused
    assert seen[2][2]["fc1.weight"].float().mean() < 1  # the third estimate saw a pruned model (the first prunes 0%)
    assert abs(sparsifier.sparsity - 0.75) < 0.01
    assert sparsifier.method.state_dict().get("fisher") is None  # nothing to checkpoint


def test_no_sampler_is_a_clear_error():
    config = SparsityConfig(sparsity=0.5, method="gmp", recipe="none", start=1, end=1, update_every=1,
                            targets=["fc1"], method_args=FRESH)
    model = TinyMLP()
    sparsifier = Sparsifier(model, config)
    sparsifier.begin(total_steps=2)
    with pytest.raises(RuntimeError, match="gradient_sampler"):
        sparsifier.after_optimizer_step(1)


def test_settings_are_checked():
    for bad, match in (({"criterion": "fisher", "fisher_estimate": "sometimes"}, "fisher_estimate must be one of"),
                       ({"criterion": "fisher", "fisher_gradients": "example"}, "needs fisher_estimate='fresh'"),
                       ({"criterion": "magnitude", "fisher_estimate": "fresh"}, "apply to criterion 'fisher'"),
                       ({"criterion": "fisher", "fisher_estimate": "fresh", "fisher_batches": 0}, ">= 1"),
                       ({"criterion": "fisher", "fisher_gradients": "token"}, "fisher_gradients must be one of")):
        with pytest.raises(ValueError, match=match):
            SparsityConfig(sparsity=0.5, method="gmp", method_args=bad)
    config = apply_recipe(SparsityConfig(sparsity=0.5, method="gmp", method_args={"fisher_estimate": "fresh"}))  # adds fisher
    assert config.method_args["criterion"] == "fisher"


def test_fsdp2_refuses_the_fresh_estimate_but_not_the_running_one():
    fresh = Sparsifier(tiny_bert(), SparsityConfig(sparsity=0.5, method="gmp", method_args=FRESH))
    sharded = type("T", (), {"is_fsdp_enabled": True, "is_deepspeed_enabled": False,
                             "accelerator": type("A", (), {"is_fsdp2": True})()})()
    with pytest.raises(ValueError, match="fisher_estimate='fresh'"):
        fsdp.refuse_unsupported(sharded, fresh.method, sparse_base=False)
    running = Sparsifier(tiny_bert(), SparsityConfig(sparsity=0.5, method="gmp", method_args={"criterion": "fisher"}))
    fsdp.refuse_unsupported(sharded, running.method, sparse_base=False)


GMP_FRESH = dict(method="gmp", sparsity=0.75, start=2, end=8, update_every=2, recipe="none",
                 method_args={**FRESH, "fisher_gradients": "example", "fisher_batches": 2})


def _train(tmp_path, resume=None, **args):
    trainer = SparseTrainer(model=tiny_bert(), args=training_args(tmp_path, **args), train_dataset=PairDataset(),
                            sparsity_config=SparsityConfig(**GMP_FRESH))
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def test_sparse_trainer_feeds_fresh_gradients_and_a_resumed_run_ends_like_an_uninterrupted_one(tmp_path):
    whole = _train(tmp_path / "whole", save_strategy="steps", save_steps=4)
    sampler = whole.sparsifier.gradient_sampler
    assert sampler.passes == 4 * 2 * 8  # 4 updates x 2 batches x 8 examples, one pass each
    for name, p in whole.sparsifier.params.items():
        assert torch.all(p[~whole.masks[name]] == 0)
    assert abs(whole.sparsifier.sparsity - 0.75) < 0.01
    resumed = _train(tmp_path / "whole", resume=str(tmp_path / "whole" / "checkpoint-4"))
    assert resumed.sparsifier.gradient_sampler.passes == 2 * 2 * 8  # the updates after step 4 (6 and 8)
    for name in whole.masks:
        assert torch.equal(whole.masks[name], resumed.masks[name])
    for (name, a), b in zip(whole.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, msg=name)
