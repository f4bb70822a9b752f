"""HF and timm ResNets trained sparse with SparseTrainer, saved, and served by the image pipeline."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from hf_sparse import SparseTrainer, SparsityConfig
from hf_sparse.core.targets import find_targets

from helpers import training_args
from vision_helpers import IMAGE_SIZE, TinyImages, tiny_hf_resnet, tiny_timm_resnet


def _images(n: int = 3) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)) for _ in range(n)]


def _train_and_check(tmp_path, model, stem: str, classifier: str):
    config = SparsityConfig(method="gmp", sparsity=0.8, start=0, end=4, update_every=2, recipe="none")  # uniform, 4 steps
    trainer = SparseTrainer(
        model=model,
        args=training_args(tmp_path, max_steps=4, per_device_train_batch_size=4, gradient_accumulation_steps=2),
        train_dataset=TinyImages(n=32),
        sparsity_config=config,
    )
    names = set(trainer.masks)
    assert stem not in names and classifier not in names
    assert all(".conv" in n or "convolution" in n or "downsample" in n for n in names)
    stem_before = dict(model.named_parameters())[stem].detach().clone()
    trainer.train()
    params = dict(model.named_parameters())
    for name, mask in trainer.masks.items():  # uniform: every conv exactly at 80% (within one weight)
        assert abs(1 - mask.float().mean().item() - 0.8) <= 1.0 / mask.numel()
        assert torch.all(params[name][~mask] == 0)
    assert torch.count_nonzero(params[stem]) == params[stem].numel()
    assert torch.count_nonzero(params[classifier]) == params[classifier].numel()
    assert not torch.equal(stem_before, params[stem].detach())  # the stem trained, densely
    return trainer


def _pipeline_check(out_dir, trainer):
    from transformers import pipeline

    classify = pipeline("image-classification", model=out_dir, device="cpu")
    results = classify(_images())
    assert len(results) == 3 and all(r[0]["label"].startswith("LABEL_") for r in results)
    loaded = dict(classify.model.named_parameters())
    for name, mask in trainer.masks.items():
        assert torch.all(loaded[name][~mask] == 0), name
        assert torch.equal(loaded[name], dict(trainer.model.named_parameters())[name].detach())


@pytest.mark.slow
def test_hf_resnet_sparse_training_and_pipeline(tmp_path):
    from transformers import ConvNextImageProcessor

    trainer = _train_and_check(
        tmp_path, tiny_hf_resnet(), "resnet.embedder.embedder.convolution.weight", "classifier.1.weight"
    )
    out = str(tmp_path / "final")
    trainer.save_model(out)
    ConvNextImageProcessor(size={"shortest_edge": IMAGE_SIZE}).save_pretrained(out)
    assert os.path.isfile(os.path.join(out, "sparsity_config.json"))
    _pipeline_check(out, trainer)


@pytest.mark.slow
def test_timm_resnet_sparse_training_and_pipeline(tmp_path):
    model = tiny_timm_resnet()
    trainer = _train_and_check(tmp_path, model, "timm_model.conv1.weight", "timm_model.fc.weight")
    model.config.pretrained_cfg = dict(model.timm_model.pretrained_cfg, input_size=(3, IMAGE_SIZE, IMAGE_SIZE))
    out = str(tmp_path / "final")
    trainer.save_model(out)
    _pipeline_check(out, trainer)


def test_default_targets_cover_every_resnet_conv_but_the_stem():
    hf, timm_model = tiny_hf_resnet(), tiny_timm_resnet()
    for model, stem in ((hf, "resnet.embedder.embedder.convolution"), (timm_model, "timm_model.conv1")):
        convs = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
        assert {t.module_name for t in find_targets(model)} == convs - {stem}
    # configurable: the stem can be named explicitly
    assert [t.module_name for t in find_targets(hf, targets=[r"embedder\.convolution$"])] == [
        "resnet.embedder.embedder.convolution"
    ]


def test_gradient_accumulation_does_not_scale_resnet_gradients(tmp_path):
    """transformers' ResNet ignores num_items_in_batch: without the fix GA=2 doubles the gradient."""

    def first_grad_norm(ga: int, batch: int) -> float:
        args = training_args(
            tmp_path / f"ga{ga}", max_steps=1, logging_steps=1, per_device_train_batch_size=batch,
            gradient_accumulation_steps=ga, learning_rate=0.0,
        )
        trainer = SparseTrainer(
            model=tiny_hf_resnet(), args=args, train_dataset=TinyImages(n=16),
            sparsity_config=SparsityConfig(method="oneshot", sparsity=0.5, start=5),
        )
        trainer.train()
        return next(log["grad_norm"] for log in trainer.state.log_history if "grad_norm" in log)

    ratio = first_grad_norm(2, 8) / first_grad_norm(1, 16)
    assert 0.7 < ratio < 1.4, ratio  # the bug gives ~2


@pytest.mark.slow
def test_every_method_trains_a_resnet(tmp_path):
    """Each registered method (its matrix row) keeps a ResNet exactly at its target sparsity."""
    from hf_sparse import available_methods

    from test_methods_common import make_config

    for method in available_methods():
        trainer = SparseTrainer(
            model=tiny_hf_resnet(), args=training_args(tmp_path / method, per_device_train_batch_size=4),
            train_dataset=TinyImages(n=24), sparsity_config=make_config(method),
        )
        trainer.train()
        params = dict(trainer.model.named_parameters())
        kept = sum(int(m.sum()) for m in trainer.masks.values())
        total = sum(m.numel() for m in trainer.masks.values())
        assert abs((1 - kept / total) - trainer.sparsifier.target_sparsity()) <= len(trainer.masks) / total, method
        for name, mask in trainer.masks.items():
            assert torch.all(params[name][~mask] == 0), (method, name)
