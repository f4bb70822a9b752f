"""LoRA (peft) on sparse models: the base stays exactly sparse while adapters train, and after merge."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from hf_sparse import SparseTrainer, SparsityConfig, get_method_class, merge_and_unload
from hf_sparse.lora.merge import MaskedLoraDeltas, PeftSparsifier, masks_from_directory
from hf_sparse.methods.gmp import GMP
from hf_sparse.core.peft_layout import canonical_name
from hf_sparse.core.masks import overall_sparsity
from hf_sparse.sparsifier import Sparsifier
from hf_sparse.core.targets import find_targets

from helpers import PairDataset, tiny_bert, training_args
from test_methods_common import FIXED_MASK_METHODS, METHOD_ROWS, InvariantChecker, make_config, method_of

PREFIX = "base_model.model."


def sparse_base(sparsity: float = 0.75, pattern: str = "unstructured", seed: int = 0):
    """A tiny BERT pruned once by magnitude (no training needed), and its sparsifier."""
    model = tiny_bert(seed)
    config = SparsityConfig(method="oneshot", sparsity=None if pattern != "unstructured" else sparsity, pattern=pattern)
    sparsifier = Sparsifier(model, config)
    sparsifier.begin(total_steps=1)
    return model, sparsifier


def lora(model, **overrides):
    config = dict(task_type="SEQ_CLS", target_modules=["query", "value"], r=4, lora_alpha=8)
    config.update(overrides)
    return get_peft_model(model, LoraConfig(**config))


def batch(n: int = 16, seed: int = 1) -> dict:
    data = PairDataset(n=n, seed=seed)
    return {"input_ids": data.ids, "attention_mask": torch.ones_like(data.ids)}


def canonical(masks: dict) -> dict:
    return {canonical_name(n, PREFIX): m for n, m in masks.items()}


def base_weights(peft_model) -> dict:
    return {
        canonical_name(n, PREFIX): p.detach().clone()
        for n, p in peft_model.named_parameters()
        if "lora_" not in n and n.endswith(".weight")
    }


def adapter_weights(peft_model) -> dict:
    return {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_" in n}


def _lora_trainer(tmp_path, peft_model, accumulation: int = 2, save_steps: int = 0, **kwargs):
    saving = dict(save_strategy="steps", save_steps=save_steps) if save_steps else {}
    args = training_args(
        tmp_path, gradient_accumulation_steps=accumulation, max_grad_norm=1.0, learning_rate=1e-2,
        max_steps=6 if accumulation > 1 else 8, **saving,
    )
    trainer = SparseTrainer(model=peft_model, args=args, train_dataset=PairDataset(n=96), **kwargs)
    checker = InvariantChecker(trainer)
    trainer.add_callback(checker)
    return trainer, checker


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Sparse base (75%) + LoRA on query/value, trained 6 steps (x2 accumulation) with SparseTrainer; saved."""
    out = tmp_path_factory.mktemp("lora")
    model, sparsifier = sparse_base()
    masks = canonical(sparsifier.masks)
    model.save_pretrained(str(out / "base"))
    peft_model = lora(model)
    before_base, before_adapters = base_weights(peft_model), adapter_weights(peft_model)
    trainer, checker = _lora_trainer(out / "run", peft_model, base_masks=sparsifier)
    trainer.train()
    trainer.save_model(str(out / "adapter"))
    return dict(
        out=out, masks=masks, trainer=trainer, checker=checker, model=peft_model,
        before_base=before_base, before_adapters=before_adapters,
    )


# -- which weights are targeted under peft ----------------------------------------------------------
def test_targets_under_peft_are_base_weights_with_plain_names():
    plain = [t.name for t in find_targets(tiny_bert())]
    peft_model = lora(tiny_bert())
    names = [t.name for t in find_targets(peft_model)]
    assert not any("lora_" in n for n in names)
    assert sum(".base_layer." in n for n in names) == 4  # query and value of 2 layers
    assert [canonical_name(n, PREFIX) for n in names] == plain
    explicit = [t.name for t in find_targets(peft_model, targets=[r"query$"])]  # regex on the plain name
    assert explicit == [f"{PREFIX}bert.encoder.layer.{i}.attention.self.query.base_layer.weight" for i in (0, 1)]
    assert all("lora_" not in t.name for t in find_targets(peft_model, targets=["query"]))


# -- base masks from every source -------------------------------------------------------------------
@pytest.mark.parametrize("source", ["sparsifier", "dict", "peft_dict", "zeros", "directory"])
def test_base_masks_from_every_source(tmp_path, source):
    model, sparsifier = sparse_base()
    expected = canonical(sparsifier.masks)
    if source == "directory":
        trainer = SparseTrainer(model=model, args=training_args(tmp_path), base_masks=sparsifier)
        trainer.save_model(str(tmp_path / "saved"))
    peft_model = lora(model)
    given = {
        "sparsifier": sparsifier,
        "dict": dict(sparsifier.masks),
        "peft_dict": {PREFIX + re.sub(r"(query|value)\.weight$", r"\1.base_layer.weight", n): m
                      for n, m in sparsifier.masks.items()},
        "zeros": None,
        "directory": str(tmp_path / "saved"),
    }[source]
    peft_sparsifier = PeftSparsifier(peft_model, None, given)
    got = canonical(peft_sparsifier.masks)
    assert set(got) == set(expected)
    for name, mask in expected.items():
        assert torch.equal(got[name], mask), name
    assert peft_sparsifier.sparsity == pytest.approx(sparsifier.sparsity, abs=0)


# -- training: the frozen base stays exactly sparse, adapters train ------------------------------------
def test_lora_training_keeps_base_exactly_sparse(trained):
    trainer, checker, masks = trained["trainer"], trained["checker"], trained["masks"]
    assert checker.steps_checked == 6 and checker.substeps == 6 and checker.violations == []
    config = trainer.sparsity_config  # nothing pruned beyond the base: the registered constant method
    assert config is not None and config.method == "constant" and type(trainer.sparsifier.method).__name__ == "Constant"
    assert config.sparsity == pytest.approx(overall_sparsity(trainer.masks), abs=1e-6)
    assert trainer.sparsifier.target_sparsity() == pytest.approx(overall_sparsity(trainer.masks), abs=0)
    assert set(canonical(trainer.masks)) == set(masks)
    after = base_weights(trained["model"])
    for name, mask in masks.items():
        assert torch.equal(canonical(trainer.masks)[name], mask), name
        assert torch.all(after[name][~mask] == 0), name
        assert torch.equal(after[name], trained["before_base"][name]), name  # frozen: not one bit moved
    changed = [n for n, w in adapter_weights(trained["model"]).items() if not torch.equal(w, trained["before_adapters"][n])]
    assert len(changed) == len(trained["before_adapters"]) == 8  # every lora_A / lora_B trained


def _lora_b_large(peft_model, scale: float = 0.5, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=g) * scale)


# -- merge ------------------------------------------------------------------------------------------------
def test_merge_keeps_exact_sparsity_and_reports_the_cost(trained):
    peft_model = copy.deepcopy(trained["model"])
    _lora_b_large(peft_model)  # a delta large enough that masking it shows in the logits
    dense = copy.deepcopy(peft_model).merge_and_unload()  # peft's own merge: dense
    inputs = batch()
    result = merge_and_unload(peft_model, trained["trainer"], inputs=inputs)
    merged = dict(result.model.named_parameters())
    masks = trained["masks"]
    assert set(result.masks) == set(masks)
    assert result.sparsity == pytest.approx(trained["trainer"].sparsifier.sparsity, abs=0)
    for name, mask in masks.items():
        assert torch.equal(result.masks[name], mask)
        assert torch.equal(merged[name], dense.get_parameter(name).detach() * mask), name
    assert sorted(result.delta_dropped) == sorted(n for n in masks if ".query." in n or ".value." in n)
    # a random delta loses about sqrt(sparsity) of its norm to a 75% mask
    assert all(0.7 < v < 0.95 for v in result.delta_dropped.values()), result.delta_dropped
    dense.eval(), result.model.eval()
    with torch.no_grad():
        reference = dense(**inputs).logits
        got = result.model(**inputs).logits
    diff = (got - reference).abs()
    assert result.max_logit_diff == pytest.approx(float(diff.max()), rel=1e-3, abs=1e-5)
    assert result.mean_logit_diff == pytest.approx(float(diff.mean()), rel=1e-3, abs=1e-5)
    assert result.max_logit_diff > 1e-3
    assert 0.0 <= result.changed_predictions <= 1.0
    assert "sparsity 0.75" in str(result)


def test_merge_infers_masks_from_exact_zeros():
    model, sparsifier = sparse_base(seed=2)
    peft_model = lora(model)
    _lora_b_large(peft_model)
    result = merge_and_unload(peft_model)  # no masks: the adapted layers' zeros
    assert len(result.masks) == 4
    for name, mask in result.masks.items():
        assert torch.equal(mask, canonical(sparsifier.masks)[name])
        assert torch.equal(result.model.get_parameter(name) != 0, mask)
    assert result.max_logit_diff is None


# -- further pruning of the base while LoRA trains -------------------------------------------------------
@pytest.mark.parametrize("method", sorted(METHOD_ROWS))
def test_prune_base_further_while_lora_trains_and_resumes(tmp_path, method):
    model, sparsifier = sparse_base(sparsity=0.5)
    base_masks = canonical(sparsifier.masks)
    peft_model = lora(model)
    before = base_weights(peft_model)
    config = make_config(method)
    method_class = get_method_class(method_of(method))
    gradient_criterion = config.method_args.get("criterion") == "fisher"
    if method_class.needs_gradients or method_class.needs_trainable_targets or gradient_criterion:
        with pytest.raises(ValueError, match="frozen"):
            _lora_trainer(tmp_path, peft_model, sparsity_config=config, base_masks=sparsifier)
        return
    trainer, checker = _lora_trainer(
        tmp_path / "full", peft_model, accumulation=1, save_steps=4, sparsity_config=config, base_masks=sparsifier
    )
    trainer.train()
    assert checker.violations == []
    assert trainer.sparsifier.update_count >= (0 if method in FIXED_MASK_METHODS else 1)
    masks = canonical(trainer.masks)
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert abs((1 - kept / total) - trainer.sparsifier.target_sparsity()) <= len(masks) / total
    after = base_weights(peft_model)
    for name, mask in masks.items():
        assert torch.equal(after[name], before[name] * mask), name  # frozen base, only zeroed
        if method in ("gmp", "oneshot"):
            assert not torch.any(mask & ~base_masks[name]), name  # magnitude pruning never regrows
    # resuming from the step-4 checkpoint gives bitwise the same masks and adapters
    again, _ = sparse_base(sparsity=0.5)
    resumed, resumed_checker = _lora_trainer(
        tmp_path / "resumed", lora(again), accumulation=1, sparsity_config=make_config(method), base_masks=sparsifier
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-4"))
    assert resumed_checker.violations == []
    for name, mask in trainer.masks.items():
        assert torch.equal(resumed.masks[name], mask), name
    resumed_adapters = adapter_weights(resumed.model)
    assert all(torch.equal(w, resumed_adapters[n]) for n, w in adapter_weights(peft_model).items())

    result = merge_and_unload(peft_model, trainer, inputs=batch())
    assert result.sparsity == pytest.approx(trainer.sparsifier.sparsity, abs=0)
    for name, mask in result.masks.items():
        assert torch.equal(result.model.get_parameter(name) != 0, mask & (result.model.get_parameter(name) != 0))
        assert torch.all(result.model.get_parameter(name)[~mask] == 0)


@pytest.mark.parametrize("score_on", ["merged", "base"])
def test_pruning_scores_the_merged_weight(score_on):
    model, _ = sparse_base(sparsity=0.5)
    peft_model = lora(model)
    _lora_b_large(peft_model, scale=2.0)
    config = SparsityConfig(method="oneshot", sparsity=0.75, start=0)
    sparsifier = PeftSparsifier(peft_model, config, None, score_on=score_on)
    start = {n: m.clone() for n, m in sparsifier.masks.items()}
    layers = [m for m in peft_model.modules() if "default" in getattr(m, "lora_A", {})]
    scores = [
        (layer.get_base_layer().weight.detach() + (layer.get_delta_weight("default") if score_on == "merged" else 0)).abs()
        for layer in layers
    ]  # before begin() zeroes the newly pruned weights
    sparsifier.begin(total_steps=1)
    assert len(layers) == 4
    for layer, score in zip(layers, scores):
        weight = layer.get_base_layer().weight
        name = next(n for n, p in sparsifier.params.items() if p is weight)
        with torch.no_grad():
            score = torch.where(start[name], score, torch.full_like(score, -1.0))
        keep = int(sparsifier.masks[name].sum())
        assert keep == weight.numel() // 4
        expected = torch.zeros_like(score, dtype=torch.bool).view(-1)
        expected[torch.topk(score.view(-1), keep).indices] = True
        assert torch.equal(sparsifier.masks[name], expected.view_as(score)), (score_on, name)


# -- save / load -------------------------------------------------------------------------------------------
def test_adapter_and_merged_model_round_trip(trained, tmp_path):
    from transformers import AutoModelForSequenceClassification

    out = trained["out"]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()  # adapters saved as peft does
    saved, _ = masks_from_directory(out / "adapter")
    assert {canonical_name(n, PREFIX): m for n, m in saved.items()}.keys() == trained["masks"].keys()

    base = AutoModelForSequenceClassification.from_pretrained(str(out / "base"))
    reloaded = PeftModel.from_pretrained(base, str(out / "adapter"))
    for name, weight in adapter_weights(reloaded).items():
        assert torch.equal(weight, adapter_weights(trained["model"])[name]), name
    result = merge_and_unload(reloaded, out / "adapter")  # masks from the saved folder
    expected = merge_and_unload(copy.deepcopy(trained["model"]), trained["trainer"])
    for name in trained["masks"]:
        assert torch.equal(result.model.get_parameter(name), expected.model.get_parameter(name)), name

    result.save_pretrained(str(tmp_path / "merged"))
    trainer = SparseTrainer(model=result.model, args=training_args(tmp_path / "t"), base_masks=result.masks)
    trainer.save_model(str(tmp_path / "merged_by_trainer"))
    for folder in ("merged", "merged_by_trainer"):
        again = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / folder))
        masks, _ = masks_from_directory(tmp_path / folder)
        assert masks.keys() == result.masks.keys()
        for name, mask in result.masks.items():
            assert torch.equal(masks[name], mask)
            assert torch.equal(again.get_parameter(name), result.model.get_parameter(name))
            assert torch.all(again.get_parameter(name)[~mask] == 0)


# -- N:M bases -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["error", "keep_mask", "reproject"])
def test_nm_base_merge_policies(policy):
    model, sparsifier = sparse_base(pattern="2:4")
    peft_model = lora(model)
    _lora_b_large(peft_model)
    if policy == "error":
        with pytest.raises(ValueError, match="N:M.*nm='keep_mask'"):
            merge_and_unload(peft_model, sparsifier)
        with pytest.raises(ValueError, match="2:4"):  # detected from the zeros too
            merge_and_unload(peft_model)
        return
    result = merge_and_unload(peft_model, sparsifier, nm=policy)
    base = canonical(sparsifier.masks)
    assert result.sparsity == pytest.approx(0.5, abs=0)
    for name, mask in result.masks.items():
        assert torch.all(mask.reshape(-1, 4).sum(-1) == 2), name
        assert torch.all((result.model.get_parameter(name) != 0).reshape(-1, 4).sum(-1) <= 2), name
        if policy == "keep_mask":
            assert torch.equal(mask, base[name])
    moved = [n for n in result.delta_dropped if not torch.equal(result.masks[n], base[n])]
    assert bool(moved) == (policy == "reproject")


def test_kept_base_records_its_pattern_so_a_saved_folder_still_merges_as_nm(tmp_path):
    """Keeping base masks uses ``constant``; its config says what the base holds (2:4 found from the
    masks when no source declares it), so a folder saved by that run still declares N:M to the merge."""
    model, sparsifier = sparse_base(pattern="2:4")
    kept = PeftSparsifier(lora(copy.deepcopy(model)), None, None)  # masks from the exact zeros
    assert (kept.config.method, kept.config.pattern, kept.config.sparsity) == ("constant", "2:4", 0.5)
    unstructured = PeftSparsifier(lora(sparse_base()[0]), None, None)
    assert unstructured.config.pattern == "unstructured"
    assert unstructured.config.sparsity == pytest.approx(unstructured.sparsity, abs=1e-6)
    trainer = SparseTrainer(model=lora(model), args=training_args(tmp_path), base_masks=dict(sparsifier.masks))
    trainer.save_model(str(tmp_path / "saved"))
    masks, pattern = masks_from_directory(str(tmp_path / "saved"))
    assert pattern == "2:4" and set(canonical(masks)) == set(canonical(sparsifier.masks))


# -- errors ------------------------------------------------------------------------------------------------
def test_merge_into_dense_base_without_masks_is_an_error():
    peft_model = lora(tiny_bert())
    with pytest.raises(ValueError, match="masks are unknown"):
        merge_and_unload(peft_model)


def test_clear_errors(tmp_path):
    model, sparsifier = sparse_base()
    with pytest.raises(TypeError, match="peft model"):
        merge_and_unload(model)
    peft_model = lora(model)
    with pytest.raises(ValueError, match="nm must be one of"):
        merge_and_unload(peft_model, nm="dense")
    with pytest.raises(ValueError, match="name no parameter"):
        merge_and_unload(peft_model, {"encoder.other.weight": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(TypeError, match="base masks must be"):
        PeftSparsifier(peft_model, None, 42)
    with pytest.raises(ValueError, match="does not have"):
        PeftSparsifier(peft_model, None, {"bert.nothing.weight": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(ValueError, match="bool mask"):
        PeftSparsifier(peft_model, None, {n: m.float() * 2 for n, m in sparsifier.masks.items()})
    with pytest.raises(ValueError, match="no pruned weights"):
        SparseTrainer(model=lora(tiny_bert()), args=training_args(tmp_path))
    with pytest.raises(ValueError, match="no adapted layer has a known mask"):
        MaskedLoraDeltas(lora(tiny_bert()))
    dora = lora(sparse_base()[0], use_dora=True)
    with pytest.raises(TypeError, match="plain LoRA Linear"):
        MaskedLoraDeltas(dora)
    assert all("forward" not in m.__dict__ for m in dora.modules())  # nothing left half-patched


def test_gradient_growth_methods_are_refused_on_a_frozen_base(monkeypatch):
    class GrowsByGradient(GMP):
        needs_gradients = True

    import hf_sparse.sparsifier as engine

    monkeypatch.setattr(engine, "get_method_class", lambda name: GrowsByGradient)
    model, sparsifier = sparse_base()
    with pytest.raises(ValueError, match="frozen"):
        PeftSparsifier(lora(model), SparsityConfig(method="gmp"), sparsifier)


# -- masked deltas: the trained model is the masked merge ---------------------------------------------------
def test_masked_lora_deltas_make_the_merge_exact():
    model, sparsifier = sparse_base()
    peft_model = lora(model)
    _lora_b_large(peft_model)
    inputs = batch()
    peft_model.eval()
    with torch.no_grad():
        dense_logits = peft_model(**inputs).logits
    hooks = MaskedLoraDeltas(peft_model, sparsifier)
    assert len(hooks.layers) == 4
    peft_model.train()
    loss = peft_model(**inputs, labels=torch.zeros(len(inputs["input_ids"]), dtype=torch.long)).loss
    loss.backward()
    grads = [p.grad for n, p in peft_model.named_parameters() if "lora_" in n]
    assert len(grads) == 8 and all(g is not None and bool(torch.any(g != 0)) for g in grads)
    peft_model.eval()
    with torch.no_grad():
        masked_logits = peft_model(**inputs).logits
    assert float((masked_logits - dense_logits).abs().max()) > 1e-3  # the masked delta is a different model
    hooks.remove()
    with torch.no_grad():
        assert torch.equal(peft_model(**inputs).logits, dense_logits)  # peft's forward is back
    MaskedLoraDeltas(peft_model, sparsifier)
    result = merge_and_unload(peft_model, sparsifier, inputs=inputs)
    assert result.max_logit_diff < 1e-4  # merging changed nothing: it was trained as it is merged
    result.model.eval()
    with torch.no_grad():
        assert torch.allclose(result.model(**inputs).logits, masked_logits, atol=1e-4)
