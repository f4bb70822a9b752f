"""The sparse-aware recipe (hf_sparse.methods.recipe_defaults): what SparsityConfig(sparsity=s) means, and how it shows."""

from __future__ import annotations

import logging

import pytest

from hf_sparse import SparseTrainer, SparsityConfig
from hf_sparse.training.lr_schedules import RewindingLambda
from hf_sparse.methods.recipe_defaults import PLAIN_DEFAULTS, RECIPE_UPDATES, apply_recipe, recommend_schedule_scale

from helpers import TinyMLP, VectorDataset, training_args


def test_the_config_holds_what_was_asked_and_the_recipe_fills_a_copy():
    given = SparsityConfig(sparsity=0.9)
    assert (given.allocation, given.schedule_scale, given.lr_rewinding, given.update_every) == ("auto", None, "auto", None)
    assert given.method_args == {} and given.recipe_choices is None
    assert SparsityConfig.from_dict(given.to_dict()) == given  # "auto" round-trips as "auto"
    filled = apply_recipe(given)
    assert filled is not given and filled.allocation == "global" and given.allocation == "auto"
    assert apply_recipe(filled) is filled  # filled once: every layer may call it on what it is given
    with pytest.raises(ValueError, match="apply_recipe"):
        given.update_interval(0, 80)


def test_only_the_sparsity_gives_the_gmp_recipe():
    config = apply_recipe(SparsityConfig(sparsity=0.9))
    assert (config.recipe, config.allocation, config.lr_rewinding, config.update_every) == ("auto", "global", "linear", None)
    assert config.schedule_scale == recommend_schedule_scale(0.9)
    assert config.method_args == {"criterion": "fisher"}
    assert set(config.recipe_choices) == {"allocation", "schedule_scale", "lr_rewinding", "update_every", "criterion"}


def test_recipe_none_is_exactly_the_plain_defaults():
    config = apply_recipe(SparsityConfig(sparsity=0.9, recipe="none"))
    assert {k: getattr(config, k) for k in PLAIN_DEFAULTS} == PLAIN_DEFAULTS
    assert config.method_args == {} and config.recipe_choices == {}


def test_explicit_values_win_over_the_recipe():
    config = apply_recipe(SparsityConfig(sparsity=0.9, allocation="erk", schedule_scale=1, lr_rewinding=None,
                                         update_every=7, method_args={"initial_jump": None, "criterion": "magnitude"}))
    assert (config.allocation, config.schedule_scale, config.lr_rewinding, config.update_every) == ("erk", 1.0, None, 7)
    assert config.method_args == {"initial_jump": None, "criterion": "magnitude"} and config.recipe_choices == {}


def test_the_recipe_adds_its_method_args_beside_the_users():
    mine = {"initial_jump": 0.5}
    config = apply_recipe(SparsityConfig(sparsity=0.9, method_args=mine))
    assert config.method_args == {"initial_jump": 0.5, "criterion": "fisher"}
    assert config.recipe_choices["criterion"] == "fisher" and "initial_jump" not in config.recipe_choices
    assert mine == {"initial_jump": 0.5}  # the user's dict is not changed


def test_resolved_config_round_trips_unchanged():
    config = apply_recipe(SparsityConfig(sparsity=0.8))
    again = SparsityConfig.from_dict(config.to_dict())
    assert again == config and again.to_dict() == config.to_dict()
    assert SparsityConfig.from_dict(again.to_dict()) == config


@pytest.mark.parametrize("kwargs", [dict(sparsity=0.0), dict(method="rigl", sparsity=0.9), dict(method="oneshot", sparsity=0.9)])
def test_no_recipe_where_none_was_measured(kwargs):
    """Dense runs and methods without a measured recipe keep their plain defaults under 'auto'."""
    config = apply_recipe(SparsityConfig(**kwargs))
    assert config.recipe_choices == {}
    assert {k: getattr(config, k) for k in PLAIN_DEFAULTS} == PLAIN_DEFAULTS


def test_nm_pattern_keeps_uniform_allocation():
    assert apply_recipe(SparsityConfig(pattern="2:4")).allocation == "uniform"
    with pytest.raises(ValueError, match="allocation='uniform'"):
        SparsityConfig(pattern="2:4", allocation="global")


def test_auto_update_interval_spreads_a_fixed_number_of_updates():
    config = apply_recipe(SparsityConfig(sparsity=0.9))
    assert config.update_interval(0, 80) == 80 // RECIPE_UPDATES
    assert config.update_interval(0, 3) == 1  # short runs still update every step
    assert apply_recipe(SparsityConfig(sparsity=0.9, update_every=10, schedule_scale=2)).update_interval(0, 80) == 20


def test_bad_recipe_name_is_refused():
    with pytest.raises(ValueError, match="recipe must be one of"):
        SparsityConfig(recipe="fast")
    with pytest.raises(TypeError, match="update_every"):
        SparsityConfig(update_every="often")
    assert SparsityConfig(update_every="auto", schedule_scale="auto").update_every is None  # JSON's spelling


def test_trainer_says_logs_and_records_what_the_recipe_changed(tmp_path, caplog):
    args = training_args(tmp_path, max_steps=8, logging_steps=1)
    with caplog.at_level(logging.WARNING, logger="hf_sparse"):
        trainer = SparseTrainer(model=TinyMLP(), args=args, train_dataset=VectorDataset(), sparsity_config=SparsityConfig(sparsity=0.9))
    scale = recommend_schedule_scale(0.9)
    assert trainer.args.max_steps == 8 * scale and args.max_steps == 8
    assert trainer.sparsity_config.recipe_choices["criterion"] == "fisher" and trainer.sparsity_config.allocation == "global"
    said = caplog.text
    assert "recipe='none'" in said and f"max_steps 8 -> {int(8 * scale)}" in said and "rewinding" in said
    trainer.train()
    entries = [e for e in trainer.state.log_history if "recipe" in e]
    assert len(entries) == 1 and entries[0]["recipe"] == "auto"
    assert any("max_steps" in line for line in entries[0]["recipe_changes"])
    trainer.create_model_card()
    card = (tmp_path / "README.md").read_text()
    assert "## Training notes" in card and f"max_steps 8 -> {int(8 * scale)}" in card


def test_recipe_none_changes_nothing(tmp_path):
    args = training_args(tmp_path, max_steps=8)
    trainer = SparseTrainer(model=TinyMLP(), args=args, train_dataset=VectorDataset(),
                            sparsity_config=SparsityConfig(sparsity=0.9, recipe="none"))
    assert trainer.args.max_steps == 8 and trainer.run_changes == []
    scheduler = trainer.create_scheduler(8, trainer.create_optimizer())
    assert not any(isinstance(f, RewindingLambda) for f in getattr(scheduler, "lr_lambdas", []))
