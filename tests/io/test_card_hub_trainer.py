"""SparseTrainer saves through hf_sparse's layout, writes the sparse card, and pushes the folder;
hf_sparse.push_to_hub uploads exactly a folder that loads back; the CLI inspects and converts."""

from __future__ import annotations

import json
import os
import shutil
import warnings

import pytest
import torch
from huggingface_hub import HfApi
from safetensors import safe_open

import hf_sparse
import hf_sparse.io.load  # hf_sparse.io.load.* below; the package imports lazily
from hf_sparse.__main__ import main as cli

from helpers import PairDataset, tiny_bert, training_args
from export_helpers import assert_bitwise_equal, prune, state


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """Replace huggingface_hub's network calls; keep a copy of every folder 'uploaded'."""
    uploads = []

    def create_repo(self, repo_id, **kwargs):
        from huggingface_hub import RepoUrl

        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, ignore_patterns=None, **kwargs):
        copy = tmp_path / f"uploaded-{len(uploads)}"
        ignore = shutil.ignore_patterns(*(ignore_patterns or []))
        shutil.copytree(folder_path, copy, ignore=ignore)
        uploads.append({"repo_id": repo_id, "folder": str(copy), "kwargs": kwargs})
        return "commit-info"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return uploads


def _trained(tmp_path, **args):
    model = tiny_bert()
    config = hf_sparse.SparsityConfig(method="gmp", sparsity=0.75, end=0.5, update_every=2)
    trainer = hf_sparse.SparseTrainer(
        model=model, args=training_args(tmp_path / "run", **args), train_dataset=PairDataset(),
        eval_dataset=PairDataset(n=16, seed=1), sparsity_config=config,
    )
    trainer.train()
    trainer.evaluate()
    return trainer


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return _trained(tmp_path_factory.mktemp("trainer"))


def test_trainer_save_model_writes_hf_sparse_dense_layout(trained, tmp_path):
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "final"
    hf_sparse.save_sparse(tiny_bert(seed=3), out, compressed=True)  # a stale compressed save must not win
    trained.save_model(str(out))
    assert not os.path.exists(out / "model.sparse.safetensors")
    plain = AutoModelForSequenceClassification.from_pretrained(out)  # no hf_sparse needed
    assert_bitwise_equal(state(plain), state(trained.model))
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["hf_sparse_sparsity_config"])["sparsity"] == 0.75
    assert os.path.isfile(out / "sparsity_config.json") and os.path.isfile(out / "sparsity_state.safetensors")
    model, masks = hf_sparse.load_sparse(out)
    assert set(masks) == set(trained.masks)
    assert all(torch.equal(masks[k], trained.masks[k].cpu()) for k in masks)
    assert_bitwise_equal(state(model), state(trained.model))


def test_trainer_model_card(trained):
    trained.create_model_card(model_name="tiny-sparse", dataset="pairs", finetuned_from="bert-tiny")
    out = trained.args.output_dir
    text = open(os.path.join(out, "README.md"), encoding="utf-8").read()
    front = text.split("---")[1]
    assert "library_name: transformers" in front and "- sparse" in front
    assert "base_model: bert-tiny" in front and "- pairs" in front
    overall = hf_sparse.sparsity_report(trained.model)["sparsity"]
    assert f"**{overall:.2%}**" in text
    for name, mask in trained.masks.items():
        assert f"| `{name}` |" in text
    assert "`method`: `gmp`" in text and "`update_every`: `2`" in text
    assert "| eval_loss |" in text
    for png in ("sparsity_vs_step.png", "layer_sparsity.png"):
        path = os.path.join(out, png)
        assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n" and f"]({png})" in text


def test_trainer_push_to_hub_uploads_folder_with_card(tmp_path, fake_hub):
    trainer = _trained(tmp_path, hub_model_id="me/tiny-sparse", max_steps=4)
    trainer.push_to_hub()
    assert len(fake_hub) == 1 and fake_hub[0]["repo_id"] == "me/tiny-sparse"
    folder = fake_hub[0]["folder"]
    assert {"README.md", "model.safetensors", "sparse_masks.safetensors", "layer_sparsity.png"} <= set(os.listdir(folder))
    model, masks = hf_sparse.load_sparse(folder)
    assert_bitwise_equal(state(model), state(trainer.model))
    trainer.push_to_hub(compressed=True)
    folder = fake_hub[1]["folder"]
    assert "model.sparse.safetensors" in os.listdir(folder) and "model.safetensors" not in os.listdir(folder)
    assert "hf_sparse.load_sparse" in open(os.path.join(folder, "README.md")).read()
    model, masks = hf_sparse.load_sparse(folder)
    assert_bitwise_equal(state(model), state(trainer.model))
    assert all(torch.equal(masks[k], trainer.masks[k].cpu()) for k in masks)


@pytest.mark.parametrize("compressed", [False, True, "compressed-tensors"])
def test_push_to_hub_model(tmp_path, fake_hub, compressed):
    model = tiny_bert()
    masks = prune(model, 0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = hf_sparse.push_to_hub(model, "me/sparse", compressed=compressed, private=True, masks=masks)
    assert result == "commit-info" and fake_hub[0]["repo_id"] == "me/sparse"
    folder = fake_hub[0]["folder"]
    assert "README.md" in os.listdir(folder)
    loaded, loaded_masks = hf_sparse.load_sparse(folder)
    assert_bitwise_equal(state(loaded), state(model))
    assert all(torch.equal(loaded_masks[k], masks[k]) for k in masks)
    expected_layout = {False: "dense", True: "native", "compressed-tensors": "compressed-tensors"}[compressed]
    assert hf_sparse.io.load.detect_format(folder) == expected_layout


def test_push_to_hub_converts_a_folder(tmp_path, fake_hub):
    model = tiny_bert()
    prune(model, 0.95)
    hf_sparse.save_sparse(model, tmp_path / "dense")
    (tmp_path / "dense" / "tokenizer.json").write_text("{}")
    hf_sparse.push_to_hub(tmp_path / "dense", "me/x", compressed=True)
    folder = fake_hub[0]["folder"]
    assert {"model.sparse.safetensors", "tokenizer.json", "README.md"} <= set(os.listdir(folder))
    assert "model.safetensors" not in os.listdir(folder)
    assert not os.path.exists(tmp_path / "dense" / "model.sparse.safetensors")  # the source is untouched
    loaded, _ = hf_sparse.load_sparse(folder)
    assert_bitwise_equal(state(loaded), state(model))


def test_cli_inspect_compress_export(tmp_path, capsys):
    model = tiny_bert()
    prune(model, 0.9)
    hf_sparse.save_sparse(model, tmp_path / "m", config=hf_sparse.SparsityConfig(sparsity=0.9))
    assert cli(["compress", str(tmp_path / "m")]) == 0
    assert cli(["inspect", str(tmp_path / "m-compressed")]) == 0
    out = capsys.readouterr().out
    assert "format: native" in out and "bert.encoder.layer.0.attention.self.query.weight" in out
    assert "89.9" in out or "90.0" in out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert cli(["export", str(tmp_path / "m-compressed"), "--out", str(tmp_path / "ct"), "--layout", "compressed-tensors"]) == 0
    assert cli(["inspect", "--json", str(tmp_path / "ct")]) == 0
    printed = capsys.readouterr().out
    info = json.loads(printed[printed.index("{"):])
    assert info["format"] == "compressed-tensors" and info["subformat"] == "sparse-bitmask"
    loaded, _ = hf_sparse.load_sparse(tmp_path / "ct")
    assert_bitwise_equal(state(loaded), state(model))
    assert os.path.isfile(tmp_path / "ct" / "README.md") and os.path.isfile(tmp_path / "ct" / "sparsity_config.json")


def test_template_ships_with_the_package():
    from hf_sparse.io.model_card import template_text

    text = template_text()
    assert "$front_matter" in text and "$layer_table" in text
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
    assert open(os.path.join(here, "model_cards", "model_card.md")).read() == text
