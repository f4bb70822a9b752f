"""Fast sparse inference: swap sparse Linear layers for CSR kernels, only where measured faster.

``to_sparse_inference(model, example_inputs)`` runs one forward pass on ``example_inputs`` and,
as each targeted layer is reached, times its dense forward against the CSR kernel on that very
input (interleaved rounds, median of the per-round speedups, so a load spike on a shared machine
hits both sides). A layer is converted when the sparse kernel is at least ``min_speedup`` times
faster; otherwise it stays dense. The choices and speedups are logged and kept on the model as
``model.sparse_inference_plan``. ``from_sparse_inference(model)`` restores the dense modules bitwise.

Conv layers stay dense: no torch CPU kernel (CSR on unfolded patches) beat oneDNN's dense
convolution in our measurements (see ``benchmarks/cpu_inference.py``).
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from torch import nn

from .sparse_linear import SparseLinear, compute_dtype_for, is_linear_like, linear_weight
from .targets import find_targets

logger = logging.getLogger(__name__)

# (layer name, {"dense": fn, "csr": fn}) -> {"dense": [seconds per round], "csr": [...]}
Timer = Callable[[str, Mapping[str, Callable[[], Any]]], Mapping[str, Sequence[float]]]

DEFAULT_TOKENS = 8 * 128  # batch 8 x 128 tokens when no example input reaches a layer


@dataclass
class LayerChoice:
    """What was decided for one layer, and why."""

    name: str
    kernel: str  # "csr" or "dense"
    sparsity: float
    dense_ms: Optional[float] = None
    sparse_ms: Optional[float] = None
    speedup: Optional[float] = None  # median over rounds of dense time / sparse time
    input_shape: Optional[tuple[int, ...]] = None
    reason: str = ""


class SparseInferencePlan(list):
    """The per-layer choices (a list of :class:`LayerChoice`) that prints as a table."""

    threads: int = 1
    transposed_outputs: list = []

    @property
    def converted(self) -> list[LayerChoice]:
        return [c for c in self if c.kernel != "dense"]

    def to_dict(self) -> dict:
        return {"threads": self.threads, "transposed_outputs": list(self.transposed_outputs), "layers": [asdict(c) for c in self]}

    def __str__(self) -> str:
        width = max([len("layer")] + [len(c.name) for c in self])
        lines = [f"{'layer':<{width}}  {'sparsity':>8}  {'kernel':>6}  {'dense ms':>9}  {'sparse ms':>9}  {'speedup':>7}  reason"]
        for c in self:
            ms = lambda v: f"{v:9.3f}" if v is not None else f"{'-':>9}"  # noqa: E731
            speed = f"{c.speedup:6.2f}x" if c.speedup is not None else f"{'-':>7}"
            lines.append(f"{c.name:<{width}}  {c.sparsity:>8.2%}  {c.kernel:>6}  {ms(c.dense_ms)}  {ms(c.sparse_ms)}  {speed}  {c.reason}")
        lines.append(f"{len(self.converted)}/{len(self)} layers on sparse kernels ({self.threads} threads)")
        if self.transposed_outputs:
            lines.append(f"transposed outputs (no copy) for: {', '.join(self.transposed_outputs)}")
        return "\n".join(lines)


def interleaved_timer(repeats: int = 7, budget_s: float = 1.0) -> Timer:
    """Time each candidate once per round, rounds interleaved; stop after ``repeats`` rounds,
    ``budget_s`` seconds, or as soon as the choice is clear (at least 3 rounds). One warm-up each."""

    def timer(name: str, candidates: Mapping[str, Callable[[], Any]]) -> Mapping[str, Sequence[float]]:
        for fn in candidates.values():
            fn()
        times: dict[str, list[float]] = {k: [] for k in candidates}
        start = time.perf_counter()
        for i in range(repeats):
            for key, fn in candidates.items():
                t0 = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t0)
            if i >= 2 and (time.perf_counter() - start > budget_s or _clear(times)):
                break
        return times

    return timer


def _clear(times: Mapping[str, Sequence[float]]) -> bool:
    """Two candidates whose median ratio is far from 1: more rounds would not change the choice."""
    if len(times) != 2:
        return False
    a, b = times.values()
    ratio = statistics.median(x / max(y, 1e-12) for x, y in zip(a, b))
    return ratio < 0.7 or ratio > 1.4


def _decide(name: str, dense_module: nn.Module, x: torch.Tensor, timer: Timer, min_speedup: float) -> tuple[LayerChoice, Optional[SparseLinear]]:
    weight = linear_weight(dense_module)
    sparsity = 1.0 - int(torch.count_nonzero(weight)) / max(weight.numel(), 1)
    # Build a throw-away kernel on a copy: the real module must stay intact until the decision.
    probe_source = _detached_copy(dense_module)
    sparse = SparseLinear(probe_source, name).eval()
    times = timer(name, {"dense": lambda: dense_module(x), "csr": lambda: sparse(x)})
    dense_t, sparse_t = list(times["dense"]), list(times["csr"])
    rounds = min(len(dense_t), len(sparse_t))
    speedup = statistics.median(d / max(s, 1e-12) for d, s in zip(dense_t[:rounds], sparse_t[:rounds]))
    choice = LayerChoice(
        name=name,
        kernel="csr" if speedup >= min_speedup else "dense",
        sparsity=sparsity,
        dense_ms=1e3 * statistics.median(dense_t),
        sparse_ms=1e3 * statistics.median(sparse_t),
        speedup=speedup,
        input_shape=tuple(x.shape),
        reason="faster" if speedup >= min_speedup else f"sparse not {min_speedup:g}x faster",
    )
    return choice, (sparse if choice.kernel == "csr" else None)


def _detached_copy(module: nn.Module) -> nn.Module:
    """A shallow copy of a Linear-like module that shares its tensors (SparseLinear empties it)."""
    clone = module.__class__.__new__(module.__class__)
    clone.__dict__ = dict(module.__dict__)
    clone._parameters = dict(module._parameters)
    clone._buffers = dict(module._buffers)
    clone._modules = dict(module._modules)
    return clone


def _call(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _shared_weight_ids(model: nn.Module) -> set[int]:
    owners: dict[int, int] = {}
    for module in model.modules():
        for p in module._parameters.values():
            if p is not None:
                owners[id(p)] = owners.get(id(p), 0) + 1
    return {pid for pid, n in owners.items() if n > 1}


@torch.no_grad()
def to_sparse_inference(
    model: nn.Module,
    example_inputs: Any = None,
    *,
    targets: Optional[Sequence[str]] = None,
    ignore: Optional[Sequence[str]] = None,
    min_sparsity: float = 0.5,
    min_speedup: float = 1.1,
    timer: Optional[Timer] = None,
    tune_layout: bool = True,
) -> nn.Module:
    """Put CSR kernels into the sparse Linear layers of ``model`` where they are measured faster.

    ``example_inputs``: what the model is called with (a dict of keyword arguments, a tuple of
    positional ones, or a tensor), ideally a real batch of the size you will run: each layer is
    timed on the input it receives. Without it each layer is timed on random
    ``(8*128, in_features)`` tokens. ``targets``/``ignore`` are module-name regexes as in
    ``SparsityConfig`` (default: ``hf_sparse.targets.find_targets``' selection). Layers below
    ``min_sparsity`` stay dense without timing; a layer is converted when the sparse kernel is at
    least ``min_speedup`` times faster than dense. ``timer`` replaces the measurement (tests).
    ``tune_layout`` (needs ``example_inputs``): sparse layers that feed other sparse layers (an MLP's
    up -> activation -> down) keep their output in the kernel's transposed layout, saving two
    copies, if two more timed forwards show the whole model faster that way.
    Timing uses ``torch.get_num_threads()`` threads: convert under the thread count you serve with.

    Works in place and returns ``model``, in eval mode, with ``model.sparse_inference_plan``.
    """
    if not 0.0 <= min_sparsity <= 1.0:
        raise ValueError(f"min_sparsity must be in [0, 1], got {min_sparsity}")
    if min_speedup <= 0:
        raise ValueError(f"min_speedup must be > 0, got {min_speedup}")
    if any(isinstance(m, SparseLinear) for m in model.modules()):
        raise ValueError("model already holds SparseLinear layers; call hf_sparse.from_sparse_inference(model) first")
    timer = timer or interleaved_timer()
    model.eval()
    plan = SparseInferencePlan()
    plan.threads = torch.get_num_threads()
    shared = _shared_weight_ids(model)
    candidates: dict[str, nn.Module] = {}
    for target in find_targets(model, targets, ignore):
        module = model.get_submodule(target.module_name)
        weight = target.param
        reason = None
        if not is_linear_like(module):
            reason = f"{type(module).__name__}: no faster sparse kernel"
        elif id(weight) in shared:
            reason = "weight shared with another module"
        elif (why := SparseLinear.supports(weight)) is not None:
            reason = why
        sparsity = 1.0 - int(torch.count_nonzero(weight)) / max(weight.numel(), 1)
        if reason is None and sparsity < min_sparsity:
            reason = f"sparsity below min_sparsity={min_sparsity:g}"
        if reason is not None:
            plan.append(LayerChoice(target.module_name, "dense", sparsity, reason=reason))
        else:
            candidates[target.module_name] = module

    decisions: dict[str, tuple[LayerChoice, Optional[SparseLinear]]] = {}

    started: set[str] = set()

    def make_hook(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            # First call only; the timing calls the module again, which must not re-enter.
            if name not in started and args and isinstance(args[0], torch.Tensor):
                started.add(name)
                decisions[name] = _decide(name, module, args[0], timer, min_speedup)

        return hook

    if example_inputs is not None and candidates:
        handles = [m.register_forward_pre_hook(make_hook(n)) for n, m in candidates.items()]
        try:
            _call(model, example_inputs)
        finally:
            for h in handles:
                h.remove()
    for name, module in candidates.items():
        if name not in decisions:  # no example input, or the layer was not reached
            weight = linear_weight(module)
            x = torch.randn(DEFAULT_TOKENS, weight.shape[1], dtype=weight.dtype, device=weight.device)
            decisions[name] = _decide(name, module, x, timer, min_speedup)
    for name, module in candidates.items():
        choice, sparse = decisions[name]
        if sparse is not None:
            sparse.adopt_shell(module)  # the probe was built on a copy; keep the real object
            _set_module(model, name, sparse)
        plan.append(choice)
    if tune_layout and example_inputs is not None and plan.converted:
        _tune_layouts(model, example_inputs, timer, plan)
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    plan.sort(key=lambda c: order.get(c.name, len(order)))
    object.__setattr__(model, "sparse_inference_plan", plan)
    for c in plan:
        if c.speedup is not None:
            logger.info("%s: %s (sparsity %.1f%%, measured %.2fx on %s)", c.name, c.kernel, 100 * c.sparsity, c.speedup, c.input_shape)
        else:
            logger.info("%s: dense (%s)", c.name, c.reason)
    logger.info("sparse inference: %d/%d layers on CSR kernels (%d threads)", len(plan.converted), len(plan), plan.threads)
    return model


def _layout_candidates(model: nn.Module, example_inputs: Any) -> list[str]:
    """SparseLinear layers whose output reaches another SparseLinear directly or through one
    shape-keeping leaf module (an activation, a dropout): e.g. BERT's intermediate -> GELU -> output.

    Such a layer can return its product as the transposed view it already is: the next sparse
    layer then needs no copy of its input, and neither layer copies its output.
    """
    names = {id(m): n for n, m in model.named_modules() if isinstance(m, SparseLinear)}
    direct: dict[int, str] = {}  # id(tensor) -> the SparseLinear that produced it
    through: dict[int, str] = {}  # id(tensor) -> the SparseLinear behind one elementwise module
    alive: list[torch.Tensor] = []  # keeps ids unique during the pass
    hits: set[str] = set()

    def hook(module: nn.Module, args: tuple, output: Any) -> None:
        if not args or not isinstance(args[0], torch.Tensor) or not isinstance(output, torch.Tensor):
            return
        source = direct.get(id(args[0])) or through.get(id(args[0]))
        if id(module) in names:
            if source is not None:
                hits.add(source)
            direct[id(output)] = names[id(module)]
            alive.append(output)
        elif id(args[0]) in direct and output.shape == args[0].shape:
            through[id(output)] = direct[id(args[0])]
            alive.append(output)

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        _call(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
    return sorted(hits)


def _tune_layouts(model: nn.Module, example_inputs: Any, timer: Timer, plan: "SparseInferencePlan") -> None:
    """Let chained sparse layers skip their output copies, if the whole model is then faster."""
    chained = _layout_candidates(model, example_inputs)
    if not chained:
        return
    layers = [model.get_submodule(n) for n in chained]

    def run(transposed: bool) -> Callable[[], Any]:
        def fn() -> Any:
            for layer in layers:
                layer.contiguous_output = not transposed
            return _call(model, example_inputs)

        return fn

    times = timer("<model>", {"contiguous": run(False), "transposed": run(True)})
    rounds = min(len(times["contiguous"]), len(times["transposed"]))
    gain = statistics.median(c / max(t, 1e-12) for c, t in zip(times["contiguous"][:rounds], times["transposed"][:rounds]))
    keep = gain > 1.0
    for layer in layers:
        layer.contiguous_output = not keep
    plan.transposed_outputs = chained if keep else []
    logger.info("transposed outputs for %s: model %.2fx -> %s", chained, gain, "kept" if keep else "not kept")


def from_sparse_inference(model: nn.Module) -> nn.Module:
    """Undo :func:`to_sparse_inference` in place: every SparseLinear goes back to its original
    module with bitwise-equal weights. Returns ``model`` (still in eval mode)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, SparseLinear):
            _set_module(model, name, module.to_dense_module())
    if "sparse_inference_plan" in model.__dict__:
        del model.__dict__["sparse_inference_plan"]
    return model


__all__ = [
    "LayerChoice",
    "SparseInferencePlan",
    "compute_dtype_for",
    "from_sparse_inference",
    "interleaved_timer",
    "to_sparse_inference",
]
