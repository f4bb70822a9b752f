"""SparseLinear: an inference-only stand-in for a sparse ``nn.Linear`` (or transformers ``Conv1D``).

The product is ``y^T = W x^T``: the sparse weight on the left, the tokens as the dense columns (the
only orientation torch has fast CPU kernels for). Two kernels, chosen per layer by measurement in
``hf_sparse.to_sparse_inference`` (see docs/inference.md for the figures):

- ``"spmm"``: ``torch.sparse.mm(W_csr, x^T, "sum")``, torch's own vectorised CSR kernel (the one
  behind sparse ``reduce``); about 1.6x faster than MKL from 128 to 1024 tokens on this CPU;
- ``"mkl"``: ``torch.addmm(bias, W_csr, x^T)`` with int32 indices (MKL); better for a few tokens,
  so ``"spmm"`` layers hand calls under ``SPMM_MIN_TOKENS`` tokens to it.

The transposed input ``x^T`` is one copy per call, with rows padded off 4 KiB strides
(:func:`padded_tokens`), shared by sibling layers fed the same tensor (Q/K/V) through a
:class:`SharedInputTranspose`; tokens go through in chunks of ``CHUNK_TOKENS``. The output is
made contiguous (strided Q/K/V push attention off its fast kernel), except for layers whose output
feeds another sparse layer (``contiguous_output=False``, set by ``to_sparse_inference`` when
measured faster): the next layer then needs no input copy. CSR kernels run in float32 for bfloat16/float16 weights (exact: every
bf16/fp16 value is a float32 value), and the product is cast back.

The dense weight is rebuilt bitwise by :meth:`SparseLinear.to_dense_module` (the signs of ``-0.0``
entries are kept as a packed bit mask). ``state_dict`` holds the dense ``weight``/``bias`` under the
original keys, so a converted model still saves as an ordinary checkpoint.
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional

import torch
from torch import nn

from ..core.bitpack import pack_flat as _pack_bits, unpack_flat as _unpack_bits  # the one bit-packer

try:  # GPT-2 style Linear that stores its weight as (in, out)
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover
    Conv1D = None

# dtypes torch's CSR addmm supports on CPU (MKL); others compute in float32.
_CPU_CSR_DTYPES = (torch.float32, torch.float64)

# Tokens per kernel call: keeps the transposed input slice and the output rows in cache (on a
# 1536x384 weight at 90%, 2 threads: 4096 tokens in one call 1.1x faster than dense, 1024 at a
# time 3x).
CHUNK_TOKENS = 1024

KERNELS = ("spmm", "mkl")

# Add the bias without a pass of its own: into the transposing output copy (``torch.add(y^T, b,
# out=y)``), or, for a layer that hands its output over transposed, inside the kernel (``[W | b]``
# times ``[x^T ; 1]``). The separate ``add_`` it replaces was ~16% of a converted MiniLM forward
# (docs/inference.md). A switch so that benchmarks/bias_fusion.py can time both in one process.
FUSED_BIAS = True


def kernels_for(device: torch.device) -> tuple[str, ...]:
    """The kernels that run on ``device``. torch's ``sparse.mm(..., "sum")`` kernel is CPU-only; the
    ``"mkl"`` form (``addmm`` on a CSR weight) runs on CUDA through cuSPARSE (not measured here:
    no GPU was available; see docs/inference.md)."""
    return KERNELS if torch.device(device).type == "cpu" else ("mkl",)

# Below this many tokens per call the "spmm" kernel hands over to MKL: torch's kernel vectorises
# over tokens and loses to dense at 1-8 tokens (0.4x at 90%), where MKL still wins (1.1-2.4x);
# they cross near 64 tokens (benchmarks/sparse_kernels.py). Keeps short pipeline inputs fast.
SPMM_MIN_TOKENS = 64

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


def padded_tokens(tokens: int) -> int:
    """Columns to allocate for ``tokens``: a few more when the row length would be a multiple of
    64 floats. Rows 4 KiB apart map to the same cache sets, and the transposing copies in and out
    of the kernel then ran up to 1.6x slower (1536x1024 output: 0.98 ms vs 0.61 ms padded)."""
    return tokens + 16 if tokens >= 64 and tokens % 64 == 0 else tokens


def compute_dtype_for(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype the sparse product runs in: the weight's own where torch has a kernel, else float32."""
    if device.type == "cpu" and dtype not in _CPU_CSR_DTYPES:
        return torch.float32
    return dtype


class SharedInputTranspose:
    """One transposed copy of an input for the sibling layers it feeds (BERT's query/key/value).

    The first sibling to see a tensor makes the copy; the others reuse it while they are handed the
    very same tensor object (held here, so its id cannot be recycled) at the same version (tensors
    made under ``torch.inference_mode`` have no version counter: an in-place change of such an
    input between two siblings' calls would not be seen). The copy is dropped once every sibling
    has used it, so nothing outlives the forward pass. The state is one tuple, read and replaced
    whole, so threads sharing a model can at worst recompute a copy, never use another's.
    """

    def __init__(self, members: int):
        if members < 2:
            raise ValueError(f"a shared input transpose needs at least 2 layers, got {members}")
        self.members = members
        self._state: Optional[tuple] = None  # (source tensor, version, blocks)
        self._uses = 0

    @staticmethod
    def _version_of(x: torch.Tensor) -> Optional[int]:
        try:
            return x._version
        except RuntimeError:  # inference tensors track no version
            return None

    @property
    def holds_input(self) -> bool:
        return self._state is not None

    def chunks(self, x: torch.Tensor, make: Callable[[], list]) -> list:
        version = self._version_of(x)
        state = self._state
        if state is not None and state[0] is x and state[1] == version:
            self._uses += 1
            blocks = state[2]
        else:
            blocks = make()
            self._state, self._uses = (x, version, blocks), 1
        if self._uses >= self.members:
            self.clear()
        return blocks

    def clear(self) -> None:
        self._state = None
        self._uses = 0


class SparseLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` in CSR (int32 indices), for inference only.

    Built from a Linear-like module, which it keeps as an empty shell (no tensors) so that
    :meth:`to_dense_module` can hand back the very same module object with its weights restored.
    """

    def __init__(self, module: nn.Module, name: str = "", kernel: str = "spmm"):
        super().__init__()
        if not is_linear_like(module):
            raise TypeError(f"SparseLinear wraps nn.Linear or transformers Conv1D, got {type(module).__name__}")
        weight = linear_weight(module)
        if kernel not in kernels_for(weight.device):
            raise ValueError(f"kernel must be one of {kernels_for(weight.device)} on {weight.device.type}, got {kernel!r}")
        self.layer_name = name
        self.kernel = kernel
        self.contiguous_output = True
        self.chunk_tokens = CHUNK_TOKENS
        self.input_transpose: Optional[SharedInputTranspose] = None
        self.fused_bias = FUSED_BIAS
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
        # [W | b] in CSR, built on first use by layers that add their bias inside the kernel
        self.register_buffer("weight_csr_bias", None, persistent=False)
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
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, sparsity={self.sparsity:.2%}, "
            f"kernel=csr-{self.kernel}"
        )

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
        if x.shape[-1] != self.in_features:
            raise RuntimeError(
                f"SparseLinear {self.layer_name!r}: input has {x.shape[-1]} features, the layer expects {self.in_features}"
            )
        lead = x.shape[:-1]
        if torch.is_grad_enabled() and x.requires_grad:
            y = self._autograd_product(x.reshape(-1, self.in_features))
        else:
            y = self._product(x)
        if y.dtype != x.dtype:
            y = y.to(x.dtype)
        return y.reshape(*lead, self.out_features)

    def _transposed_chunks(self, x: torch.Tensor, ones_row: bool = False) -> list[tuple[torch.Tensor, int]]:
        """``x^T`` as (in_features, columns) blocks of at most ``chunk_tokens`` tokens, in the compute
        dtype, with how many columns are tokens: ``(block, tokens)``. Copies get zero padding columns
        (see :func:`padded_tokens`) and, with ``ones_row``, a last row of ones (for ``[W | b]``); an
        input already in (features, tokens) layout is used as it is."""
        x2 = x.reshape(-1, self.in_features)
        if x2.dtype != self.weight_csr.dtype:
            x2 = x2.to(self.weight_csr.dtype)
        tokens, chunk = x2.shape[0], max(int(self.chunk_tokens), 1)
        x_t = x2.t()
        if tokens <= chunk and x_t.stride(1) == 1 and x_t.stride(0) >= max(tokens, 1):
            return [(x_t, tokens)]  # (features, tokens) rows already, e.g. a chained producer's output
        blocks = []
        for start in range(0, max(tokens, 1), chunk):
            part = x2[start : start + chunk]
            n = part.shape[0]
            block = part.new_empty(self.in_features + int(ones_row), padded_tokens(n))
            block[: self.in_features, :n].copy_(part.t())
            if block.shape[1] > n:
                block[: self.in_features, n:].zero_()
            if ones_row:
                block[self.in_features].fill_(1.0)
            blocks.append((block, n))
        return blocks

    def _compute_bias(self) -> Optional[torch.Tensor]:
        bias = self.bias
        if bias is not None and bias.dtype != self.weight_csr.dtype:
            bias = bias.to(self.weight_csr.dtype)
        return bias

    def _csr_with_bias(self) -> torch.Tensor:
        """``[W | b]`` in CSR (int32 indices): times ``[x^T ; 1]`` it gives ``W x^T + b`` in one kernel call."""
        if self.weight_csr_bias is None:
            weight = self.weight_csr.to_dense()
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
                csr = torch.cat([weight, self._compute_bias()[:, None]], dim=1).to_sparse_csr()
            self.weight_csr_bias = torch.sparse_csr_tensor(
                csr.crow_indices().to(torch.int32), csr.col_indices().to(torch.int32), csr.values(), csr.shape,
                check_invariants=False,
            )
        return self.weight_csr_bias

    def _chunk_product(self, x_t: torch.Tensor, add_bias: bool = True) -> torch.Tensor:
        """``W x^T`` as (out_features, columns), ``+ b`` when ``add_bias``. A block with a last row of
        ones (``in_features + 1`` rows) is multiplied by ``[W | b]``: the bias comes out of the kernel."""
        if x_t.shape[0] == self.in_features + 1:
            weight, bias = self._csr_with_bias(), None
        else:
            weight, bias = self.weight_csr, (self._compute_bias() if add_bias else None)
        if self.kernel == "mkl" or x_t.shape[1] < SPMM_MIN_TOKENS:
            return torch.mm(weight, x_t) if bias is None else torch.addmm(bias[:, None], weight, x_t)
        y_t = torch.sparse.mm(weight, x_t, "sum")
        return y_t if bias is None else y_t.add_(bias[:, None])

    def _product(self, x: torch.Tensor) -> torch.Tensor:
        fused = self.fused_bias and self.bias is not None
        if self.input_transpose is not None:
            blocks = self.input_transpose.chunks(x, lambda: self._transposed_chunks(x))
        else:  # a layer handing its output over transposed takes its bias from the kernel
            blocks = self._transposed_chunks(x, ones_row=fused and not self.contiguous_output)
        if self.contiguous_output:
            parts = [self._chunk_product(block, add_bias=not fused)[:, :n] for block, n in blocks]
            if fused:  # the bias is added by the transposing copy itself
                bias = self._compute_bias()
                y = parts[0].new_empty(sum(p.shape[1] for p in parts), self.out_features)
                start = 0
                for p in parts:
                    torch.add(p.t(), bias, out=y[start : start + p.shape[1]])
                    start += p.shape[1]
                return y
            if len(parts) == 1:
                return parts[0].t().contiguous()
            y = parts[0].new_empty(sum(p.shape[1] for p in parts), self.out_features)
            start = 0
            for p in parts:
                y[start : start + p.shape[1]].copy_(p.t())
                start += p.shape[1]
            return y
        parts = [self._chunk_product(block)[:, :n] for block, n in blocks]
        return (parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)).t()

    def _autograd_product(self, x2: torch.Tensor) -> torch.Tensor:
        """Out-of-place, differentiable in ``x`` (for input gradients, e.g. saliency)."""
        if x2.dtype != self.weight_csr.dtype:
            x2 = x2.to(self.weight_csr.dtype)
        y = torch.mm(self.weight_csr, x2.t())
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)[:, None]
        return y.t()

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
