"""hf_sparse.prune on tiny models: block-by-block calibration, exact sparsity, masks the trainer reads."""

from __future__ import annotations

import copy

import pytest
import torch
from oneshot_helpers import relative_error, tiny_bert_encoder, tiny_gpt2, tiny_llama, token_batches

import hf_sparse
from hf_sparse.core.targets import find_targets
from hf_sparse.io.existing_masks import read_masks
from hf_sparse.oneshot.calibration import find_blocks

METHODS = ("magnitude", "wanda", "sparsegpt")


def last_hidden(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, output_hidden_states=True).hidden_states[-1]


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_held_out_error_sparsegpt_below_wanda_below_magnitude(pattern):
    """The published order, on a tiny Llama's final hidden states for tokens not used to calibrate."""
    dense, calibration = tiny_llama(), token_batches()
    held_out = token_batches(n=1, seed=7)[0]["input_ids"]
    reference = last_hidden(dense, held_out)
    errors = {}
    for method in METHODS:
        model = copy.deepcopy(dense)
        hf_sparse.prune(model, pattern=pattern, method=method, calibration=calibration)
        errors[method] = relative_error(reference, last_hidden(model, held_out))
    assert errors["sparsegpt"] < errors["wanda"] < errors["magnitude"], errors


def test_first_block_layer_errors_follow_the_same_order():
    """Block 0's layers see the same inputs under every method: compare each layer's output error."""
    dense, calibration = tiny_llama(seed=1), token_batches(seed=11)
    inputs = {}
    layers = {n: m for n, m in dense.named_modules() if n.startswith("model.layers.0.") and isinstance(m, torch.nn.Linear)}
    handles = [m.register_forward_hook(lambda mod, a, o, n=n: inputs.setdefault(n, []).append(a[0].detach())) for n, m in layers.items()]
    for batch in calibration:
        dense(**batch)
    for h in handles:
        h.remove()
    totals = {}
    for method in METHODS:
        model = copy.deepcopy(dense)
        hf_sparse.prune(model, method=method, calibration=calibration)
        pruned = dict(model.named_modules())
        totals[method] = sum(
            relative_error(torch.cat([layers[n](x) for x in xs]), torch.cat([pruned[n](x) for x in xs]))
            for n, xs in inputs.items()
        )
    assert totals["sparsegpt"] < totals["wanda"] < totals["magnitude"], totals


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2, tiny_bert_encoder], ids=["llama", "gpt2-conv1d", "bert"])
@pytest.mark.parametrize("method", METHODS)
def test_two_four_is_exact_along_the_input_dimension(build, method):
    model = build()
    masks = hf_sparse.prune(model, pattern="2:4", method=method, calibration=token_batches(n=2))
    targets = find_targets(model)
    assert set(masks) == {t.name for t in targets}
    for t in targets:
        groups = masks[t.name].movedim(t.in_dim, -1).reshape(-1, 4)
        assert torch.equal(groups.sum(1), torch.full((groups.shape[0],), 2)), t.name
        assert torch.all(t.param[~masks[t.name]] == 0), t.name


@pytest.mark.parametrize("method", METHODS)
def test_unstructured_half_and_masks_attached_for_the_trainer(method):
    model = tiny_llama()
    masks = hf_sparse.prune(model, sparsity=0.5, method=method, calibration=token_batches(n=2))
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert abs(1 - mask.float().mean().item() - 0.5) < 1e-9, name
        assert torch.all(params[name][~mask] == 0)
        assert torch.all(params[name][mask] != 0)
    attached = read_masks(model)
    assert set(attached) == set(masks) and all(torch.equal(attached[n], masks[n]) for n in masks)


def test_wanda_keeps_the_same_count_in_every_output_row():
    model = tiny_llama()
    masks = hf_sparse.prune(model, sparsity=0.75, method="wanda", calibration=token_batches(n=2))
    for name, mask in masks.items():
        assert torch.all(mask.sum(1) == mask.shape[1] // 4), name


def test_sparsegpt_changes_kept_weights_and_no_others():
    dense = tiny_llama()
    model = copy.deepcopy(dense)
    masks = hf_sparse.prune(model, method="sparsegpt", calibration=token_batches(n=2))
    before, after = dict(dense.named_parameters()), dict(model.named_parameters())
    for name, p in after.items():
        if name in masks:
            assert not torch.equal(p[masks[name]], before[name][masks[name]]), name
        else:
            assert torch.equal(p, before[name]), name  # embeddings, norms and the head are untouched


def test_padding_tokens_do_not_count():
    """A padded batch (attention_mask 0 on garbage tokens at the end) gives Wanda the statistics of the unpadded one."""
    ids = token_batches(n=1, batch=1, length=48)[0]["input_ids"]
    padded = torch.cat([ids, torch.randint(0, 128, (1, 16), generator=torch.Generator().manual_seed(5))], 1)
    mask = torch.cat([torch.ones(1, 48), torch.zeros(1, 16)], 1).long()
    a, b = tiny_llama(), tiny_llama()
    masks_a = hf_sparse.prune(a, method="wanda", calibration=[{"input_ids": ids}])
    masks_b = hf_sparse.prune(b, method="wanda", calibration=[{"input_ids": padded, "attention_mask": mask}])
    assert all(torch.equal(masks_a[n], masks_b[n]) for n in masks_a)
    masks_c = hf_sparse.prune(tiny_llama(), method="wanda", calibration=[{"input_ids": padded}])
    assert any(not torch.equal(masks_a[n], masks_c[n]) for n in masks_a)  # the mask is what made the difference


def test_layers_outside_the_blocks_are_calibrated_after_them():
    model = tiny_bert_encoder()
    assert find_blocks(model)[0] == "bert.encoder.layer"
    masks = hf_sparse.prune(model, method="sparsegpt", targets=[r"pooler\.dense", r"layer\.1\.output\.dense"],
                            calibration=token_batches(n=2))
    assert set(masks) == {"bert.pooler.dense.weight", "bert.encoder.layer.1.output.dense.weight"}
    assert all(abs(m.float().mean().item() - 0.5) < 0.01 for m in masks.values())


def test_magnitude_needs_no_data_and_handles_convolutions():
    from transformers import ResNetConfig, ResNetForImageClassification

    model = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic"))
    masks = hf_sparse.prune(model, sparsity=0.9)
    assert masks and all(abs(1 - m.float().mean().item() - 0.9) < 0.01 for m in masks.values())
    with pytest.raises(ValueError, match="nn.Linear"):
        hf_sparse.prune(model, method="wanda", calibration=[torch.zeros(1, 3, 8, 8)])


def test_bad_requests_are_refused_with_the_field_named(monkeypatch):
    model = tiny_llama()
    with pytest.raises(ValueError, match="calibration"):
        hf_sparse.prune(model, method="sparsegpt")
    with pytest.raises(ValueError, match="method must be one of"):
        hf_sparse.prune(model, method="obs")
    with pytest.raises(ValueError, match="fixes sparsity"):
        hf_sparse.prune(model, sparsity=0.7, pattern="2:4")
    with pytest.raises(ValueError, match="sparsity"):
        hf_sparse.prune(model, sparsity=1.0)
    from hf_sparse.core import distributed

    monkeypatch.setattr(distributed, "is_sharded", lambda t: True)
    with pytest.raises(ValueError, match="FSDP2"):
        hf_sparse.prune(model, method="wanda", calibration=token_batches(n=1))


def test_training_mode_and_cache_setting_are_restored():
    model = tiny_llama().train()
    hf_sparse.prune(model, method="wanda", calibration=token_batches(n=1))
    assert model.training and model.config.use_cache


def test_device_and_blocks_arguments():
    """``device`` moves each block there for its turn (here the CPU itself: the same masks); ``blocks`` names the stack."""
    calibration = token_batches(n=1)
    plain = hf_sparse.prune(tiny_llama(), method="sparsegpt", calibration=calibration)
    moved_model = tiny_llama()
    moved = hf_sparse.prune(moved_model, method="sparsegpt", calibration=calibration, device="cpu", blocks="model.layers")
    assert all(torch.equal(plain[n], moved[n]) for n in plain)
    assert all(p.device.type == "cpu" for p in moved_model.parameters())
    with pytest.raises(ValueError, match="names no module"):
        hf_sparse.prune(tiny_llama(), method="wanda", calibration=calibration, blocks="model.blocks")
