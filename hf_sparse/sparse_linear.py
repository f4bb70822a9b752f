"""SparseLinear: an inference-only stand-in for a sparse ``nn.Linear`` (or transformers ``Conv1D``).

Why this form of the kernel (measured on this 2-core CPU, see docs/inference.md):
``torch.addmm(bias[:, None], W_csr, x.t())`` with **int32** indices is the fastest torch CSR form.
int64 indices make MKL convert the indices on every call, a separate ``+ bias`` on the transposed
result costs as much as the sparse product itself at high sparsity, a column-major (``out=y.t()``)
MKL result is 5-30x slower, and ``x @ W_csr.t()`` (sparse on the right) has no MKL path. Tokens
go through in chunks of ``CHUNK_TOKENS`` so the transposed input and the output slices stay in
cache. The output is made contiguous (strided Q/K/V push attention off its fast kernel), except
for layers whose output feeds another sparse layer (``contiguous_output=False``, set by
``to_sparse_inference`` when measured faster). CSR has no bfloat16/float16 CPU kernel, so such
weights are stored in float32 (exact: every bf16/fp16 value is a float32 value) and the product
is cast back.

The dense weight is rebuilt bitwise by :meth:`SparseLinear.to_dense_module` (the signs of ``-0.0``
entries are kept as a packed bit mask). ``state_dict`` holds the dense ``weight``/``bias`` under the
original keys, so a converted model still saves as an ordinary checkpoint.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import nn

try:  # GPT-2 style Linear that stores its weight as (in, out)
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover
    Conv1D = None

# dtypes torch's CSR addmm supports on CPU (MKL); others compute in float32.
_CPU_CSR_DTYPES = (torch.float32, torch.float64)

# Tokens per kernel call: keeps the transposed input slice and the output slice in cache (at 4096
# tokens, one call on a 1536x384 weight at 90% ran 2.6x slower than 16 calls of 256 tokens).
CHUNK_TOKENS = 256

TRAINING_ERROR = (
    "{name} runs sparse kernels for inference only (no weight gradients, no train mode); "
    "call hf_sparse.from_sparse_inference(model) to get the dense trainable modules back"
)


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The weight as an (out_features, in_features) matrix, whatever the module stores."""
    if Conv1D is not None and isinstance(module, Conv1D):
        return module.weight.detach().t()
    return module.weight.detach()


def is_linear_like(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (Conv1D is not None and isinstance(module, Conv1D))


def _pack_bits(flags: torch.Tensor) -> torch.Tensor:
    flat = flags.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=flat.device)
    return (flat.view(-1, 8) * weights).sum(-1, dtype=torch.uint8)


def _unpack_bits(packed: torch.Tensor, numel: int) -> torch.Tensor:
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    return ((packed[:, None] >> shifts) & 1).bool().reshape(-1)[:numel]


def compute_dtype_for(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype the sparse product runs in: the weight's own where torch has a kernel, else float32."""
    if device.type == "cpu" and dtype not in _CPU_CSR_DTYPES:
        return torch.float32
    return dtype


class SparseLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` in CSR (int32 indices), for inference only.

    Built from a Linear-like module, which it keeps as an empty shell (no tensors) so that
    :meth:`to_dense_module` can hand back the very same module object with its weights restored.
    """

    def __init__(self, module: nn.Module, name: str = ""):
        super().__init__()
        if not is_linear_like(module):
            raise TypeError(f"SparseLinear wraps nn.Linear or transformers Conv1D, got {type(module).__name__}")
        weight = linear_weight(module)
        self.layer_name = name
        self.contiguous_output = True
        self.chunk_tokens = CHUNK_TOKENS
        self.out_features, self.in_features = weight.shape
        self.weight_dtype = weight.dtype
        self.weight_requires_grad = module.weight.requires_grad
        compute_dtype = compute_dtype_for(weight.dtype, weight.device)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            csr = weight.to(compute_dtype).to_sparse_csr()
        csr = torch.sparse_csr_tensor(
            csr.crow_indices().to(torch.int32),
            csr.col_indices().to(torch.int32),
            csr.values(),
            csr.shape,
            check_invariants=False,  # built by to_sparse_csr, valid by construction
        )
        self.register_buffer("weight_csr", csr, persistent=False)
        negative_zero = (weight == 0) & torch.signbit(weight)
        self.register_buffer(
            "negative_zeros", _pack_bits(negative_zero) if bool(negative_zero.any()) else None, persistent=False
        )
        bias = getattr(module, "bias", None)
        self.bias_requires_grad = bias.requires_grad if isinstance(bias, nn.Parameter) else False
        self.register_buffer("bias", None if bias is None else bias.detach().clone(), persistent=False)
        self.adopt_shell(module)

    def adopt_shell(self, module: nn.Module) -> None:
        """Keep ``module`` (emptied: its tensors live here now, once) to hand back on restore."""
        module._parameters["weight"] = None
        if "bias" in module._parameters and module._parameters["bias"] is not None:
            module._parameters["bias"] = None
        object.__setattr__(self, "_shell", module)

    @property
    def nnz(self) -> int:
        return int(self.weight_csr.values().numel())

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nnz / max(self.out_features * self.in_features, 1)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, sparsity={self.sparsity:.2%}, kernel=csr"

    def train(self, mode: bool = True) -> "SparseLinear":
        if mode:
            raise RuntimeError(TRAINING_ERROR.format(name=f"SparseLinear {self.layer_name!r}"))
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            raise RuntimeError(TRAINING_ERROR.format(name=f"SparseLinear {self.layer_name!r}"))
        weight = self.weight_csr
        if x.device.type == "cpu" and weight.dtype not in _CPU_CSR_DTYPES:
            raise TypeError(
                f"SparseLinear {self.layer_name!r} holds {weight.dtype} weights, which torch's CPU CSR kernel "
                "does not support (the model was cast after conversion); call "
                "hf_sparse.from_sparse_inference(model), cast, then convert again"
            )
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if x2.dtype != weight.dtype:
            x2 = x2.to(weight.dtype)
        bias = None if self.bias is None else self.bias.to(weight.dtype)[:, None]
        tokens, chunk = x2.shape[0], self.chunk_tokens
        if tokens <= chunk or (torch.is_grad_enabled() and x2.requires_grad):
            y = torch.mm(weight, x2.t()) if bias is None else torch.addmm(bias, weight, x2.t())
            y = y.t()  # (tokens, out) as a view
            if self.contiguous_output:
                y = y.contiguous()
        elif self.contiguous_output:
            y = x2.new_empty(tokens, self.out_features)
            for start in range(0, tokens, chunk):
                part = x2[start : start + chunk].t()
                y[start : start + chunk] = (torch.mm(weight, part) if bias is None else torch.addmm(bias, weight, part)).t()
        else:
            y_t = x2.new_empty(self.out_features, tokens)
            for start in range(0, tokens, chunk):
                part, out = x2[start : start + chunk].t(), y_t[:, start : start + chunk]
                torch.mm(weight, part, out=out) if bias is None else torch.addmm(bias, weight, part, out=out)
            y = y_t.t()
        if y.dtype != x.dtype:
            y = y.to(x.dtype)
        return y.reshape(*lead, self.out_features)

    def dense_weight(self) -> torch.Tensor:
        """The (out, in) weight in its original dtype, bitwise equal to the one converted."""
        dense = self.weight_csr.to_dense().to(self.weight_dtype)
        if self.negative_zeros is not None:
            flags = _unpack_bits(self.negative_zeros, dense.numel()).view_as(dense)
            dense = torch.where(flags, torch.full_like(dense, -0.0), dense)
        return dense

    def _stored_weight(self) -> torch.Tensor:
        dense = self.dense_weight()
        return dense.t().contiguous() if Conv1D is not None and isinstance(self._shell, Conv1D) else dense

    def _save_to_state_dict(self, destination, prefix, keep_vars):  # dense keys, as the original module
        destination[prefix + "weight"] = self._stored_weight()
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        raise RuntimeError(
            f"cannot load weights into SparseLinear {self.layer_name!r}: load them into the dense model "
            "(hf_sparse.from_sparse_inference) and convert again"
        )

    def to_dense_module(self) -> nn.Module:
        """The original module object with its weight (and bias) restored bitwise."""
        shell = self._shell
        shell.weight = nn.Parameter(self._stored_weight(), requires_grad=self.weight_requires_grad)
        if self.bias is not None:
            shell.bias = nn.Parameter(self.bias.clone(), requires_grad=self.bias_requires_grad)
        shell.train(False)
        return shell

    @staticmethod
    def supports(weight: torch.Tensor) -> Optional[str]:
        """None if a SparseLinear can hold ``weight``, else the reason it cannot."""
        if weight.dim() != 2:
            return f"weight has {weight.dim()} dims"
        if not weight.is_floating_point():
            return f"weight dtype {weight.dtype} is not floating point"
        if weight.is_meta:
            return "weight is on the meta device"
        return None
