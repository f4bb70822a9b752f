"""The shared matrix: every registered method x allocation x pattern keeps the invariants.

Invariants: masked weights exactly 0 after every optimizer step;
optimizer state at masked positions 0; masks change only on optimizer-step boundaries (with
gradient accumulation and clipping on); resume gives bitwise-equal masks; save/load round trip.
A new method adds one row to METHOD_ROWS (a test fails if a registered method has none); a variant
of a method (another criterion) is a row named "method:variant".
"""

from __future__ import annotations

import pytest
import torch
from transformers import TrainerCallback

from hf_sparse import SparseTrainer, SparsityConfig, available_methods, apply_recipe, get_method_class
from hf_sparse.io.training_state import load_sparsity_state
from hf_sparse.core.masks import nm_mask, topk_mask
from hf_sparse.core.optim_state import _inner

from helpers import PairDataset, tiny_bert, training_args

# method -> SparsityConfig overrides for a 12-step run (mask updates every 2 steps).
METHOD_ROWS: dict[str, dict] = {
    "constant": dict(sparsity=0.5),
    "gmp": dict(sparsity=0.75, initial_sparsity=0.25, start=2, end=8, update_every=2),
    "gmp:fisher": dict(sparsity=0.75, initial_sparsity=0.25, start=2, end=8, update_every=2,
                       method_args={"criterion": "fisher"}),
    "oneshot": dict(sparsity=0.75, start=2),
    "set": dict(sparsity=0.75, start=2, end=8, update_every=2),
    "rigl": dict(sparsity=0.75, start=2, end=8, update_every=2),
    "dst_ee": dict(sparsity=0.75, start=2, end=8, update_every=2),
    # phases: dense 0-2, S at 2, D at 4, S at 6, D at 8, final S at 9
    "acdc": dict(sparsity=0.75, method_args={"warmup": 2, "phase": 2, "final": 3}),
    "cyclic": dict(sparsity=0.75, end=10, update_every=2, method_args={"ratio": 2.0, "cycles": 1, "cycle_fraction": 0.6}),
    "east": dict(
        sparsity=0.75, end=10, update_every=2,
        method_args={"ratio": 2.0, "cycles": 1, "cycle_fraction": 0.6, "dyrelu": False, "weight_sharing": False},
    ),
}


def prune_by_magnitude(model, config: SparsityConfig) -> None:
    """Zero the smallest |w| of each target at the config's sparsity/pattern (an already sparse model)."""
    from hf_sparse.core.targets import find_targets

    with torch.no_grad():
        for t in find_targets(model, config.targets, config.ignore):
            score = t.param.abs()
            if config.nm is not None:
                keep = nm_mask(score, config.nm[0], config.nm[1], t.in_dim)
            else:
                keep = topk_mask(score, round((1 - config.sparsity) * score.numel()))
            t.param.masked_fill_(~keep, 0.0)


# method -> fn(model, config) applied to the fresh tiny model before training (default: none):
# methods that keep what the model has need a model that is already sparse.
PREPARE_MODEL = {"constant": prune_by_magnitude}
# Methods that never update masks (update_count stays 0).
FIXED_MASK_METHODS = {"constant"}
ALLOCATIONS = ["uniform", "global", "erk"]
PATTERNS = ["unstructured", "2:4"]


def _cases():
    for method in sorted(METHOD_ROWS):
        for allocation in ALLOCATIONS:
            for pattern in PATTERNS:
                if pattern != "unstructured" and allocation != "uniform":
                    continue
                yield pytest.param(method, allocation, pattern, id=f"{method}-{allocation}-{pattern}")


# Recipes (SparsityConfig.recipe) run through the same invariants; a row is (name, config fields).
# The method rows above pin recipe="none" so each tests its method's mechanics at exactly 12 steps.
RECIPE_ROWS: dict[str, dict] = {
    "gmp-auto": dict(method="gmp", sparsity=0.75, recipe="auto"),
    "gmp-auto-2:4": dict(method="gmp", pattern="2:4", recipe="auto"),
}


def method_of(row: str) -> str:
    """The registered method of a METHOD_ROWS key ("gmp:fisher" -> "gmp")."""
    return row.split(":")[0]


def make_config(method: str, allocation: str = "uniform", pattern: str = "unstructured") -> SparsityConfig:
    row = dict(METHOD_ROWS[method])
    if pattern != "unstructured":
        row["sparsity"] = None
        row.pop("initial_sparsity", None)
    return SparsityConfig(method=method_of(method), allocation=allocation, pattern=pattern, recipe="none", **row)


def _supported(method: str, pattern: str) -> bool:
    return pattern == "unstructured" or get_method_class(method_of(method)).supports_nm


class InvariantChecker(TrainerCallback):
    """Checks the invariants at every micro-batch and optimizer step; records violations."""

    def __init__(self, trainer: SparseTrainer):
        self.trainer = trainer
        self.sparsifier = trainer.sparsifier
        self.violations: list[str] = []
        self.masks_at_step: dict[int, dict[str, torch.Tensor]] = {}
        self.substeps = 0
        self.steps_checked = 0

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {n: m.clone() for n, m in self.sparsifier.masks.items()}

    def on_train_begin(self, args, state, control, **kwargs):
        self.masks_at_step[state.global_step] = self._snapshot()

    def on_substep_end(self, args, state, control, **kwargs):
        self.substeps += 1
        last = self.masks_at_step[max(self.masks_at_step)]
        if any(not torch.equal(last[n], m) for n, m in self.sparsifier.masks.items()):
            self.violations.append(f"masks changed inside gradient accumulation at step {state.global_step}")

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        step = state.global_step
        self.steps_checked += 1
        masks = self._snapshot()
        for name, param in self.sparsifier.params.items():
            pruned = ~masks[name]
            if torch.any(param.detach()[pruned] != 0):
                self.violations.append(f"step {step}: {name} has nonzero pruned weights")
            for key, value in _inner(optimizer).state.get(param, {}).items():
                if isinstance(value, torch.Tensor) and value.shape == param.shape and torch.any(value[pruned] != 0):
                    self.violations.append(f"step {step}: optimizer state {key!r} of {name} nonzero where pruned")
        previous = self.masks_at_step[max(self.masks_at_step)]
        changed = any(not torch.equal(previous[n], masks[n]) for n in masks)
        if changed and not self.sparsifier.method.is_update_step(step):
            self.violations.append(f"masks changed at step {step}, not an update step")
        self.masks_at_step[step] = masks


def _train(tmp_path, config, **arg_overrides):
    args = training_args(tmp_path, gradient_accumulation_steps=2, max_grad_norm=1.0, **arg_overrides)
    model = tiny_bert()
    PREPARE_MODEL.get(config.method, lambda m, c: None)(model, config)
    trainer = SparseTrainer(model=model, args=args, train_dataset=PairDataset(n=96), sparsity_config=config)
    checker = InvariantChecker(trainer)
    trainer.add_callback(checker)
    return trainer, checker


def test_every_registered_method_has_a_row():
    assert set(available_methods()) == {method_of(row) for row in METHOD_ROWS}, "add the new method to METHOD_ROWS"


@pytest.mark.parametrize("method,allocation,pattern", list(_cases()))
def test_invariants_every_step(tmp_path, method, allocation, pattern):
    if not _supported(method, pattern):
        with pytest.raises(ValueError, match="pattern"):
            make_config(method, allocation, pattern)
        return
    config = make_config(method, allocation, pattern)
    trainer, checker = _train(tmp_path, config, optim="adamw_torch")
    trainer.train()
    assert checker.steps_checked == 12 and checker.substeps == 12
    assert checker.violations == []
    masks = trainer.masks
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    target = trainer.sparsifier.target_sparsity()
    assert abs((1 - kept / total) - target) <= len(masks) / total  # exact within one weight per layer
    assert trainer.sparsifier.update_count >= (0 if method in FIXED_MASK_METHODS else 1)
    for name, param in trainer.sparsifier.params.items():
        assert torch.equal(param.detach() != 0, masks[name] & (param.detach() != 0))
    if pattern == "2:4":
        for name, mask in masks.items():
            groups = mask.reshape(-1, 4).sum(dim=1)
            assert torch.all(groups == 2), name


def test_every_recipe_of_the_config_has_a_row():
    from hf_sparse.config import RECIPES

    assert {row["recipe"] for row in RECIPE_ROWS.values()} | {"none"} == set(RECIPES), "add the recipe to RECIPE_ROWS"


@pytest.mark.parametrize("name", sorted(RECIPE_ROWS))
def test_recipe_keeps_the_invariants_and_resumes_exactly(tmp_path, name):
    config = apply_recipe(SparsityConfig(**RECIPE_ROWS[name]))
    assert config.recipe_choices, "the row must exercise what the recipe fills in"
    full, checker = _train(tmp_path / "full", config, save_strategy="steps", save_steps=4)
    full.train()
    assert checker.violations == []
    assert checker.steps_checked == full.args.max_steps > 12  # the recipe trains longer
    assert full.sparsifier.update_count >= 2
    assert abs(full.sparsifier.sparsity - config.sparsity) <= len(full.masks) / sum(m.numel() for m in full.masks.values())
    resumed, checker = _train(tmp_path / "resumed", SparsityConfig(**RECIPE_ROWS[name]))
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-4"))
    assert checker.violations == []
    for param_name, mask in full.masks.items():
        assert torch.equal(mask, resumed.masks[param_name]), param_name
    full.save_model(str(tmp_path / "out"))
    assert SparsityConfig.from_pretrained(str(tmp_path / "out")) == full.sparsity_config


@pytest.mark.parametrize("optim", ["sgd", "adamw_torch"])
@pytest.mark.parametrize("method", sorted(METHOD_ROWS))
def test_invariants_with_optimizers(tmp_path, method, optim):
    # SGD with momentum: its momentum_buffer must be zeroed where pruned, like Adam's moments
    optim_args = "momentum=0.9" if optim == "sgd" else None
    trainer, checker = _train(tmp_path, make_config(method), optim=optim, optim_args=optim_args)
    trainer.train()
    assert checker.violations == []
    if optim == "sgd":  # the state the checker inspects exists
        buffers = [s.get("momentum_buffer") for s in _inner(trainer.optimizer).state.values()]
        assert buffers and all(b is not None for b in buffers)


@pytest.mark.parametrize("method", sorted(METHOD_ROWS))
def test_resume_gives_bitwise_equal_masks(tmp_path, method):
    config = make_config(method)
    full, _ = _train(tmp_path / "full", config, save_strategy="steps", save_steps=4)
    full.train()
    resumed, checker = _train(tmp_path / "resumed", make_config(method))
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-4"))
    assert checker.violations == []
    for name, mask in full.masks.items():
        assert torch.equal(mask, resumed.masks[name]), name
    for name, param in full.sparsifier.params.items():
        assert torch.equal(param.detach(), resumed.sparsifier.params[name].detach()), name
    assert full.sparsifier.state_dict()["update_count"] == resumed.sparsifier.state_dict()["update_count"]


@pytest.mark.parametrize("method", sorted(METHOD_ROWS))
def test_save_load_round_trip(tmp_path, method):
    from transformers import AutoModelForSequenceClassification

    trainer, _ = _train(tmp_path, make_config(method))
    trainer.train()
    trainer.save_model(str(tmp_path / "out"))
    reloaded = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "out"))
    state, config = load_sparsity_state(str(tmp_path / "out"))
    assert SparsityConfig.from_dict(config) == trainer.sparsity_config
    assert SparsityConfig.from_pretrained(str(tmp_path / "out")) == trainer.sparsity_config
    params = dict(reloaded.named_parameters())
    for name, mask in trainer.masks.items():
        assert torch.equal(state["masks"][name], mask)
        assert torch.all(params[name][~mask] == 0)
        assert torch.equal(params[name], trainer.sparsifier.params[name].detach())
