"""to_semi_structured: a clear error on CPU; on a CUDA GPU (skipped here) exact 2:4 outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hf_sparse import to_semi_structured
from hf_sparse.core.masks import nm_mask
from hf_sparse.inference.semi_structured import SemiStructuredUnsupportedError


def mlp_24(hidden: int = 128) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.weight.mul_(nm_mask(layer.weight.abs(), 2, 4))
    return model


def test_cpu_gives_a_clear_error():
    model = mlp_24()
    with pytest.raises(SemiStructuredUnsupportedError, match="CUDA GPU.*compute capability.*'cpu'"):
        to_semi_structured(model)
    assert isinstance(model[0].weight, nn.Parameter) and model[0].weight.layout == torch.strided  # untouched


def test_no_linear_layer_is_an_error():
    with pytest.raises(ValueError, match="no sparsifiable weights|no targeted nn.Linear"):
        to_semi_structured(nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1)))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_conversion_matches_dense():
    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("semi-structured kernels need compute capability >= 8.0")
    model = mlp_24().to("cuda", torch.float16).eval()
    x = torch.randn(64, 128, device="cuda", dtype=torch.float16)
    with torch.inference_mode():
        expected = model(x)
        to_semi_structured(model)
        got = model(x)
    assert type(model[0].weight.data).__name__.startswith("SparseSemiStructuredTensor")
    torch.testing.assert_close(got, expected, rtol=1e-2, atol=1e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_rejects_fp32_and_unstructured():
    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("semi-structured kernels need compute capability >= 8.0")
    with pytest.raises(SemiStructuredUnsupportedError, match="dtype"):
        to_semi_structured(mlp_24().to("cuda"))
    dense = nn.Sequential(nn.Linear(128, 128)).to("cuda", torch.float16)
    with pytest.raises(ValueError, match="no layer could be converted"):
        to_semi_structured(dense)
