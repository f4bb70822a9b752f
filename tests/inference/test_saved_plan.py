"""The plan saved with the model: written by to_sparse_inference, applied without timing on the
same kind of machine, re-timed (and said so) elsewhere; a pipeline over a saved folder in one call."""

from __future__ import annotations

import copy
import json
import logging
import os

import pytest
import torch

import hf_sparse
from hf_sparse import to_sparse_inference
from hf_sparse.inference.serving import load_sparse_inference, sparse_pipeline
from hf_sparse.inference.plan import PLAN_FILE, machine_info
from hf_sparse.inference.sparse_linear import SparseLinear

from helpers import tiny_bert
from test_inference import always, bert_inputs


def no_timing(name, candidates):
    raise AssertionError(f"timed {name} although a saved plan applies")


@pytest.fixture
def saved(tmp_path):
    """A 90% sparse tiny BERT saved with a tokenizer, converted once with its plan saved beside it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{w: i + 4 for i, w in enumerate("a good bad film movie very not".split())}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]")
    model = tiny_bert().eval()
    hf_sparse.prune(model, 0.9)
    folder = str(tmp_path / "model")
    hf_sparse.save_sparse(model, folder, compressed=True)
    tokenizer.save_pretrained(folder)
    dense = copy.deepcopy(model)
    to_sparse_inference(model, bert_inputs(), timer=always("spmm"), save_plan=folder)
    return folder, dense, model.sparse_inference_plan, tokenizer


def test_plan_file_records_kernels_bounds_and_machine(saved):
    folder, _, plan, _ = saved
    data = json.load(open(os.path.join(folder, PLAN_FILE)))
    assert data["machine"]["torch"] == torch.__version__ and data["machine"]["threads"] == torch.get_num_threads()
    assert data["machine"]["cpu"] == machine_info()["cpu"] and data["machine"]["device"] == "cpu"
    kernels = {c["name"]: c["kernel"] for c in data["layers"]}
    assert kernels == {c.name: c.kernel for c in plan} and "spmm" in kernels.values()
    timed = [c for c in data["layers"] if c["speedup"] is not None]
    assert timed and all(c["speedup_low"] is not None and c["rounds"] >= 5 for c in timed)
    assert data["model_speedup"] == pytest.approx(3.0) and data["model_rounds"] >= 7


def test_same_machine_applies_the_plan_without_timing(saved, caplog):
    folder, dense, plan, _ = saved
    with caplog.at_level(logging.INFO, logger="hf_sparse.inference"):
        model = load_sparse_inference(folder, timer=no_timing)
    loaded = model.sparse_inference_plan
    assert "saved plan" in loaded.source and "applied the saved plan" in caplog.text
    assert {c.name: c.kernel for c in loaded} == {c.name: c.kernel for c in plan}
    assert loaded.transposed_outputs == plan.transposed_outputs and loaded.shared_inputs == plan.shared_inputs
    on_kernels = {n: m.kernel for n, m in model.named_modules() if isinstance(m, SparseLinear)}
    assert on_kernels == {c.name: c.kernel for c in plan.converted}
    inputs = bert_inputs()
    with torch.no_grad():
        assert (model(**inputs).logits - dense(**inputs).logits).abs().max() < 1e-5


@pytest.mark.parametrize("field, value", [("torch", "0.0.1"), ("threads", 64), ("cpu", "Another CPU")])
def test_another_machine_re_times_and_says_so(saved, caplog, field, value):
    folder, _, _, _ = saved
    path = os.path.join(folder, PLAN_FILE)
    data = json.load(open(path))
    data["machine"][field] = value
    open(path, "w").write(json.dumps(data))
    calls = []
    with caplog.at_level(logging.WARNING, logger="hf_sparse.inference"):
        model = load_sparse_inference(folder, bert_inputs(), timer=lambda n, c: calls.append(n) or always("spmm")(n, c))
    assert calls and model.sparse_inference_plan.source == "measured"
    assert "another machine" in caplog.text and field in caplog.text


def test_changed_weights_re_time(saved, caplog):
    folder, _, _, _ = saved
    model, _ = hf_sparse.load_sparse(folder)
    with torch.no_grad():  # a layer much denser than when the plan was made
        model.bert.encoder.layer[0].intermediate.dense.weight.add_(0.01)
    calls = []
    with caplog.at_level(logging.WARNING, logger="hf_sparse.inference"):
        to_sparse_inference(model, plan=folder, timer=lambda n, c: calls.append(n) or always("spmm")(n, c))
    assert calls and "re-timing" in caplog.text


def test_pipeline_over_a_saved_folder_in_one_call(saved):
    from transformers import pipeline

    folder, dense, _, tokenizer = saved
    pipe = sparse_pipeline("text-classification", folder, convert_kwargs={"timer": no_timing}, top_k=None)
    assert any(isinstance(m, SparseLinear) for m in pipe.model.modules())
    texts = ["a very good film", "not a bad movie at all"]
    want = pipeline("text-classification", model=dense, tokenizer=tokenizer, device="cpu", top_k=None)(texts)
    for g, w in zip(pipe(texts), want):
        assert [d["label"] for d in g] == [d["label"] for d in w]
        assert max(abs(a["score"] - b["score"]) for a, b in zip(g, w)) < 1e-5


def test_inspect_names_the_plan_and_a_corrupt_plan_is_an_error(saved, capsys):
    from hf_sparse.__main__ import main

    folder, _, _, _ = saved
    assert main(["inspect", folder]) == 0
    out = capsys.readouterr().out
    assert "sparse inference plan:" in out and torch.__version__ in out
    open(os.path.join(folder, PLAN_FILE), "w").write("{not json")
    with pytest.raises(ValueError, match=PLAN_FILE):
        load_sparse_inference(folder, timer=no_timing)


def test_load_sparse_with_sparse_inference_applies_the_saved_plan(saved, caplog, monkeypatch):
    """``load_sparse(folder, sparse_inference=True)`` uses the saved plan exactly as sparse_pipeline does."""
    import hf_sparse.inference.convert as convert

    folder, dense, plan, _ = saved
    monkeypatch.setattr(convert, "interleaved_timer", lambda: no_timing)
    with caplog.at_level(logging.INFO, logger="hf_sparse.inference"):
        model, _ = hf_sparse.load_sparse(folder, sparse_inference=True)
    assert "saved plan" in model.sparse_inference_plan.source and "applied the saved plan" in caplog.text
    on_kernels = {n: m.kernel for n, m in model.named_modules() if isinstance(m, SparseLinear)}
    assert on_kernels == {c.name: c.kernel for c in plan.converted}
    inputs = bert_inputs()
    with torch.no_grad():
        assert (model(**inputs).logits - dense(**inputs).logits).abs().max() < 1e-5


def test_load_sparse_with_sparse_inference_re_times_on_another_machine(saved, caplog, monkeypatch):
    import hf_sparse.inference.convert as convert

    folder, _, _, _ = saved
    path = os.path.join(folder, PLAN_FILE)
    data = json.load(open(path))
    data["machine"]["torch"] = "0.0.1"
    open(path, "w").write(json.dumps(data))
    calls = []
    monkeypatch.setattr(convert, "interleaved_timer", lambda: lambda n, c: calls.append(n) or always("spmm")(n, c))
    with caplog.at_level(logging.WARNING, logger="hf_sparse.inference"):
        model, _ = hf_sparse.load_sparse(folder, sparse_inference=True, example_inputs=bert_inputs())
    assert calls and model.sparse_inference_plan.source == "measured"
    assert "another machine" in caplog.text and "torch" in caplog.text
