"""Pruning criteria (hf_sparse.methods.criteria): the Fisher saliency, its running mean and its state."""

from __future__ import annotations

import logging

import pytest
import torch

from hf_sparse import SparsityConfig, apply_recipe
from hf_sparse.sparsifier import Sparsifier
from hf_sparse.methods.criteria import FISHER_DECAY, FisherCriterion, make_criterion


def test_the_running_mean_decays_like_adams_second_moment():
    crit = FisherCriterion()
    g1, g2 = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 0.0])
    crit.observe({"w": g1})
    crit.observe({"w": g2})
    expected = (1 - FISHER_DECAY) * FISHER_DECAY * g1**2 + (1 - FISHER_DECAY) * g2**2
    assert torch.allclose(crit.fisher["w"], expected)


def test_scores_rank_by_the_obs_saliency_and_keep_pruned_at_minus_inf():
    crit = FisherCriterion()
    crit.observe({"w": torch.tensor([0.01, 10.0, 1.0, 5.0])})
    weights = {"w": torch.tensor([1.0, 0.1, 0.5, 9.0])}
    masks = {"w": torch.tensor([True, True, True, False])}
    scores = crit.scores(weights, masks)["w"]
    saliency = weights["w"] ** 2 * crit.fisher["w"]
    assert scores[3] == float("-inf")
    assert torch.equal(scores[:3].argsort(), saliency[:3].argsort())
    assert scores[0] < scores[1]  # the largest weight goes first: its loss barely moves with it


def test_magnitude_until_every_target_had_a_gradient(caplog):
    crit = FisherCriterion()
    weights = {"a": torch.tensor([3.0, -1.0]), "b": torch.tensor([0.5, 2.0])}
    masks = {name: torch.ones(2, dtype=torch.bool) for name in weights}
    with caplog.at_level(logging.WARNING):
        before_any_step = crit.scores(weights, masks)
    assert caplog.text == ""  # expected before the first optimizer step: no warning
    crit.observe({"a": torch.ones(2)})
    with caplog.at_level(logging.WARNING):
        scores = crit.scores(weights, masks)
    for result in (before_any_step, scores):
        assert torch.equal(result["b"], weights["b"].abs()) and torch.equal(result["a"], weights["a"].abs())
    assert "1 of 2 targets never had a gradient" in caplog.text


def test_state_round_trips_exactly_and_refuses_another_shape():
    crit = FisherCriterion()
    crit.observe({"w": torch.randn(3, 4)})
    again = make_criterion("fisher")
    again.load_state_dict(crit.state_dict())
    assert torch.equal(again.fisher["w"], crit.fisher["w"])
    with pytest.raises(ValueError, match="running mean of shape"):
        again.observe({"w": torch.randn(4, 3)})
    with pytest.raises(ValueError, match="criterion must be one of"):
        make_criterion("movement")


def _train_linear(criterion: str) -> torch.Tensor:
    """A linear model whose first two inputs are always 0 but start with the largest weights."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 4, bias=False))
    with torch.no_grad():
        model[0].weight.normal_(0, 0.1)
        model[0].weight[:, :2] = 5.0  # large, but no gradient ever reaches them
    config = SparsityConfig(sparsity=0.25, method="gmp", recipe="none", start=2, end=2, update_every=1,
                            targets=["0"], method_args={"criterion": criterion})
    sparsifier = Sparsifier(model, config)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    sparsifier.begin(total_steps=4)
    for step in range(1, 5):
        x = torch.randn(16, 8)
        x[:, :2] = 0
        loss = (model(x) - x[:, 2:6]).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        sparsifier.prepare_gradients(step)
        optimizer.step()
        sparsifier.after_optimizer_step(step, optimizer)
    return sparsifier.masks["0.weight"]


def test_fisher_prunes_the_weights_the_loss_never_uses_magnitude_keeps_them():
    fisher, magnitude = _train_linear("fisher"), _train_linear("magnitude")
    assert not fisher[:, :2].any()  # the 8 dead weights are exactly the 25% pruned
    assert magnitude[:, :2].all()


def test_frozen_targets_refuse_an_explicit_fisher_and_turn_the_recipes_into_magnitude():
    model = torch.nn.Sequential(torch.nn.Linear(8, 4))
    model[0].weight.requires_grad_(False)  # a LoRA base
    with pytest.raises(ValueError, match="frozen"):
        Sparsifier(model, SparsityConfig(sparsity=0.5, targets=["0"], method_args={"criterion": "fisher"}))
    config = apply_recipe(SparsityConfig(sparsity=0.5, targets=["0"]))
    assert config.method_args == {"criterion": "fisher"}
    sparsifier = Sparsifier(model, config)
    assert sparsifier.method.criterion.name == "magnitude"
    assert config.method_args == {"criterion": "magnitude"} and config.recipe_choices["criterion"] == "magnitude"
