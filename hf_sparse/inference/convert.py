"""Fast sparse inference: swap sparse Linear layers for CSR kernels, only where measured faster.

``to_sparse_inference(model, example_inputs)`` runs one forward pass on ``example_inputs`` and,
as each targeted layer is reached, times its dense forward against each CSR kernel on that very
input (interleaved rounds, median of the per-round speedups, so a load spike on a shared machine
hits both sides). A layer gets the fastest kernel if that is at least ``min_speedup`` times faster
than dense; otherwise it stays dense. Then the whole model is timed against the dense model, and
the conversion is undone if it is not faster (layer timings miss what a layout costs the next
operation). The choices and speedups are logged and kept on the model as
``model.sparse_inference_plan``. ``from_sparse_inference(model)`` restores the dense modules bitwise.

Conv layers stay dense: no torch CPU kernel (CSR on unfolded patches) beat oneDNN's dense
convolution in our measurements (see ``benchmarks/cpu_inference.py``).
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from torch import nn

from ..core.targets import find_targets
from .sparse_linear import SharedInputTranspose, SparseLinear, compute_dtype_for, is_linear_like, kernels_for, linear_weight
from .timing import Timer, interleaved_timer, paired_speedup

logger = logging.getLogger(__name__)

DEFAULT_TOKENS = 8 * 128  # batch 8 x 128 tokens when no example input reaches a layer


@dataclass
class LayerChoice:
    """What was decided for one layer, and why."""

    name: str
    kernel: str  # "dense", or the CSR kernel: "spmm" / "mkl" (see hf_sparse.inference.sparse_linear)
    sparsity: float
    dense_ms: Optional[float] = None
    sparse_ms: Optional[float] = None
    speedup: Optional[float] = None  # median over rounds of dense time / time of the fastest kernel
    input_shape: Optional[tuple[int, ...]] = None
    reason: str = ""
    # how the layer was timed: "in:tokens-major/out:tokens-major" by default; "features-major" for
    # the transposed layout a chained sparse producer hands over (see _tune_layouts)
    timed_layout: str = ""


class SparseInferencePlan(list):
    """The per-layer choices (a list of :class:`LayerChoice`) that prints as a table."""

    threads: int = 1
    transposed_outputs: list = []
    shared_inputs: list = []  # groups of sibling layers that share one transposed input copy
    model_speedup: Optional[float] = None  # whole model, dense time / converted time
    reverted: bool = False  # True when the whole model was not faster and went back to dense

    @property
    def converted(self) -> list[LayerChoice]:
        return [c for c in self if c.kernel != "dense"]

    def to_dict(self) -> dict:
        return {
            "threads": self.threads,
            "transposed_outputs": list(self.transposed_outputs),
            "shared_inputs": [list(g) for g in self.shared_inputs],
            "model_speedup": self.model_speedup,
            "reverted": self.reverted,
            "layers": [asdict(c) for c in self],
        }

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
        if self.shared_inputs:
            lines.append(f"{len(self.shared_inputs)} groups of layers share one transposed input")
        if self.model_speedup is not None:
            verdict = "reverted to dense: not faster" if self.reverted else "kept"
            lines.append(f"whole model: {self.model_speedup:.2f}x vs dense ({verdict})")
        return "\n".join(lines)


def _decide(
    name: str,
    dense_module: nn.Module,
    x: torch.Tensor,
    timer: Timer,
    min_speedup: float,
    transposed_output: bool = False,
    transposed_input: bool = False,
) -> tuple[LayerChoice, Optional[SparseLinear]]:
    """Time dense against each kernel on ``x``; ``transposed_output``: the layer feeds a sparse
    layer, so it is timed as it would run then (no output copy)."""
    weight = linear_weight(dense_module)
    sparsity = 1.0 - int(torch.count_nonzero(weight)) / max(weight.numel(), 1)
    # One throw-away kernel on a copy (the real module must stay intact until the decision),
    # switched between the kernels as it is timed.
    kernels = kernels_for(weight.device)
    probe = SparseLinear(_detached_copy(dense_module), name, kernel=kernels[0]).eval()
    probe.contiguous_output = not transposed_output

    def run(kernel: str) -> Callable[[], Any]:
        def fn() -> Any:
            probe.kernel = kernel
            return probe(x)

        return fn

    candidates: dict[str, Callable[[], Any]] = {"dense": lambda: dense_module(x)}
    candidates.update({kernel: run(kernel) for kernel in kernels})
    times = timer(name, candidates)
    dense_t = list(times["dense"])
    speedups = {kernel: paired_speedup(dense_t, times[kernel]) for kernel in kernels}
    best = max(kernels, key=lambda k: speedups[k])
    wins = speedups[best] >= min_speedup
    choice = LayerChoice(
        name=name,
        kernel=best if wins else "dense",
        sparsity=sparsity,
        dense_ms=1e3 * statistics.median(dense_t),
        sparse_ms=1e3 * statistics.median(times[best]),
        speedup=speedups[best],
        input_shape=tuple(x.shape),
        reason=f"faster ({best})" if wins else f"sparse not {min_speedup:g}x faster",
        timed_layout=f"in:{_LAYOUTS[transposed_input]}/out:{_LAYOUTS[transposed_output]}",
    )
    probe.kernel = best
    return choice, (probe if wins else None)


_LAYOUTS = {False: "tokens-major", True: "features-major"}


def _transposed_layout(x: torch.Tensor) -> torch.Tensor:
    """``x`` with the same values in the layout a chained sparse producer hands over: (features, tokens)."""
    x2 = x.reshape(-1, x.shape[-1])
    return x2.t().contiguous().t().reshape(x.shape)


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
    min_model_speedup: float = 1.02,
) -> nn.Module:
    """Put CSR kernels into the sparse Linear layers of ``model`` where they are measured faster.

    ``example_inputs``: what the model is called with (a dict of keyword arguments, a tuple of
    positional ones, or a tensor), ideally a real batch of the size you will run: each layer is
    timed on the input it receives. Without it each layer is timed on random
    ``(8*128, in_features)`` tokens. ``targets``/``ignore`` are module-name regexes as in
    ``SparsityConfig`` (default: ``hf_sparse.core.targets.find_targets``' selection). Layers below
    ``min_sparsity`` stay dense without timing; a layer is converted when the sparse kernel is at
    least ``min_speedup`` times faster than dense. ``timer`` replaces the measurement (tests).
    ``tune_layout`` (needs ``example_inputs``): sparse layers that feed other sparse layers (an MLP's
    up -> activation -> down) keep their output in the kernel's transposed layout, saving two
    copies, if two more timed forwards show the whole model faster that way. Sibling sparse layers
    fed the same tensor (Q/K/V) share one transposed copy of it.
    With ``example_inputs`` the converted model is finally timed against the dense one; unless it is
    at least ``min_model_speedup`` times faster every layer goes back to dense (``plan.reverted``).
    Timing uses ``torch.get_num_threads()`` threads: convert under the thread count you serve with.

    Works in place and returns ``model``, in eval mode, with ``model.sparse_inference_plan``.
    """
    if not 0.0 <= min_sparsity <= 1.0:
        raise ValueError(f"min_sparsity must be in [0, 1], got {min_sparsity}")
    if min_speedup <= 0:
        raise ValueError(f"min_speedup must be > 0, got {min_speedup}")
    if min_model_speedup <= 0:
        raise ValueError(f"min_model_speedup must be > 0, got {min_model_speedup}")
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
    inputs: dict[str, torch.Tensor] = {}  # what each layer was first fed (kept alive: ids stay unique)

    # Producer -> consumer pairs of sparse candidates (an MLP's up -> GELU -> down): each is timed
    # in the layout it would run in when both are sparse (see _tune_layouts for the final say).
    chains = _chains(model, example_inputs, candidates) if tune_layout and example_inputs is not None and candidates else []
    producers = {producer for producer, _ in chains}
    producer_of: dict[str, str] = {}
    for producer, consumer in chains:
        producer_of.setdefault(consumer, producer)

    def make_hook(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            # First call only; the timing calls the module again, which must not re-enter.
            if name not in inputs and args and isinstance(args[0], torch.Tensor):
                inputs[name] = x = args[0]
                producer = producer_of.get(name)
                transposed_input = producer in decisions and decisions[producer][1] is not None
                if transposed_input:
                    x = _transposed_layout(x)
                decisions[name] = _decide(
                    name, module, x, timer, min_speedup, transposed_output=name in producers, transposed_input=transposed_input
                )

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
    swaps: dict[str, tuple[nn.Module, SparseLinear]] = {}
    for name, module in candidates.items():
        choice, sparse = decisions[name]
        if sparse is not None:
            swaps[name] = (module, sparse)
            _set_module(model, name, sparse)
        plan.append(choice)
    try:
        plan.shared_inputs = _share_input_transposes({n: inputs[n] for n in swaps if n in inputs}, model)
        inputs.clear()
        if tune_layout and example_inputs is not None and plan.converted:
            chained = sorted({producer for producer, consumer in chains if producer in swaps and consumer in swaps})
            _tune_layouts(model, example_inputs, timer, plan, chained)
        if example_inputs is not None and swaps:
            plan.model_speedup = _model_speedup(model, example_inputs, timer, swaps)
            plan.reverted = plan.model_speedup < min_model_speedup
    except BaseException:
        for name, (dense_module, _) in swaps.items():  # leave the model as it came, dense
            _set_module(model, name, dense_module)
        raise
    for name, (dense_module, sparse) in swaps.items():
        if plan.reverted:
            _set_module(model, name, dense_module)
        else:
            sparse.adopt_shell(dense_module)  # the kernel was built on a copy; keep the real object
    if plan.reverted:
        for c in plan:
            if c.kernel != "dense":
                c.kernel, c.reason = "dense", f"whole model {plan.model_speedup:.2f}x < min_model_speedup={min_model_speedup:g}"
        plan.transposed_outputs, plan.shared_inputs = [], []
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    plan.sort(key=lambda c: order.get(c.name, len(order)))
    object.__setattr__(model, "sparse_inference_plan", plan)
    for c in plan:
        if c.speedup is not None:
            logger.info("%s: %s (sparsity %.1f%%, measured %.2fx on %s)", c.name, c.kernel, 100 * c.sparsity, c.speedup, c.input_shape)
        else:
            logger.info("%s: dense (%s)", c.name, c.reason)
    logger.info("sparse inference: %d/%d layers on CSR kernels (%d threads)", len(plan.converted), len(plan), plan.threads)
    if plan.model_speedup is not None:
        log = logger.warning if plan.reverted else logger.info
        log(
            "sparse inference: whole model %.2fx vs dense on the example inputs: %s",
            plan.model_speedup,
            f"reverted to dense (below min_model_speedup={min_model_speedup:g})" if plan.reverted else "kept",
        )
    return model


def _share_input_transposes(first_inputs: Mapping[str, torch.Tensor], model: nn.Module) -> list[list[str]]:
    """Give converted layers that were fed the very same tensor (Q/K/V) one shared input copy."""
    groups: dict[int, list[str]] = {}
    for name, x in first_inputs.items():
        groups.setdefault(id(x), []).append(name)
    shared = [names for names in groups.values() if len(names) > 1]
    for names in shared:
        cache = SharedInputTranspose(len(names))
        for name in names:
            model.get_submodule(name).input_transpose = cache
    return shared


def _model_speedup(model: nn.Module, example_inputs: Any, timer: Timer, swaps: Mapping[str, tuple[nn.Module, SparseLinear]]) -> float:
    """Dense time / converted time of the whole model (median of interleaved rounds); leaves it converted."""

    def run(sparse: bool) -> Callable[[], Any]:
        def fn() -> Any:
            for name, modules in swaps.items():
                _set_module(model, name, modules[1] if sparse else modules[0])
            return _call(model, example_inputs)

        return fn

    try:
        times = timer("<model>", {"dense": run(False), "sparse": run(True)})
    finally:
        for name, (_, sparse) in swaps.items():
            _set_module(model, name, sparse)
    return paired_speedup(times["dense"], times["sparse"])


def _chains(model: nn.Module, example_inputs: Any, layers: Mapping[str, nn.Module]) -> list[tuple[str, str]]:
    """``(producer, consumer)`` pairs of ``layers``, in the order first seen, where the producer's
    output reaches the consumer directly or through one shape-keeping leaf module (an activation,
    a dropout): e.g. BERT's intermediate -> GELU -> output. Found with forward hooks during one
    pass on ``example_inputs``.

    A sparse producer can return its product as the transposed view it already is: its sparse
    consumer then needs no copy of its input, and neither layer copies its output.
    """
    names = {id(m): n for n, m in layers.items()}
    direct: dict[int, str] = {}  # id(tensor) -> the layer that produced it
    through: dict[int, str] = {}  # id(tensor) -> the layer behind one elementwise module
    alive: list[torch.Tensor] = []  # keeps ids unique during the pass
    pairs: dict[tuple[str, str], None] = {}  # an ordered set

    def hook(module: nn.Module, args: tuple, output: Any) -> None:
        if not args or not isinstance(args[0], torch.Tensor) or not isinstance(output, torch.Tensor):
            return
        source = direct.get(id(args[0])) or through.get(id(args[0]))
        if id(module) in names:
            if source is not None:
                pairs.setdefault((source, names[id(module)]))
            direct[id(output)] = names[id(module)]
            alive.append(output)
        elif id(args[0]) in direct and output.shape == args[0].shape:
            through[id(output)] = direct[id(args[0])]
            alive.append(output)

    leaves = [m for m in model.modules() if next(m.children(), None) is None or id(m) in names]
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        _call(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
    return list(pairs)


def _tune_layouts(model: nn.Module, example_inputs: Any, timer: Timer, plan: "SparseInferencePlan", chained: list[str]) -> None:
    """Let ``chained`` sparse layers (their output feeds another sparse layer) skip their output
    copies, if the whole model is then faster."""
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
    gain = paired_speedup(times["contiguous"], times["transposed"])
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
