"""Target selection: defaults skip embeddings, heads and stems; regexes; clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hf_sparse.core.targets import find_targets

from helpers import TinyMLP, tiny_bert


def test_bert_defaults_skip_embeddings_pooler_and_head():
    """The encoder's six Linear weights per layer, as oBERT/GMP* prune; the pooler feeds the classifier alone."""
    names = [t.name for t in find_targets(tiny_bert())]
    assert "bert.encoder.layer.0.attention.self.query.weight" in names
    assert not any("embeddings" in n or "pooler" in n or n.startswith("classifier") for n in names)
    assert len(names) == 2 * 6
    assert "bert.pooler.dense.weight" in [t.name for t in find_targets(tiny_bert(), targets=["pooler"])]


def test_targets_and_ignore_regexes():
    model = tiny_bert()
    names = [t.name for t in find_targets(model, targets=[r"attention\.self\.(query|key)"], ignore=[r"layer\.1\."])]
    assert names == ["bert.encoder.layer.0.attention.self.query.weight", "bert.encoder.layer.0.attention.self.key.weight"]
    # explicit targets may name the head
    assert [t.name for t in find_targets(model, targets=[r"^classifier$"])] == ["classifier.weight"]


def test_plain_module_and_conv():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 4))
    targets = find_targets(model)
    assert [t.name for t in targets] == ["0.weight", "3.weight"]
    assert targets[0].fan() == (3, 8, 9)
    assert [t.name for t in find_targets(TinyMLP())] == ["fc1.weight", "fc2.weight", "out.weight"]


def test_tied_weights_counted_once():
    lin = nn.Linear(4, 4)
    model = nn.ModuleDict({"a": lin, "b": nn.Linear(4, 4)})
    model["b"].weight = lin.weight
    assert [t.name for t in find_targets(model)] == ["a.weight"]


def test_errors():
    with pytest.raises(ValueError, match="no sparsifiable weights"):
        find_targets(tiny_bert(), targets=["does_not_exist"])
    with pytest.raises(TypeError, match="cannot sparsify.*LayerNorm"):
        find_targets(tiny_bert(), targets=[r"attention\.output\.LayerNorm"])


def test_transformers_conv1d_input_dim():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32, n_positions=8))
    targets = {t.name: t for t in find_targets(model)}
    assert "transformer.h.0.mlp.c_fc.weight" in targets and targets["transformer.h.0.mlp.c_fc.weight"].in_dim == 0
    assert "lm_head.weight" not in targets
