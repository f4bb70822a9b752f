"""One test per finding of issue 25 (checkpoints, round two): what loads is what was saved, or it
does not load; nothing that is not the save's own is deleted; bad input is a clear error.

Each test failed on the code before the fix (the old behaviour is in its docstring).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import tracemalloc

import pytest
import torch
from torch import nn

import hf_sparse
import hf_sparse.io.load
import hf_sparse.io.resave
from hf_sparse.__main__ import main

from ckpt_helpers import files_of, masks_equal, metadata_of, rewrite, save
from helpers import PairDataset, tiny_bert, training_args
from export_helpers import assert_bitwise_equal, prune, state


def _saved(tmp_path, name="src", compressed=False, seed=0, sparsity=0.9):
    model = tiny_bert(seed=seed)
    masks = prune(model, sparsity)
    folder = tmp_path / name
    save(model, folder, masks=masks, compressed=compressed, config=hf_sparse.SparsityConfig(method="gmp", sparsity=sparsity))
    return model, masks, folder


# -- data loss -------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["export", "compress"])
def test_7_output_link_to_the_source_is_refused(tmp_path, command, capsys):
    """Old: the same-folder check compared abspath, so --out LINK (a symlink to SRC) converted the
    source in place, deleting model.safetensors, the masks and a hand-written README."""
    _, _, source = _saved(tmp_path)
    (source / "README.md").write_text("my own notes\n")
    before = files_of(source)
    link = tmp_path / "link"
    os.symlink(source, link)
    assert main([command, str(source), "--out", str(link)]) == 2
    assert "same folder" in capsys.readouterr().err
    assert files_of(source) == before
    with pytest.raises(ValueError, match="same folder"):
        hf_sparse.io.resave.convert(str(source), str(link) + "/", True, "5GB", card=True)
    assert files_of(source) == before


def test_8_save_sparse_into_a_lora_adapter_folder_keeps_the_adapter(tmp_path):
    """Old: save_sparse deleted adapter_model.safetensors, kept adapter_config.json, and every later
    load failed with a raw FileNotFoundError."""
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    (folder / "adapter_model.safetensors").write_bytes(b"adapter weights")
    before = files_of(folder)
    model = tiny_bert()
    masks = prune(model, 0.5)
    with pytest.raises(ValueError, match="adapter_model.safetensors"):
        hf_sparse.save_sparse(model, folder, masks=masks)
    assert files_of(folder) == before
    assert not any(n.startswith(".tmp-") for n in os.listdir(folder))


@pytest.mark.parametrize("no_card", [True, False], ids=["no-card", "card"])
def test_9_export_keeps_a_hand_written_readme_in_the_target(tmp_path, no_card):
    """Old: export --no-card deleted the target's own README.md (the step meant to drop a copied card)."""
    _, _, source = _saved(tmp_path)
    target = tmp_path / "out"
    target.mkdir()
    (target / "README.md").write_text("hand-written\n")
    assert main(["export", str(source), "--out", str(target), "--layout", "native"] + (["--no-card"] if no_card else [])) == 0
    assert (target / "README.md").read_text() == "hand-written\n"
    hf_sparse.load_sparse(target)


class _Encoded(nn.Module):
    """A model whose submodule name looks like a native encoded part (``<name>.sparse_<part>``)."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.sparse_proj = nn.Linear(16, 16)
        self.head = nn.Linear(16, 4)


def test_10_a_save_is_read_back_before_it_replaces_the_old_one(tmp_path, monkeypatch):
    """Old: a compressed=True save of a model with a submodule named ``encoder.sparse_proj`` passed
    the header-only staging check and could never be read back (the old checkpoint was gone)."""
    torch.manual_seed(0)
    model = _Encoded()
    masks = {}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("weight"):
                masks[name] = param.abs() >= param.abs().flatten().kthvalue(param.numel() * 3 // 4).values
                param.masked_fill_(~masks[name], 0.0)
    save(model, tmp_path, masks=masks, compressed=True)
    fresh = _Encoded()
    loaded, loaded_masks = hf_sparse.load_sparse(tmp_path, model=fresh)
    assert_bitwise_equal(state(loaded), state(model))
    assert masks_equal(loaded_masks, masks)
    # a writer bug that the headers cannot see (values shuffled) is caught by reading the save back
    before = files_of(tmp_path)
    from hf_sparse.io import native_codec

    original = native_codec.encode

    def wrong(weight, mask, encoding=None):
        encoding, parts = original(weight, mask, encoding)
        parts["values"] = parts["values"].flip(0)
        return encoding, parts

    monkeypatch.setattr(native_codec, "encode", wrong)
    with pytest.raises(ValueError, match="read back"):
        save(model, tmp_path, masks=masks, compressed=True)
    assert files_of(tmp_path) == before


def test_11_symlinked_extra_files_are_never_followed(tmp_path, monkeypatch):
    """Old: a symlinked extra file in the source of export / push_to_hub(compressed=True) copied the
    content of the link's target into the output (and uploaded it)."""
    _, _, source = _saved(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("not for upload")
    os.symlink(secret, source / "notes.txt")
    with pytest.raises(ValueError, match="notes.txt.*link"):
        hf_sparse.io.resave.convert(str(source), str(tmp_path / "out"), True, "5GB", card=False)
    assert not (tmp_path / "out" / "notes.txt").exists()
    uploads = []
    from huggingface_hub import HfApi

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: None)
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: uploads.append(kw))
    for compressed in (True, None):
        with pytest.raises(ValueError, match="notes.txt.*link"):
            hf_sparse.push_to_hub(source, "me/x", compressed=compressed)
    assert uploads == []


# -- silent wrong results ----------------------------------------------------------------------------
GMP = dict(method="gmp", sparsity=0.75, start=0, end=0.5, update_every=2)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A 12-step SparseTrainer run with checkpoints at steps 4, 8 and 12."""
    out = tmp_path_factory.mktemp("run")
    trainer = hf_sparse.SparseTrainer(model=tiny_bert(), args=training_args(out, save_strategy="steps", save_steps=4),
                                      train_dataset=PairDataset(), sparsity_config=hf_sparse.SparsityConfig(**GMP))
    trainer.train()
    return out


def _resume(tmp_path, checkpoint):
    trainer = hf_sparse.SparseTrainer(model=tiny_bert(), args=training_args(tmp_path / "resumed"),
                                      train_dataset=PairDataset(), sparsity_config=hf_sparse.SparsityConfig(**GMP))
    trainer.train(resume_from_checkpoint=str(checkpoint))
    return trainer


@pytest.mark.parametrize("copied", [("model.safetensors",), ("sparsity_state.safetensors", "sparse_masks.safetensors")],
                         ids=["weights", "state+masks"])
def test_1_resume_refuses_files_of_two_saves(tmp_path, checkpoints, copied):
    """Old: checkpoint-8's weights (or its state + masks pair) copied into checkpoint-4 resumed with
    the weights of one save and the masks of the other, with no error."""
    folder = tmp_path / "checkpoint-4"
    shutil.copytree(checkpoints / "checkpoint-4", folder)
    for name in copied:
        shutil.copy2(checkpoints / "checkpoint-8" / name, folder / name)
    with pytest.raises(ValueError, match="not from the same save"):
        _resume(tmp_path, folder)
    resumed = _resume(tmp_path, checkpoints / "checkpoint-4")  # the untouched checkpoint resumes
    assert resumed.state.global_step == resumed.state.max_steps


def test_2_config_json_edits_that_change_what_loads_are_refused(tmp_path):
    """Old: "dtype": "bfloat16" in the config of an fp32 dense save loaded bf16 weights (and export
    wrote them rounded for good); tie_word_embeddings added to an untied save replaced the embeddings
    with the decoder weights in the native and compressed-tensors layouts."""
    from transformers import BertConfig, BertForMaskedLM

    for compressed in (False, True, "compressed-tensors"):
        model, _, folder = _saved(tmp_path, f"dtype-{compressed}", compressed=compressed)
        config = json.loads((folder / "config.json").read_text())
        config["dtype"] = "bfloat16"
        (folder / "config.json").write_text(json.dumps(config))
        with pytest.raises(ValueError, match="'dtype' is 'bfloat16' but .* was saved with"):
            hf_sparse.load_sparse(folder)
        assert main(["export", str(folder), "--out", str(tmp_path / f"out-{compressed}")]) == 2
    torch.manual_seed(0)
    untied = BertForMaskedLM(BertConfig(vocab_size=48, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=64, max_position_embeddings=16, tie_word_embeddings=False))
    prune(untied, 0.5)
    for compressed in (True, "compressed-tensors"):
        folder = tmp_path / f"untied-{compressed}"
        save(untied, folder, compressed=compressed)
        config = json.loads((folder / "config.json").read_text())
        config["tie_word_embeddings"] = True
        (folder / "config.json").write_text(json.dumps(config))
        with pytest.raises(ValueError, match="'tie_word_embeddings' is True but .* was saved with False"):
            hf_sparse.load_sparse(folder)


def _adapter_save(tmp_path, name, seed):
    from peft import LoraConfig, get_peft_model

    model = tiny_bert(seed=seed)
    masks = prune(model, 0.5 + 0.2 * seed)
    peft_model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", target_modules=["query", "value"], r=4))
    trainer = hf_sparse.SparseTrainer(model=peft_model, args=training_args(tmp_path / f"run-{name}"), base_masks=masks)
    trainer.save_model(str(tmp_path / name))
    return peft_model, tmp_path / name


def test_4_lora_adapter_masks_are_bound_to_the_adapter(tmp_path):
    """Old: the adapter header held no save id: another run's sparse_masks.safetensors swapped into an
    adapter folder was accepted by merge_and_unload, which then kept base weights zeroed."""
    from hf_sparse.io.native_format import KEY_SAVE_ID

    peft_a, folder_a = _adapter_save(tmp_path, "a", seed=0)
    _, folder_b = _adapter_save(tmp_path, "b", seed=1)
    assert metadata_of(folder_a / "adapter_model.safetensors")[KEY_SAVE_ID] == metadata_of(folder_a / "sparse_masks.safetensors")[KEY_SAVE_ID]
    shutil.copy2(folder_b / "sparse_masks.safetensors", folder_a / "sparse_masks.safetensors")
    shutil.copy2(folder_b / "sparsity_config.json", folder_a / "sparsity_config.json")
    with pytest.raises(ValueError, match="not from the same save"):
        hf_sparse.merge_and_unload(peft_a, folder_a)


def test_5_a_stale_sparsity_config_json_is_refused(tmp_path):
    """Old: a sparsity_config.json from another run beside a save: export wrote its method and
    sparsity into the header and the card instead of the source header's."""
    _, _, folder = _saved(tmp_path)
    hf_sparse.SparsityConfig(method="rigl", sparsity=0.5).save_pretrained(folder)
    with pytest.raises(ValueError, match="sparsity_config.json differs from the sparsity config recorded"):
        hf_sparse.load_sparse(folder)
    assert main(["export", str(folder), "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out" / "README.md").exists()


def test_3_load_sparse_keywords_that_redirect_transformers(tmp_path):
    """Old: subfolder=, variant="fp16", use_safetensors=False: hf_sparse verified one file while
    transformers loaded another, and the folder's masks were returned with it."""
    model, masks, folder = _saved(tmp_path, "main", seed=0)
    inner, inner_masks, _ = _saved(folder, "sub", seed=1, sparsity=0.5)
    loaded, loaded_masks = hf_sparse.load_sparse(folder, subfolder="sub")  # the subfolder is what is verified
    assert_bitwise_equal(state(loaded), state(inner))
    assert masks_equal(loaded_masks, inner_masks)
    other = tiny_bert(seed=5)
    torch.save(other.state_dict(), folder / "pytorch_model.bin")
    other.save_pretrained(tmp_path / "fp16", variant="fp16")
    shutil.copy2(tmp_path / "fp16" / "model.fp16.safetensors", folder / "model.fp16.safetensors")
    for kwargs in ({"variant": "fp16"}, {"use_safetensors": False}, {"from_tf": True}, {"gguf_file": "x.gguf"}):
        with pytest.raises(ValueError, match=f"{next(iter(kwargs))}="):
            hf_sparse.load_sparse(folder, **kwargs)
    loaded, _ = hf_sparse.load_sparse(folder, use_safetensors=True)
    assert_bitwise_equal(state(loaded), state(model))


def test_6_unknown_tensors_in_a_dense_save_are_refused(tmp_path):
    """Old: a ...LayerNorm.gamma added to a dense file loaded silently (transformers renamed it over
    .weight): the dense path skipped the 'no unknown tensors' check the other layouts have."""
    model, _, folder = _saved(tmp_path)
    name = "bert.embeddings.LayerNorm.gamma"

    def add(tensors, metadata):
        tensors[name] = torch.full_like(tensors["bert.embeddings.LayerNorm.weight"], 3.0)
        metadata.pop("hf_sparse_crc32", None)

    rewrite(folder / "model.safetensors", add)
    with pytest.raises(ValueError, match="tensors the model does not have.*LayerNorm.gamma"):
        hf_sparse.load_sparse(folder)
    # another tool's folder: a legacy name that transformers would rename over a stored tensor is refused too
    plain = tmp_path / "plain"
    model.save_pretrained(plain)
    rewrite(plain / "model.safetensors", add)
    with pytest.raises(ValueError, match="LayerNorm.gamma"):
        hf_sparse.load_sparse(plain)


def _edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_12_bad_input_is_a_clear_error(tmp_path, checkpoints, capsys):
    """Old: raw AttributeError / KeyError / TypeError tracebacks where a ValueError naming file and
    field was promised."""
    from hf_sparse.io.training_state import KEY_STATE, STATE_FILE

    _, _, ct = _saved(tmp_path, "ct", compressed="compressed-tensors")
    _edit_json(ct / "config.json", lambda c: c["quantization_config"].update(sparsity_config="sparse-bitmask"))
    for call in (hf_sparse.load_sparse, hf_sparse.load_masks, hf_sparse.io.load.describe):
        with pytest.raises(ValueError, match="sparsity_config must be an object"):
            call(ct)
    model, _, _ = _saved(tmp_path, "unused")
    plain = tmp_path / "plain"
    model.save_pretrained(plain)
    _edit_json(plain / "config.json", lambda c: c.update(architectures=["BertPreTrainedModel"]))
    with pytest.raises(ValueError, match="BertPreTrainedModel"):
        hf_sparse.load_sparse(plain)
    _, _, listed = _saved(tmp_path, "listed")
    (listed / "sparsity_config.json").write_text("[1, 2]")
    assert main(["export", str(listed), "--out", str(tmp_path / "out")]) == 2
    assert "sparsity_config.json must hold a JSON object" in capsys.readouterr().err
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="it is a file"):
        hf_sparse.save_sparse(model, a_file)
    _, _, source = _saved(tmp_path, "source")
    assert main(["compress", str(source), "--out", str(a_file)]) == 2
    assert a_file.read_text() == "x"
    folder = tmp_path / "checkpoint"
    shutil.copytree(checkpoints / "checkpoint-4", folder)

    def no_masks(tensors, metadata):
        document = json.loads(metadata[KEY_STATE])
        document["masks_file"] = None
        metadata[KEY_STATE] = json.dumps(document)

    rewrite(folder / STATE_FILE, no_masks)
    with pytest.raises(ValueError, match="'masks_file' in hf_sparse_state is null"):
        _resume(tmp_path, folder)


def test_13_compressed_tensors_save_of_a_plain_module(tmp_path):
    """Old: blamed a lost quantization_config and named the deleted staging folder."""
    model = nn.Sequential(nn.Linear(8, 8))
    with torch.no_grad():
        model[0].weight[:, :4] = 0
    with pytest.raises(ValueError, match="needs a transformers model") as caught:
        save(model, tmp_path, compressed="compressed-tensors")
    assert ".tmp-hf_sparse" not in str(caught.value)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("compressed", [False, True], ids=["dense", "native"])
def test_14_a_config_asking_for_thousands_of_layers_is_refused_in_milliseconds(tmp_path, compressed):
    """Old: num_hidden_layers 10000 in a native folder's config took 30 s and 1.4 GB before the
    refusal; a dense folder with 400 layers allocated 1.2 GB for real before 'lacks tensors'."""
    from ckpt_helpers import unbind_config

    _, _, folder = _saved(tmp_path, compressed=compressed)
    for bound in (True, False):
        if not bound:
            unbind_config(folder)  # as another tool's folder: the layer count is checked against the tensors
        _edit_json(folder / "config.json", lambda c: c.update(num_hidden_layers=10000 if compressed else 400))
        tracemalloc.start()
        start = time.perf_counter()
        with pytest.raises(ValueError, match="num_hidden_layers"):
            hf_sparse.load_sparse(folder)
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert elapsed < 1.0 and peak < 20 * 2**20, (elapsed, peak)


def test_binding_checks_import_no_torch():
    """``inspect`` reads headers without torch: the binding checks must be usable there too."""
    import subprocess
    import sys

    from hf_sparse.config import CONFIG_NAME
    from hf_sparse.io import binding

    from hf_sparse.io import native_format, training_state

    assert binding.CONFIG_NAME == CONFIG_NAME and binding.STATE_FILE == training_state.STATE_FILE
    for key in ("KEY_SAVE_ID", "KEY_MASKS", "KEY_CONFIG", "MASKS_IN_FILE", "MASKS_IN_WEIGHTS"):
        assert getattr(binding, key) == getattr(native_format, key), key
    code = "import sys, hf_sparse.io.binding; sys.exit('torch' in sys.modules)"
    root = os.path.dirname(os.path.dirname(hf_sparse.__file__))
    assert subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": root}).returncode == 0


def _mix(tmp_path, checkpoints, kind):
    """A folder whose files disagree in one way only; returns (folder, the file the error must name)."""
    if kind == "state of another checkpoint":
        folder = tmp_path / "checkpoint-4"
        shutil.copytree(checkpoints / "checkpoint-4", folder)
        shutil.copy2(checkpoints / "checkpoint-8" / "sparsity_state.safetensors", folder / "sparsity_state.safetensors")
        return folder, "sparsity_state.safetensors"
    model, _, folder = _saved(tmp_path)
    if kind == "config.json dtype":
        _edit_json(folder / "config.json", lambda c: c.update(dtype="bfloat16"))
        return folder, "config.json"
    if kind == "stale sparsity_config.json":
        hf_sparse.SparsityConfig(method="rigl", sparsity=0.5).save_pretrained(folder)
        return folder, "sparsity_config.json"
    if kind == "masks deleted":
        os.remove(folder / "sparse_masks.safetensors")
        return folder, "sparse_masks.safetensors"
    plain = tmp_path / "plain"  # "masks beside a plain save": weights of another tool, masks of hf_sparse
    model.save_pretrained(plain)
    shutil.copy2(folder / "sparse_masks.safetensors", plain / "sparse_masks.safetensors")
    return plain, "sparse_masks.safetensors"


@pytest.mark.parametrize("kind", ["config.json dtype", "stale sparsity_config.json", "masks deleted",
                                  "masks beside a plain save", "state of another checkpoint"])
def test_fast_inspect_refuses_what_a_load_refuses(tmp_path, checkpoints, kind, capsys):
    """Old: ``inspect`` without --verify compared only the save ids of weights and masks: an edited
    config.json, a stale sparsity_config.json, a deleted masks file, hf_sparse masks beside another
    tool's weights and a resume state of another checkpoint printed a table and exit 0."""
    folder, named = _mix(tmp_path, checkpoints, kind)
    capsys.readouterr()
    assert main(["inspect", str(folder)]) == 2
    fast = capsys.readouterr()
    assert named in fast.err and "total" not in fast.out
    assert main(["inspect", "--verify", str(folder)]) == 2  # the full check refuses the same folder, for the same reason
    assert capsys.readouterr().err == fast.err


def test_inspect_on_an_untouched_checkpoint_passes(checkpoints, capsys):
    assert main(["inspect", str(checkpoints / "checkpoint-4")]) == 0
    assert "total" in capsys.readouterr().out
