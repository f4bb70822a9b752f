"""One test per defect of issue 17 ("12 ways to get wrong weights or masks with no error").

Each failed on the code before the issue (the reason is in its docstring): the old loaders
returned wrong weights or masks, or crashed with a raw exception.
"""

from __future__ import annotations

import json
import os
import time

import pytest
import torch

import hf_sparse
from hf_sparse.__main__ import main
from hf_sparse.io.training_state import KEY_STATE, STATE_FILE, load_sparsity_state, save_sparsity_state, validate_state

from ckpt_helpers import edit_header, files_of, masks_equal, metadata_of, rewrite, save, unbind_config
from helpers import tiny_bert
from export_helpers import assert_bitwise_equal, prune, state


def _config(path) -> dict:
    return json.loads((path / "config.json").read_text())


def test_1_compressed_tensors_without_config_block_is_refused(tmp_path):
    """Old: load_sparse built a dense model and ignored the compressed tensors: random weights, all-True masks."""
    model = tiny_bert()
    prune(model, 0.9)
    save(model, tmp_path, compressed="compressed-tensors")
    config = _config(tmp_path)
    config.pop("quantization_config")
    (tmp_path / "config.json").write_text(json.dumps(config))
    for call in (hf_sparse.load_sparse, hf_sparse.load_masks, hf_sparse.io.load.describe):
        with pytest.raises(ValueError, match="no compressed-tensors quantization_config"):
            call(tmp_path)
    assert main(["inspect", str(tmp_path)]) == 2


def test_2_resave_with_other_sharding_replaces_every_file(tmp_path):
    """Old: the stale index of a sharded save survived a single-file save (load failed), and the
    other order loaded a's weights with b's masks."""
    a, b = tiny_bert(seed=1), tiny_bert(seed=2)
    masks_a, masks_b = prune(a, 0.5), prune(b, 0.9)
    hf_sparse.save_sparse(a, tmp_path / "x", masks=masks_a, max_shard_size="20KB")
    hf_sparse.save_sparse(b, tmp_path / "x", masks=masks_b)
    hf_sparse.save_sparse(b, tmp_path / "y", masks=masks_b)
    hf_sparse.save_sparse(a, tmp_path / "y", masks=masks_a, max_shard_size="20KB")
    for folder, model, masks in ((tmp_path / "x", b, masks_b), (tmp_path / "y", a, masks_a)):
        loaded, loaded_masks = hf_sparse.load_sparse(folder)
        assert_bitwise_equal(state(loaded), state(model))
        assert masks_equal(loaded_masks, masks)
        plain = type(model).from_pretrained(folder)
        assert_bitwise_equal(state(plain), state(model))
    assert not any(n.startswith("model-") for n in os.listdir(tmp_path / "x"))
    assert "model.safetensors" not in os.listdir(tmp_path / "y")


def test_3_missing_targeted_weight_in_dense_layout_is_refused(tmp_path):
    """Old: from_pretrained filled the deleted weight with random values and load_sparse returned it."""
    model = tiny_bert()
    masks = prune(model, 0.9)
    hf_sparse.save_sparse(model, tmp_path, masks=masks)
    name = next(iter(masks))

    def drop(tensors, metadata):
        del tensors[name]
        metadata.pop("hf_sparse_crc32", None)

    rewrite(tmp_path / "model.safetensors", drop)
    with pytest.raises(ValueError, match="lacks tensors the model needs"):
        hf_sparse.load_sparse(tmp_path)


def test_4_save_pretrained_over_a_sparse_folder_is_refused(tmp_path):
    """Old: native weights won over a newer model.safetensors; a's masks were paired with b's weights;
    a stray masks file overrode the exact masks of native weights."""
    a, b = tiny_bert(seed=1), tiny_bert(seed=2)
    prune(a, 0.9)
    hf_sparse.save_sparse(a, tmp_path / "native", compressed=True)
    b.save_pretrained(tmp_path / "native")
    with pytest.raises(ValueError, match="two saves mixed"):
        hf_sparse.load_sparse(tmp_path / "native")
    hf_sparse.save_sparse(a, tmp_path / "dense")
    b.save_pretrained(tmp_path / "dense")
    with pytest.raises(ValueError, match="belongs to another save"):
        hf_sparse.load_sparse(tmp_path / "dense")
    hf_sparse.save_sparse(a, tmp_path / "stray", compressed=True)
    hf_sparse.save_sparse(a, tmp_path / "masks")
    os.replace(tmp_path / "masks" / "sparse_masks.safetensors", tmp_path / "stray" / "sparse_masks.safetensors")
    with pytest.raises(ValueError, match="stray"):
        hf_sparse.load_sparse(tmp_path / "stray")


def _kept_zero(model, masks) -> None:
    name = next(iter(masks))
    with torch.no_grad():  # a kept zero: only a masks file knows it is kept
        dict(model.named_parameters())[name].view(-1)[masks[name].view(-1).nonzero()[0, 0]] = 0.0


@pytest.mark.parametrize("compressed,fail_in", [(False, "weights"), (True, "weights"), ("compressed-tensors", "weights"),
                                                (False, "masks"), ("compressed-tensors", "masks")])
def test_5_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, compressed, fail_in):
    """Old: a failed native/compressed-tensors save had deleted the old weights first (only config.json
    left); a failed masks write left weights whose next load derived masks from weight != 0."""
    old = tiny_bert(seed=1)
    masks = prune(old, 0.9)
    _kept_zero(old, masks)
    save(old, tmp_path, masks=masks, compressed=compressed)
    before = files_of(tmp_path)
    new = tiny_bert(seed=2)
    new_masks = prune(new, 0.5)
    _kept_zero(new, new_masks)
    import hf_sparse.io.native_format as native_format
    import hf_sparse.io.save as save_module
    import hf_sparse.io.writers as writers

    def boom(*args, **kwargs):
        raise OSError("disk full")

    if fail_in == "masks":
        monkeypatch.setattr(native_format, "save_sharded", boom)  # the masks writer
        monkeypatch.setattr(writers, "save_masks", boom)
    else:  # raising=False: the same test runs against older code, whose writer functions differ
        monkeypatch.setattr(writers, "save_sharded", boom)
        monkeypatch.setattr(save_module, "_write_dense_weights", boom)
    with pytest.raises(OSError, match="disk full"):
        save(new, tmp_path, compressed=compressed, masks=new_masks)
    monkeypatch.undo()
    assert files_of(tmp_path) == before
    loaded, loaded_masks = hf_sparse.load_sparse(tmp_path)
    assert_bitwise_equal(state(loaded), state(old))
    assert masks_equal(loaded_masks, masks)


def test_6_alias_to_an_untied_weight_is_refused(tmp_path):
    """Old: hf_sparse_aliases suppressed the missing-tensor check; an untied model got a random decoder."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    config = BertConfig(vocab_size=48, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=16)
    model = BertForMaskedLM(config)
    prune(model, 0.5)
    hf_sparse.save_sparse(model, tmp_path, compressed=True)
    loaded, _ = hf_sparse.load_sparse(tmp_path)  # tied: the alias is checked and holds
    assert_bitwise_equal(state(loaded), state(model))
    data = _config(tmp_path)
    data["tie_word_embeddings"] = False
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="'tie_word_embeddings' is False but .* was saved with True"):
        hf_sparse.load_sparse(tmp_path)  # config.json is bound to the weights (issue 25)
    from hf_sparse.io.native_format import KEY_MODEL_CONFIG

    edit_header(tmp_path / "model.sparse.safetensors", lambda h: h["__metadata__"].pop(KEY_MODEL_CONFIG))
    with pytest.raises(ValueError, match="does not tie them"):  # without that binding, the alias check holds
        hf_sparse.load_sparse(tmp_path)


@pytest.mark.parametrize("compressed", [False, True])
def test_7_retyped_header_is_refused(tmp_path, compressed):
    """Old: F32 -> I32 in a header loaded values around 1e9 (dtypes were never compared with the model)."""
    model = tiny_bert()
    prune(model, 0.9)
    hf_sparse.save_sparse(model, tmp_path, compressed=compressed)
    path = tmp_path / ("model.sparse.safetensors" if compressed else "model.safetensors")
    name = "bert.embeddings.LayerNorm.weight"

    def retype(header):
        header[name]["dtype"] = "I32"
        header["__metadata__"].pop("hf_sparse_crc32", None)  # as a tool that rewrites headers would leave it

    edit_header(path, retype)
    with pytest.raises(ValueError, match=f"{name} is stored as torch.int32"):
        hf_sparse.load_sparse(tmp_path)


def test_8_header_shapes_are_checked_before_allocation(tmp_path):
    """Old: the index encoding allocated what the header said (34 KB -> 4 GB); hidden_size=10**6 in
    config.json built a 4 TB model."""
    model = tiny_bert()
    masks = prune(model, 0.995)
    hf_sparse.save_sparse(model, tmp_path, compressed=True)
    path = tmp_path / "model.sparse.safetensors"
    name = next(iter(masks))
    encodings = json.loads(metadata_of(path)["hf_sparse_encodings"])
    assert encodings[name]["encoding"] == "index"
    encodings[name]["shape"] = [encodings[name]["shape"][0], 2**31]
    edit_header(path, lambda h: h["__metadata__"].update(hf_sparse_encodings=json.dumps(encodings)))
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"\[32, 2147483648\] in the file but \[32, 32\] in the model"):
        hf_sparse.load_sparse(tmp_path)
    hf_sparse.save_sparse(model, tmp_path / "big", compressed=True)
    data = _config(tmp_path / "big")
    data["hidden_size"] = 10**6
    (tmp_path / "big" / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="'hidden_size' is 1000000 but .* was saved with 32"):
        hf_sparse.load_sparse(tmp_path / "big")  # config.json is bound to the weights (issue 25)
    unbind_config(tmp_path / "big")
    with pytest.raises(ValueError, match="in the file but .* in the model"):
        hf_sparse.load_sparse(tmp_path / "big")
    assert time.perf_counter() - start < 10  # nothing of the asked size was allocated


def test_9_state_and_masks_of_different_saves_are_refused(tmp_path):
    """Old: the state was two files (JSON + tensors); a crash between them mixed step/config of one
    save with masks of another. Now it is one file, and it names the masks file's save."""
    first = {"step": 4, "started": True, "pending_update": False, "masks": {"w": torch.tensor([True, False])}}
    second = {**first, "step": 8, "masks": {"w": torch.tensor([False, True])}}
    save_sparsity_state(str(tmp_path / "a"), first, {"method": "gmp"})
    save_sparsity_state(str(tmp_path / "b"), second, {"method": "gmp"})
    assert sorted(os.listdir(tmp_path / "a")) == ["sparse_masks.safetensors", STATE_FILE]
    loaded, _ = load_sparsity_state(str(tmp_path / "a"))
    assert loaded["step"] == 4 and torch.equal(loaded["masks"]["w"], first["masks"]["w"])
    os.replace(tmp_path / "b" / "sparse_masks.safetensors", tmp_path / "a" / "sparse_masks.safetensors")
    with pytest.raises(ValueError, match="not from the same save"):
        load_sparsity_state(str(tmp_path / "a"))


def test_10_resume_state_is_validated(tmp_path):
    """Old: a float mask with NaN (or uint8 {1, 2}) became all-True; initial_sparsity=5.0 changed the masks."""
    good = {"step": 4, "started": True, "pending_update": False, "masks": {"w": torch.tensor([True, False])},
            "method": {"initial_sparsity": 0.5}}
    validate_state(good, "state")
    for bad_mask in (torch.tensor([float("nan"), 0.0]), torch.tensor([1, 2], dtype=torch.uint8)):
        with pytest.raises(ValueError, match="must be a bool tensor"):
            validate_state({**good, "masks": {"w": bad_mask}}, "state")
    with pytest.raises(ValueError, match="mask shapes do not match"):
        validate_state(good, "state", expected_masks={"w": torch.Size([3])})
    renamed = {("steps" if k == "step" else k): v for k, v in good.items()}  # a flipped byte in a key name
    with pytest.raises(ValueError, match=r"lacks \['step'\] or holds unknown keys \['steps'\]"):
        validate_state(renamed, "state", expected_masks={"w": torch.Size([2])})
    save_sparsity_state(str(tmp_path), good, {})
    path = tmp_path / STATE_FILE

    def out_of_range(header):
        document = json.loads(header["__metadata__"][KEY_STATE])
        document["state"]["method"]["initial_sparsity"] = 5.0
        header["__metadata__"][KEY_STATE] = json.dumps(document)

    edit_header(path, out_of_range)
    with pytest.raises(ValueError, match=r"'initial_sparsity' must be a sparsity in \[0, 1\), got 5.0"):
        load_sparsity_state(str(tmp_path))
    with pytest.raises(ValueError, match="bool tensor .* or hold only 0 and 1"):
        hf_sparse.save_sparse(tiny_bert(), tmp_path / "nan", masks={
            "bert.pooler.dense.weight": torch.full((32, 32), float("nan"))})


def test_11_inspect_of_a_plain_folder_is_not_100_percent(tmp_path, capsys):
    """Old: a folder without masks gave an empty table and 'total 100.00%'."""
    model = tiny_bert()
    prune(model, 0.5)
    model.save_pretrained(tmp_path)
    assert main(["inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    total = [line for line in out.splitlines() if line.startswith("total")][0]
    assert "50.00%" in total and "exact zeros" in out


def test_12_index_and_shard_tricks_are_refused(tmp_path):
    """Old: unsorted column indices decoded into wrong columns; a tensor duplicated into a later shard
    silently won; the format version was read from merged metadata (shard 2 saying 99 was ignored)."""
    from hf_sparse.io import native_codec as native

    weight = torch.zeros(2, 8)
    weight[0, 1], weight[0, 5], weight[1, 2] = 1.0, 2.0, 3.0
    encoding, parts = native.encode(weight, weight != 0, "index")
    parts["col_indices"] = parts["col_indices"][[1, 0, 2]]
    with pytest.raises(ValueError, match="not strictly increasing"):
        native.decode(encoding, [2, 8], parts, "w")

    model = tiny_bert()
    prune(model, 0.5)
    hf_sparse.save_sparse(model, tmp_path / "dup", max_shard_size="20KB")
    index = json.loads((tmp_path / "dup" / "model.safetensors.index.json").read_text())["weight_map"]
    first, last = sorted(set(index.values()))[0], sorted(set(index.values()))[-1]
    key = next(k for k, f in index.items() if f == first)
    rewrite(tmp_path / "dup" / last, lambda t, m: t.update({key: torch.zeros_like(state(model)[key])}))
    with pytest.raises(ValueError, match="index.json names"):
        hf_sparse.load_sparse(tmp_path / "dup")

    hf_sparse.save_sparse(model, tmp_path / "ver", compressed=True, max_shard_size="20KB")
    shards = sorted(n for n in os.listdir(tmp_path / "ver") if n.endswith(".safetensors"))
    edit_header(tmp_path / "ver" / shards[-1], lambda h: h["__metadata__"].update(hf_sparse_format_version="99"))
    with pytest.raises(ValueError, match="newer hf_sparse"):
        hf_sparse.load_sparse(tmp_path / "ver")


def test_report_default_length_follows_the_position_embeddings(tmp_path, capsys):
    """Old: the default input was 128 tokens, a raw RuntimeError for a model with 16 positions."""
    model = tiny_bert()  # max_position_embeddings=16
    prune(model, 0.5)
    model.save_pretrained(tmp_path)
    assert main(["report", str(tmp_path), "--json", "--no-measure"]) == 0
    assert json.loads(capsys.readouterr().out)["input_shapes"]["input_ids"] == [1, 16]
