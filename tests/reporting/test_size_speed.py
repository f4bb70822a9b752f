"""hf_sparse.report: counts, FLOPs and bytes against hand counts; verdicts; outputs; errors."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
from torch import nn

import hf_sparse
from hf_sparse.core.masks import nm_mask
from hf_sparse.core.patterns import detect_pattern
from hf_sparse.reporting.size_speed import count_flops, verdict

from helpers import TinyMLP, tiny_bert


def sparse_mlp() -> TinyMLP:
    """fc1 (32x16) 75% zeros unstructured, fc2 (32x32) exactly 2:4, out (2x32) dense."""
    torch.manual_seed(0)
    model = TinyMLP(dim=16, hidden=32, classes=2)
    with torch.no_grad():
        w = model.fc1.weight
        w.add_(torch.sign(w) * 0.01 + (w == 0) * 0.01)  # no accidental zeros
        flat = w.view(-1)
        flat[torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(1))[:384]] = 0.0  # 384/512
        model.fc2.weight.add_(0.01).mul_(nm_mask(model.fc2.weight.abs(), 2, 4))
        model.out.weight.add_(torch.sign(model.out.weight) * 0.01 + 0.001)
    return model


def test_counts_flops_and_bytes_match_hand_counts():
    model = sparse_mlp()
    x = torch.randn(5, 16)  # 5 tokens
    r = hf_sparse.report(model, x, measure=False)
    fc1, fc2, out = (r["layers"][f"{n}.weight"] for n in ("fc1", "fc2", "out"))
    assert (fc1["params"], fc1["nonzeros"], fc1["pattern"]) == (512, 128, "unstructured")
    assert fc1["sparsity"] == pytest.approx(0.75)
    assert (fc2["params"], fc2["nonzeros"], fc2["pattern"]) == (1024, 512, "2:4")
    assert (out["nonzeros"], out["pattern"]) == (64, "dense")
    # FLOPs of a Linear: 2 * in * out * tokens dense, times density sparse.
    assert fc1["flops_dense"] == 2 * 16 * 32 * 5 and fc1["flops_sparse"] == pytest.approx(2 * 16 * 32 * 5 * 0.25)
    assert fc2["flops_dense"] == 2 * 32 * 32 * 5 and fc2["flops_sparse"] == pytest.approx(2 * 32 * 32 * 5 * 0.5)
    assert out["flops_dense"] == 2 * 32 * 2 * 5 and out["flops_sparse"] == pytest.approx(2 * 32 * 2 * 5)
    # Bytes: dense numel * size; compressed nonzeros * size + numel / 8 (bitmask).
    assert fc1["bytes"]["float32"] == {"dense": 2048, "compressed": 128 * 4 + 64}
    assert fc1["bytes"]["bfloat16"] == {"dense": 1024, "compressed": 128 * 2 + 64}
    totals = r["totals"]
    assert totals["params"] == 1600 and totals["nonzeros"] == 704
    assert totals["pattern"] == "unstructured"
    assert totals["bytes"]["float32"]["compressed"] == pytest.approx(704 * 4 + 1600 / 8)
    assert totals["bytes"]["float32"]["ratio"] == pytest.approx((704 * 4 + 200) / 6400)
    model_totals = r["model"]
    assert model_totals["params"] == 1600 + 32 + 32 + 2  # biases stay dense
    assert model_totals["bytes"]["float32"]["compressed"] == pytest.approx(66 * 4 + 704 * 4 + 200)
    assert model_totals["flops_dense"] == 2 * 5 * (512 + 1024 + 64)


def test_flops_count_tokens_of_3d_inputs_and_conv_positions():
    linear = nn.Linear(16, 8)
    flops = count_flops(nn.Sequential(linear), torch.randn(2, 3, 16))
    assert flops["0"]["dense"] == 2 * 16 * 8 * 6
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1, stride=2))
    flops = count_flops(conv, torch.randn(1, 3, 8, 8))
    assert flops["0"]["dense"] == 2 * (8 * 3 * 3 * 3) * 64
    assert flops["1"]["dense"] == 2 * (4 * 8) * 16


def test_pattern_detection():
    torch.manual_seed(0)
    w = torch.randn(16, 32)
    assert detect_pattern(w) == "dense"
    stray = w.clone()
    stray[0, :3] = 0.0  # 3 of 512: stray zeros, not sparsity
    assert detect_pattern(stray) == "dense"
    assert detect_pattern(w * nm_mask(w.abs(), 2, 4)) == "2:4"
    sparse = w * (torch.rand_like(w) > 0.95)  # very sparse: mostly 2:4-compatible by chance, still unstructured
    assert detect_pattern(sparse) == "unstructured"
    assert detect_pattern(w * (torch.rand_like(w) > 0.5)) == "unstructured"


def test_verdict_sentences():
    totals = {
        "pattern": "unstructured", "sparsity": 0.9,
        "bytes": {"float32": {"ratio": 0.13125}, "bfloat16": {"ratio": 0.1625}},
    }
    variants = [
        {"name": "dense", "ms": 10.0, "speedup": 1.0},
        {"name": "sparse, dense kernels", "ms": 9.8, "speedup": 10.0 / 9.8},
        {"name": "sparse kernels (to_sparse_inference)", "ms": 5.0, "speedup": 2.0},
    ]
    text = verdict(totals, variants, "CPU")
    assert text.startswith("unstructured 90%: no speedup with dense kernels on this CPU (1.02x)")
    assert "2.00x faster with sparse kernels (to_sparse_inference) on this CPU" in text
    assert "size 0.13x with compressed=True" in text
    noisy = [
        {"name": "dense", "ms": 10.0, "speedup": 1.0, "spread": 0.15},
        {"name": "sparse, dense kernels", "ms": 8.0, "speedup": 1.25, "spread": 0.2},
    ]
    assert "no speedup with dense kernels on this CPU (1.25x, within timing noise +-35%)" in verdict(totals, noisy, "CPU")
    failed = [variants[0], {"name": "sparse kernels (to_sparse_inference)", "ms": None, "speedup": None, "error": "boom"}]
    assert "not measured (boom)" in verdict(totals, failed, "CPU")


def test_measured_report_leaves_the_model_unchanged_and_renders(tmp_path):
    model = sparse_mlp().train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    r = hf_sparse.report(model, torch.randn(4, 16), repeats=3, warmup=1, sparse_kernels=False)
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), before[n]), n
    assert model.training  # mode restored
    names = [v["name"] for v in r["latency"]["variants"]]
    assert names == ["dense", "sparse, dense kernels"]
    assert all(v["ms"] > 0 and v["spread"] >= 0 for v in r["latency"]["variants"])
    assert r["verdict"].startswith("unstructured 56%:")  # 896 zeros of 1600
    assert json.loads(r.to_json())["totals"]["nonzeros"] == 704
    assert "verdict" in str(r) and "fc2.weight" in str(r)
    png = r.plot(str(tmp_path / "report.png"))
    with open(png, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_speedup_is_paired_round_by_round_as_to_sparse_inference_decides(monkeypatch):
    """One definition of speedup: median of per-round ratios (here 0.5), not a ratio of medians (1.0)."""
    from hf_sparse.inference.timing import paired_speedup
    from hf_sparse.reporting import size_speed

    assert paired_speedup([4.0, 1.0, 2.0], [1.0, 2.0, 4.0]) == 0.5
    with pytest.raises(ValueError, match="equally many rounds"):
        paired_speedup([1.0, 2.0], [1.0])
    rounds = {"dense": [4.0, 1.0, 2.0], "sparse, dense kernels": [1.0, 2.0, 4.0]}
    monkeypatch.setattr(size_speed, "measure_times", lambda models, *a, **k: {n: rounds[n] for n in models})
    variants = hf_sparse.report(sparse_mlp(), torch.randn(4, 16), sparse_kernels=False)["latency"]["variants"]
    by_name = {v["name"]: v for v in variants}
    assert by_name["dense"]["speedup"] == 1.0
    assert by_name["sparse, dense kernels"]["speedup"] == 0.5 and by_name["sparse, dense kernels"]["ms"] == 2.0


def test_dense_model_verdict():
    r = hf_sparse.report(tiny_bert(), input_shape=(1, 8), repeats=2, warmup=0)
    assert r["totals"]["pattern"] == "dense"
    assert r["verdict"].startswith("dense (0.0% zeros): nothing for sparse kernels or compression to gain; ")
    assert r["verdict"].endswith("ms per forward on this CPU")
    assert [v["name"] for v in r["latency"]["variants"]] == ["dense"]
    assert r["input_shapes"] == {"input_ids": [1, 8], "attention_mask": [1, 8]}


def test_sparse_kernels_are_measured_when_installed(monkeypatch):
    calls = []

    def fake_to_sparse_inference(model, example_inputs=None):
        calls.append(example_inputs)
        return model

    monkeypatch.setitem(sys.modules, "hf_sparse.inference.convert", types.SimpleNamespace(to_sparse_inference=fake_to_sparse_inference))
    r = hf_sparse.report(sparse_mlp(), torch.randn(4, 16), repeats=2, warmup=0)
    names = [v["name"] for v in r["latency"]["variants"]]
    assert names == ["dense", "sparse, dense kernels", "sparse kernels (to_sparse_inference)"] and len(calls) == 1
    assert "sparse kernels (to_sparse_inference)" in r["verdict"]

    def broken(model, example_inputs=None):
        raise RuntimeError("no kernel")

    monkeypatch.setitem(sys.modules, "hf_sparse.inference.convert", types.SimpleNamespace(to_sparse_inference=broken))
    r = hf_sparse.report(sparse_mlp(), torch.randn(4, 16), repeats=2, warmup=0)
    failed = r["latency"]["variants"][-1]
    assert failed["ms"] is None and "no kernel" in failed["error"]
    assert "not measured (RuntimeError: no kernel)" in r["verdict"]


def test_errors():
    with pytest.raises(ValueError, match="example_inputs"):
        hf_sparse.report(TinyMLP(), measure=False)  # no config to build inputs from
    with pytest.raises(TypeError, match="example_inputs"):
        hf_sparse.report(TinyMLP(), [1, 2, 3], measure=False)
    with pytest.raises(ValueError, match="input_shape"):
        hf_sparse.report(tiny_bert(), input_shape=(1, 2, 3), measure=False)
    with pytest.raises(ValueError, match="repeats"):
        hf_sparse.report(TinyMLP(), torch.randn(2, 16), repeats=0)
