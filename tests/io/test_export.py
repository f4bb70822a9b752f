"""save_sparse / load_sparse / load_masks: round trips, layouts, sizes, sharding and every error case."""

from __future__ import annotations

import json
import os
import struct
import warnings

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import hf_sparse
import hf_sparse.core.masks  # hf_sparse.<module>.* below; the package imports lazily
import hf_sparse.io.load
from hf_sparse.io import native_codec as native
from hf_sparse.io.native_format import FORMAT_VERSION

from ckpt_helpers import unbind_config
from helpers import tiny_bert
from export_helpers import assert_bitwise_equal, prune, state, tiny_resnet

LAYOUTS = [False, True, "compressed-tensors"]


def _save(model, path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return hf_sparse.save_sparse(model, path, **kw)


@pytest.mark.parametrize("compressed", LAYOUTS)
@pytest.mark.parametrize("make", [tiny_bert, tiny_resnet], ids=["bert", "resnet"])
def test_round_trip_bitwise(tmp_path, make, compressed):
    model = make()
    masks = prune(model, 0.9)
    expected = state(model)
    layout = _save(model, tmp_path, masks=masks, config=hf_sparse.SparsityConfig(sparsity=0.9), compressed=compressed)
    loaded, loaded_masks = hf_sparse.load_sparse(tmp_path)
    assert type(loaded) is type(model)
    assert_bitwise_equal(state(loaded), expected)
    assert set(loaded_masks) == set(masks)
    assert all(torch.equal(loaded_masks[k], masks[k]) for k in masks)
    assert all(torch.equal(m, n) for m, n in zip(hf_sparse.load_masks(tmp_path).values(), loaded_masks.values()))
    assert layout == {False: "dense", True: "native", "compressed-tensors": "compressed-tensors"}[compressed]


@pytest.mark.parametrize("compressed", LAYOUTS)
def test_round_trip_bf16_and_24(tmp_path, compressed):
    model = tiny_bert().to(torch.bfloat16)
    masks = prune(model, None)
    expected = state(model)
    _save(model, tmp_path, masks=masks, compressed=compressed)
    loaded, loaded_masks = hf_sparse.load_sparse(tmp_path)
    assert_bitwise_equal(state(loaded), expected)
    assert all(torch.equal(loaded_masks[k], masks[k]) for k in masks)
    if compressed is True:
        info = hf_sparse.io.load.describe(tmp_path)
        assert {r["encoding"] for r in info["layers"].values()} == {"2:4"}
        with safe_open(os.path.join(tmp_path, "model.sparse.safetensors"), "pt") as f:
            name = next(iter(masks))
            assert tuple(f.get_tensor(f"{name}.sparse_values").shape) == (masks[name].shape[0], masks[name].shape[1] // 2)
    if compressed == "compressed-tensors":
        config = json.load(open(os.path.join(tmp_path, "config.json")))
        assert config["quantization_config"]["sparsity_config"]["format"] == "sparse-24-bitmask"


def test_dense_layout_is_plain_transformers_with_metadata(tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = tiny_bert()
    masks = prune(model, 0.8)
    config = hf_sparse.SparsityConfig(sparsity=0.8)
    hf_sparse.save_sparse(model, tmp_path, masks=masks, config=config)
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert_bitwise_equal(state(plain), state(model))
    with safe_open(os.path.join(tmp_path, "model.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["hf_sparse_format_version"] == str(FORMAT_VERSION) and meta["hf_sparse_format"] == "dense"
    assert json.loads(meta["hf_sparse_sparsity_config"]) == config.to_dict()
    per_tensor = json.loads(meta["hf_sparse_tensor_sparsity"])
    assert set(per_tensor) == set(masks) and all(abs(v - 0.8) < 0.01 for v in per_tensor.values())
    assert os.path.isfile(os.path.join(tmp_path, "sparsity_config.json"))


def test_native_folder_makes_plain_transformers_fail_loudly(tmp_path):
    from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

    model = tiny_bert()
    prune(model, 0.9)
    hf_sparse.save_sparse(model, tmp_path, masks=None, compressed=True)
    assert not os.path.exists(os.path.join(tmp_path, "model.safetensors"))
    for loader in (AutoModelForSequenceClassification, BertForSequenceClassification):
        with pytest.raises(OSError, match="model.safetensors"):
            loader.from_pretrained(tmp_path)


def test_resave_in_other_layout_leaves_no_stale_weights(tmp_path):
    model = tiny_bert()
    prune(model, 0.9)
    hf_sparse.save_sparse(model, tmp_path)
    hf_sparse.save_sparse(model, tmp_path, compressed=True)
    assert not os.path.exists(os.path.join(tmp_path, "model.safetensors"))
    assert not os.path.exists(os.path.join(tmp_path, "sparse_masks.safetensors"))
    hf_sparse.save_sparse(model, tmp_path)
    assert not os.path.exists(os.path.join(tmp_path, "model.sparse.safetensors"))
    assert hf_sparse.io.load.detect_format(tmp_path) == "dense"


@pytest.mark.parametrize("compressed", LAYOUTS)
def test_kept_zeros_keep_their_mask(tmp_path, compressed):
    """A kept weight that is exactly 0 stays 'kept' (the mask, not W != 0, is what comes back)."""
    model = tiny_bert()
    masks = prune(model, 0.9)
    name = next(iter(masks))
    param = dict(model.named_parameters())[name]
    index = masks[name].view(-1).nonzero()[0, 0]
    with torch.no_grad():
        param.view(-1)[index] = 0.0
    _save(model, tmp_path, masks=masks, compressed=compressed)
    _, loaded = hf_sparse.load_sparse(tmp_path)
    assert bool(loaded[name].view(-1)[index])
    assert torch.equal(loaded[name], masks[name])


@pytest.mark.parametrize("compressed", LAYOUTS)
def test_sharded(tmp_path, compressed):
    model = tiny_bert()
    prune(model, 0.5)
    expected = state(model)
    _save(model, tmp_path, compressed=compressed, max_shard_size=20_000)
    index = {False: "model.safetensors.index.json", True: "model.sparse.safetensors.index.json",
             "compressed-tensors": "model.safetensors.index.json"}[compressed]
    weight_map = json.load(open(os.path.join(tmp_path, index)))["weight_map"]
    assert len(set(weight_map.values())) > 1
    loaded, _ = hf_sparse.load_sparse(tmp_path)
    assert_bitwise_equal(state(loaded), expected)


def test_native_sizes_meet_goals():
    """Linear weights fp32: <= 0.14x dense at 90%, <= 0.03x at 99%, <= 0.005x at 99.9%."""
    torch.manual_seed(0)
    weight = torch.randn(768, 3072)
    dense_bytes = weight.numel() * 4
    for sparsity, goal, expected_encoding in ((0.9, 0.14, "bitmask"), (0.99, 0.03, "index"), (0.999, 0.005, "index")):
        mask = hf_sparse.core.masks.topk_mask(weight.abs(), int(round(weight.numel() * (1 - sparsity))))
        encoding, parts = native.encode(weight * mask, mask)
        size = sum(t.numel() * t.element_size() for t in parts.values())
        assert encoding == expected_encoding
        assert size / dense_bytes <= goal, (sparsity, size / dense_bytes)
        back, back_mask = native.decode(encoding, list(weight.shape), parts)
        assert torch.equal(back, weight * mask) and torch.equal(back_mask, mask)


def test_native_file_is_much_smaller_than_dense(tmp_path):
    model = tiny_bert()
    prune(model, 0.99)
    hf_sparse.save_sparse(model, tmp_path / "dense")
    hf_sparse.save_sparse(model, tmp_path / "native", compressed=True)
    dense = os.path.getsize(tmp_path / "dense" / "model.safetensors")
    small = os.path.getsize(tmp_path / "native" / "model.sparse.safetensors")
    assert small < 0.5 * dense


def test_compressed_tensors_layout_warns(tmp_path):
    model = tiny_bert()
    prune(model, 0.9)
    with pytest.warns(UserWarning, match="transformers >= 5.10"):
        hf_sparse.save_sparse(model, tmp_path, compressed="compressed-tensors")


# -- errors ---------------------------------------------------------------------------------------


def test_error_bad_compressed_argument(tmp_path):
    with pytest.raises(ValueError, match="compressed must be"):
        hf_sparse.save_sparse(tiny_bert(), tmp_path, compressed="zip")


def test_error_mask_shape_mismatch_on_save(tmp_path):
    model = tiny_bert()
    masks = prune(model, 0.9)
    name = next(iter(masks))
    masks[name] = masks[name][:, :-1]
    with pytest.raises(ValueError, match="shape mismatch"):
        hf_sparse.save_sparse(model, tmp_path, masks=masks)


def test_error_mask_for_unknown_parameter(tmp_path):
    with pytest.raises(ValueError, match="names no parameter"):
        hf_sparse.save_sparse(tiny_bert(), tmp_path, masks={"nope.weight": torch.ones(2, 2, dtype=torch.bool)})


@pytest.mark.parametrize("compressed", [True, "compressed-tensors"])
def test_error_weights_outside_mask(tmp_path, compressed):
    model = tiny_bert()
    masks = prune(model, 0.9)
    name = next(iter(masks))
    with torch.no_grad():
        dict(model.named_parameters())[name].fill_(1.0)
    with pytest.raises(ValueError, match="mask is False"):
        _save(model, tmp_path, masks=masks, compressed=compressed)


def test_error_mask_shape_mismatch_on_load(tmp_path):
    model = tiny_bert()
    masks = prune(model, 0.9)
    hf_sparse.save_sparse(model, tmp_path, masks=masks)
    path = os.path.join(tmp_path, "sparse_masks.safetensors")
    packed = load_file(path)
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    shapes = json.loads(meta["hf_sparse_mask_shapes"])
    name = next(iter(shapes))
    shapes[name] = [shapes[name][0] * 2, shapes[name][1]]
    packed[name] = torch.cat([packed[name], packed[name]])
    meta.pop("hf_sparse_crc32")  # without checksums, the mask-vs-weight shape check is what catches it
    save_file(packed, path, metadata={**meta, "hf_sparse_mask_shapes": json.dumps(shapes)})
    with pytest.raises(ValueError, match="shape mismatch"):
        hf_sparse.load_sparse(tmp_path)


@pytest.mark.parametrize("compressed", LAYOUTS)
def test_error_truncated_file(tmp_path, compressed):
    model = tiny_bert()
    prune(model, 0.9)
    _save(model, tmp_path, compressed=compressed)
    name = "model.sparse.safetensors" if compressed is True else "model.safetensors"
    path = os.path.join(tmp_path, name)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size - 100)
    with pytest.raises(ValueError, match="corrupt or truncated"):
        hf_sparse.load_sparse(tmp_path)


def test_error_corrupt_header(tmp_path):
    model = tiny_bert()
    prune(model, 0.9)
    hf_sparse.save_sparse(model, tmp_path, compressed=True)
    path = os.path.join(tmp_path, "model.sparse.safetensors")
    with open(path, "r+b") as f:
        f.seek(8)
        f.write(b"#garbage#")
    with pytest.raises(ValueError, match="corrupt or truncated"):
        hf_sparse.load_sparse(tmp_path)


def _set_metadata(path, **changes):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        rest = f.read()
    header["__metadata__"].update(changes)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)) + encoded + rest)


@pytest.mark.parametrize("compressed", LAYOUTS)
def test_error_newer_format_version(tmp_path, compressed):
    model = tiny_bert()
    prune(model, 0.9)
    _save(model, tmp_path, compressed=compressed)
    name = "model.sparse.safetensors" if compressed is True else "model.safetensors"
    _set_metadata(os.path.join(tmp_path, name), hf_sparse_format_version=str(FORMAT_VERSION + 1))
    with pytest.raises(ValueError, match="newer hf_sparse"):
        hf_sparse.load_sparse(tmp_path)


def test_error_corrupt_values_count(tmp_path):
    model = tiny_bert()
    masks = prune(model, 0.9)
    hf_sparse.save_sparse(model, tmp_path, compressed=True)
    path = os.path.join(tmp_path, "model.sparse.safetensors")
    tensors = load_file(path)
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    key = f"{next(iter(masks))}.sparse_values"
    tensors[key] = tensors[key][:-1]
    save_file(tensors, path, metadata=meta)
    with pytest.raises(ValueError, match="corrupt"):
        hf_sparse.load_sparse(tmp_path)


def test_error_architecture_not_allowed(tmp_path):
    model = tiny_bert()
    prune(model, 0.9)
    hf_sparse.save_sparse(model, tmp_path, compressed=True)
    unbind_config(tmp_path)  # as another tool's folder: the binding would refuse the edit before the allow-list
    config_path = os.path.join(tmp_path, "config.json")
    config = json.load(open(config_path))
    for bad in ("os.system", "Trainer", "__import__"):
        config["architectures"] = [bad]
        json.dump(config, open(config_path, "w"))
        with pytest.raises(ValueError, match="not a transformers PreTrainedModel"):
            hf_sparse.load_sparse(tmp_path)
    config["architectures"] = ["BertForSequenceClassification"]
    config["auto_map"] = {"AutoModel": "evil.Model"}
    json.dump(config, open(config_path, "w"))
    with pytest.raises(ValueError, match="remote code"):
        hf_sparse.load_sparse(tmp_path)
    # an explicit class is the way out
    loaded, _ = hf_sparse.load_sparse(tmp_path, model_class=type(model))
    assert_bitwise_equal(state(loaded), state(model))


def test_error_index_points_outside_folder(tmp_path):
    model = tiny_bert()
    prune(model, 0.5)
    hf_sparse.save_sparse(model, tmp_path, compressed=True, max_shard_size=20_000)
    index_path = os.path.join(tmp_path, "model.sparse.safetensors.index.json")
    index = json.load(open(index_path))
    key = next(iter(index["weight_map"]))
    index["weight_map"][key] = "../../etc/passwd.safetensors"
    json.dump(index, open(index_path, "w"))
    with pytest.raises(ValueError, match="invalid shard file"):
        hf_sparse.load_sparse(tmp_path)


def test_error_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no safetensors weights"):
        hf_sparse.load_sparse(tmp_path)
    with pytest.raises(FileNotFoundError):
        hf_sparse.load_sparse(tmp_path / "missing")


def test_error_wrong_model_class(tmp_path):
    model = tiny_bert()
    prune(model, 0.9)
    hf_sparse.save_sparse(model, tmp_path, compressed=True)
    with pytest.raises(ValueError, match="the model does not have|lacks tensors the model needs"):
        hf_sparse.load_sparse(tmp_path, model=tiny_resnet())


def test_error_quantized_compressed_tensors_folder(tmp_path):
    model = tiny_bert()
    prune(model, 0.9)
    _save(model, tmp_path, compressed="compressed-tensors")
    config_path = os.path.join(tmp_path, "config.json")
    config = json.load(open(config_path))
    config["quantization_config"]["config_groups"] = {"group_0": {"targets": ["Linear"]}}
    json.dump(config, open(config_path, "w"))
    with pytest.raises(ValueError, match="quantized"):
        hf_sparse.load_sparse(tmp_path)


def test_load_masks_of_plain_folder_is_an_error(tmp_path):
    tiny_bert().save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no hf_sparse masks"):
        hf_sparse.load_masks(tmp_path)
    model, masks = hf_sparse.load_sparse(tmp_path)  # falls back to weight != 0
    assert masks and all(bool(m.all()) for m in masks.values())


def test_load_into_plain_module(tmp_path):
    from helpers import TinyMLP

    model = TinyMLP()
    masks = prune(model, 0.9)
    for compressed in (False, True):
        hf_sparse.save_sparse(model, tmp_path / str(compressed), masks=masks, compressed=compressed)
        loaded, loaded_masks = hf_sparse.load_sparse(tmp_path / str(compressed), model=TinyMLP())
        assert_bitwise_equal(state(loaded), state(model))
        assert all(torch.equal(loaded_masks[k], masks[k]) for k in masks)
