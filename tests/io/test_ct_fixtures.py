"""Files written by the REAL compressed-tensors 0.14.0.1 (tests/fixtures/compressed_tensors/generate.py).

(a) hf_sparse reads them bitwise exactly; (b) hf_sparse's writer produces the same tensors (names,
dtypes, shapes, values) and the same quantization_config block for the same input.
"""

from __future__ import annotations

import json
import os
import warnings

import pytest
import torch
from safetensors.torch import load_file

import hf_sparse
import hf_sparse.io.load  # hf_sparse.io.load.* below; the package imports lazily
from hf_sparse.io import ct_layout

from export_helpers import assert_bitwise_equal, bits, state

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "compressed_tensors")
CASES = ["bert_bitmask_fp32", "bert_bitmask_bf16", "bert_24_fp32", "resnet_bitmask_fp32"]


def _fixture(name):
    folder = os.path.join(FIXTURES, name)
    reference = load_file(os.path.join(folder, "reference.safetensors"))
    expected = {k: ct_layout.normalise_zeros(v) if v.is_floating_point() else v for k, v in reference.items()}
    return folder, reference, expected


@pytest.mark.parametrize("name", CASES)
def test_fixture_read_bitwise(name):
    folder, reference, expected = _fixture(name)
    assert json.load(open(os.path.join(folder, "versions.json")))["compressed_tensors"] == "0.14.0.1"
    assert hf_sparse.io.load.detect_format(folder) == "compressed-tensors"
    decoded, masks = ct_layout.decode_state(load_file(os.path.join(folder, "model.safetensors")))
    assert masks, "no compressed module found"
    # weights the writer compressed: -0.0 -> +0.0 except where compressed-tensors' 2:4 kept a zero
    for key in masks:
        kept_neg_zero = masks[key] & (bits(reference[key]) == bits(torch.tensor(-0.0, dtype=reference[key].dtype)))
        want = torch.where(kept_neg_zero, reference[key], expected[key])
        assert torch.equal(bits(decoded[key]), bits(want)), key
    model, loaded_masks = hf_sparse.load_sparse(folder)
    got = state(model)
    for key in reference:
        if key in masks:
            assert torch.equal(bits(got[key]), bits(decoded[key])), key
        else:
            assert torch.equal(bits(got[key]), bits(reference[key])), key
    assert set(loaded_masks) == set(masks)


@pytest.mark.parametrize("name", CASES)
def test_writer_matches_compressed_tensors(name, tmp_path):
    folder, reference, expected = _fixture(name)
    theirs = load_file(os.path.join(folder, "model.safetensors"))
    block = json.load(open(os.path.join(folder, "config.json")))["quantization_config"]
    fmt = block["sparsity_config"]["format"]
    compressed = {k[: -len(".bitmask")] for k in theirs if k.endswith(".bitmask")}
    ours = {}
    for key, value in expected.items():
        prefix = key[: -len(".weight")]
        ours.update(ct_layout.encode(prefix, value, fmt) if prefix in compressed else {key: value})
    assert set(ours) == set(theirs)
    for key in theirs:
        assert ours[key].dtype == theirs[key].dtype and ours[key].shape == theirs[key].shape, key
        # numeric equality; ours never writes -0.0 into values (compressed-tensors may, in a 2:4 slot)
        assert torch.equal(ours[key], theirs[key]), key
        if key.endswith(".compressed"):
            assert not bool((bits(ours[key]) == bits(torch.tensor(-0.0, dtype=ours[key].dtype))).any())


def test_save_sparse_writes_the_same_folder_as_compressed_tensors(tmp_path):
    """Whole-folder check: save_sparse on the fixture's model gives the same tensors and config block."""
    folder, reference, expected = _fixture("bert_bitmask_fp32")
    model, masks = hf_sparse.load_sparse(folder)
    with pytest.warns(UserWarning, match="transformers >= 5.10"):  # the fixture's masks include the pooler, which
        hf_sparse.save_sparse(model, tmp_path, masks=masks, compressed="compressed-tensors")  # hf_sparse leaves dense
    theirs = load_file(os.path.join(folder, "model.safetensors"))
    ours = load_file(os.path.join(tmp_path, "model.safetensors"))
    assert set(ours) == set(theirs)
    for key in theirs:
        assert ours[key].dtype == theirs[key].dtype and torch.equal(ours[key], theirs[key]), key
    their_block = json.load(open(os.path.join(folder, "config.json")))["quantization_config"]
    our_block = json.load(open(os.path.join(tmp_path, "config.json")))["quantization_config"]
    assert our_block["sparsity_config"]["format"] == their_block["sparsity_config"]["format"]
    assert our_block["sparsity_config"]["targets"] == their_block["sparsity_config"]["targets"]
    assert set(our_block) == set(their_block) and set(our_block["sparsity_config"]) == set(their_block["sparsity_config"])
    assert our_block["quant_method"] == "compressed-tensors" and our_block["version"] == "0.14.0.1"
    # the classifier stays dense: both writers keep it out of the targets
    assert "classifier.weight" in ours and "classifier" in our_block["sparsity_config"]["ignore"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again, _ = hf_sparse.load_sparse(tmp_path)
    assert_bitwise_equal(state(again), state(model))
