"""EAST pieces: DyReLU phasing and removal, weight sharing, the cyclic density curve, errors."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import ResNetForImageClassification, TrainerCallback

from hf_sparse import SparseTrainer, SparsityConfig
from hf_sparse.methods.cyclic import Cyclic, CyclicDensity
from hf_sparse.core.targets import find_targets
from hf_sparse.vision import (
    PhasedReLU,
    SharedConv2d,
    install_dyrelu,
    materialize_shared_weights,
    owned_sparsity,
    set_beta,
    share_weights,
)
from hf_sparse.vision.dyrelu import beta_at

from helpers import TinyMLP, tiny_bert, training_args
from vision_helpers import TinyImages, tiny_hf_resnet, tiny_timm_resnet


def _x(n: int = 4) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(1))


# -- DyReLU ---------------------------------------------------------------------------------------
def test_beta_schedule_values():
    assert [beta_at(s, 100) for s in (0, 25, 30, 37.5, 50, 80)] == [1.0, 1.0, 0.8, 0.5, 0.0, 0.0]
    assert beta_at(10, 100, start=0.0, end=0.2) == 0.5


def test_phased_relu_mixes_dyrelu_and_relu():
    model = tiny_hf_resnet().eval()
    names = install_dyrelu(model)
    assert len(names) == 13 and all(isinstance(model.get_submodule(n), PhasedReLU) for n in names)
    plain = tiny_hf_resnet().eval()
    x = _x()
    with torch.no_grad():
        set_beta(model, 0.0)
        assert torch.allclose(model(pixel_values=x).logits, plain(pixel_values=x).logits, atol=1e-6)
        set_beta(model, 1.0)
        dy = model(pixel_values=x).logits
        assert not torch.allclose(dy, plain(pixel_values=x).logits, atol=1e-4)
        set_beta(model, 0.5)
        relu_half = model(pixel_values=x).logits
    assert not torch.allclose(relu_half, dy, atol=1e-5)
    # the hyper-network is no sparsification target
    assert not any("dyrelu" in t.name for t in find_targets(model))


@pytest.mark.slow
def test_east_phases_beta_and_saves_a_plain_resnet(tmp_path):
    class BetaRecorder(TrainerCallback):
        betas: list[float] = []

        def on_step_end(self, args, state, control, model=None, **kwargs):
            relus = [m for m in model.modules() if isinstance(m, PhasedReLU)]
            self.betas.append(relus[0].beta)

    model = tiny_hf_resnet()
    config = SparsityConfig(
        method="east", sparsity=0.9, allocation="erk", update_every=2, end=6,
        method_args={"weight_sharing": True, "dyrelu_start": 0.25, "dyrelu_end": 0.5},
    )
    recorder = BetaRecorder()
    trainer = SparseTrainer(
        model=model, args=training_args(tmp_path, max_steps=8, per_device_train_batch_size=4),
        train_dataset=TinyImages(n=32), sparsity_config=config, callbacks=[recorder],
    )
    assert sum(isinstance(m, SharedConv2d) for m in model.modules()) == 4
    trainer.train()
    # beta is set at the start of each step from the completed steps: 1 up to 2 of 8, 0 from 4 of 8
    assert recorder.betas == [1.0, 1.0, 1.0, 0.5, 0.0, 0.0, 0.0, 0.0]
    assert not any(isinstance(m, (PhasedReLU, SharedConv2d)) for m in model.modules())
    out = str(tmp_path / "final")
    trainer.save_model(out)
    reloaded, info = ResNetForImageClassification.from_pretrained(out, output_loading_info=True)
    assert info["missing_keys"] == set() or not info["missing_keys"]
    assert not info["unexpected_keys"]
    assert sum(isinstance(m, torch.nn.ReLU) for m in reloaded.modules()) == 13
    model.eval()
    x = _x()
    with torch.no_grad():
        assert torch.allclose(reloaded(pixel_values=x).logits, model(pixel_values=x).logits, atol=1e-6)
    # the budget: nonzeros of the owned conv weights = (1 - 0.9) x the unshared model's targeted weights
    owned = trainer.masks
    kept = sum(int(m.sum()) for m in owned.values())
    unshared_total = sum(t.param.numel() for t in find_targets(tiny_hf_resnet()))
    assert abs(kept - 0.1 * unshared_total) <= len(owned)


# -- weight sharing -------------------------------------------------------------------------------
@pytest.mark.parametrize("build", [tiny_hf_resnet, tiny_timm_resnet], ids=["hf", "timm"])
def test_weight_sharing_forward_equals_materialised(build):
    model = build().eval()
    reference_keys = set(build().state_dict())
    shared = share_weights(model, seed=3)
    assert shared == sum(isinstance(m, SharedConv2d) for m in model.modules()) > 0
    scales = [m.scale.item() for m in model.modules() if isinstance(m, SharedConv2d)]
    assert all(0.0 <= s < 1.0 for s in scales) and len(set(scales)) == len(scales)
    x = _x()
    with torch.no_grad():
        before = model(pixel_values=x).logits
        assert materialize_shared_weights(model) == shared
        after = model(pixel_values=x).logits
    assert torch.allclose(before, after, atol=1e-6)
    assert set(model.state_dict()) == reference_keys


def test_shared_convs_inherit_the_source_mask():
    model = tiny_hf_resnet()
    share_weights(model)
    targets = find_targets(model)
    names = [t.name for t in targets]
    assert not any("layers.2." in n for n in names)  # block 3 owns no conv weight
    source = model.get_submodule("resnet.encoder.stages.0.layers.1.layer.0.convolution")
    with torch.no_grad():
        source.weight[:, :, 0, 0] = 0.0
    materialize_shared_weights(model)
    copy = model.get_submodule("resnet.encoder.stages.0.layers.2.layer.0.convolution").weight
    assert torch.equal(copy == 0, source.weight == 0)


def test_owned_sparsity_keeps_the_parameter_budget():
    model = tiny_hf_resnet()
    before = sum(t.param.numel() for t in find_targets(model))
    share_weights(model)
    params = [t.param for t in find_targets(model)]
    owned = sum(p.numel() for p in params)
    s = owned_sparsity(0.9, params)
    assert math.isclose((1 - s) * owned, 0.1 * before, rel_tol=1e-9)
    assert s < 0.9 and owned_sparsity(0.1, params) == 0.0  # capped at dense


# -- cyclic ---------------------------------------------------------------------------------------
def test_cyclic_density_curve_values():
    curve = CyclicDensity(d_min=0.1, d_max=0.3, start=0, end=100, cycles=2)
    assert [round(curve(s), 10) for s in (0, 25, 50, 75, 100, 150)] == [0.1, 0.3, 0.1, 0.3, 0.1, 0.1]
    assert math.isclose(curve(12.5), 0.1 + 0.2 * (1 - math.cos(math.pi / 2)) / 2)


def test_cyclic_prunes_by_magnitude_and_grows_by_gradient():
    torch.manual_seed(0)
    model = TinyMLP()
    config = SparsityConfig(
        method="cyclic", sparsity=0.75, update_every=1, end=10, method_args={"ratio": 2.0, "cycles": 1, "cycle_fraction": 0.8}
    )
    method = Cyclic(config, find_targets(model, ignore=["out"]))
    method.setup(10)  # cycle over steps 0..8: density 0.25 -> 0.5 (step 4) -> 0.25
    weights = {t.name: t.param.detach() for t in method.targets}
    masks = method.init_masks(weights, {})
    assert abs(sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values()) - 0.25) < 0.01
    grads = {n: torch.randn(w.shape, generator=torch.Generator().manual_seed(7)) for n, w in weights.items()}
    grown = method.update_masks(2, weights, masks, grads)  # rising
    for name, mask in masks.items():
        assert torch.all(grown[name][mask])  # nothing kept is dropped
        new = grown[name] & ~mask
        assert new.any()
        # every grown weight has a larger |grad| than every pruned weight left out
        left = ~grown[name]
        assert grads[name].abs()[new].min() >= grads[name].abs()[left].max()
    assert math.isclose(method.target_sparsity(2), 1 - method.curve(2))
    fallen = method.update_masks(7, {n: w + 0 for n, w in weights.items()}, grown, grads)  # falling
    for name, mask in fallen.items():
        assert torch.all(grown[name][mask])  # pruning only removes
        removed = grown[name] & ~mask
        if removed.any() and mask.any():
            assert weights[name].abs()[removed].max() <= weights[name].abs()[mask].min()
    kept = sum(int(m.sum()) for m in fallen.values())
    assert kept < sum(int(m.sum()) for m in grown.values())


# -- errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args,match",
    [({"ratio": 0.5}, "ratio"), ({"cycles": -1}, "cycles"), ({"dyrelu_start": 0.6, "dyrelu_end": 0.5}, "dyrelu_start"),
     ({"weight_sharing": "yes"}, "weight_sharing"), ({"nope": 1}, "unknown method_args")],
)
def test_bad_method_args(args, match):
    with pytest.raises(ValueError, match=match):
        SparsityConfig(method="east", method_args=args)


def test_nm_pattern_is_rejected():
    with pytest.raises(ValueError, match="pattern"):
        SparsityConfig(method="cyclic", pattern="2:4")


def test_tricks_reject_non_resnets(tmp_path):
    with pytest.raises(ValueError, match="ResNet"):
        share_weights(tiny_bert())
    with pytest.raises(ValueError, match="no nn.ReLU"):
        install_dyrelu(tiny_bert())
    with pytest.raises(ValueError, match="ResNet"):
        SparseTrainer(model=tiny_bert(), args=training_args(tmp_path), sparsity_config=SparsityConfig(method="east"))


@pytest.mark.slow
def test_east_resume_is_bitwise_equal(tmp_path):
    """Checkpoints hold the DyReLU and sharing parameters; resuming rebuilds them and continues exactly."""

    def trainer_for(out, **overrides):
        config = SparsityConfig(method="east", sparsity=0.9, allocation="erk", update_every=2, end=6)
        args = training_args(out, max_steps=8, per_device_train_batch_size=4, **overrides)
        return SparseTrainer(model=tiny_hf_resnet(), args=args, train_dataset=TinyImages(n=32), sparsity_config=config)

    full = trainer_for(tmp_path / "full", save_strategy="steps", save_steps=4)
    full.train()
    resumed = trainer_for(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-4"))
    for name, mask in full.masks.items():
        assert torch.equal(mask, resumed.masks[name]), name
    reference = resumed.model.state_dict()
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, reference[key]), key


def test_cyclic_drop_and_grow_phase_drops_smallest_weights():
    torch.manual_seed(0)
    model = TinyMLP()
    config = SparsityConfig(
        method="cyclic", sparsity=0.75, update_every=1, end=10, method_args={"cycles": 1, "cycle_fraction": 0.5}
    )
    method = Cyclic(config, find_targets(model, ignore=["out"]))
    method.setup(10)  # cycles over steps 0..5, drop-and-grow at 6..10
    weights = {t.name: t.param.detach() for t in method.targets}
    masks = method.init_masks(weights, {})
    grads = {n: torch.randn(w.shape, generator=torch.Generator().manual_seed(5)) for n, w in weights.items()}
    new = method.update_masks(6, weights, masks, grads)
    for name, mask in masks.items():
        assert int(new[name].sum()) == int(mask.sum())  # constant density
        dropped, stayed = mask & ~new[name], mask & new[name]
        assert dropped.any()
        assert weights[name].abs()[dropped].max() <= weights[name].abs()[stayed].min()
        grown = new[name] & ~mask
        assert grads[name].abs()[grown].min() >= grads[name].abs()[~mask & ~grown].max()
