"""``hf_sparse.report``: the truth about a sparse model's size and speed, measured, not promised.

Per targeted layer and in total: parameters, nonzeros, sparsity, pattern (dense / unstructured /
2:4); theoretical FLOPs dense vs sparse for one forward pass of the given inputs (forward hooks on
every Linear/Conv; attention score products and elementwise ops are not counted); bytes dense vs
a bitmask + values encoding (per weight ``(1 - s) + 1 / (8 * bytes)`` of dense, as a compressed
export stores it); and a *measured* forward latency on the model's device: a densified copy vs the
sparse model with dense kernels, with CPU sparse kernels (``to_sparse_inference``) when that
feature is installed, and with 2:4 semi-structured kernels on a GPU. Speedups are paired, as
``to_sparse_inference`` measures them (``hf_sparse.inference.timing.paired_speedup``). A verdict
line says in one sentence what the user gets.
"""

from __future__ import annotations

import copy
import json
import logging
import statistics
import time
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from ..core.patterns import detect_pattern, is_24_compatible
from ..core.targets import SUPPORTED_MODULES, Target, find_targets
from ..inference.timing import paired_speedup

logger = logging.getLogger(__name__)

DTYPE_BYTES = {"float32": 4, "bfloat16": 2}
#: A measured ratio below this (or below 1 + the timings' relative spread) is "no speedup".
SPEEDUP_THRESHOLD = 1.10
Inputs = Union[Mapping[str, torch.Tensor], torch.Tensor]


# -- counting -------------------------------------------------------------------------------------
def compressed_bytes(numel: int, nonzero: int, dtype_bytes: int) -> float:
    """Bitmask (1 bit per weight) + the nonzero values: what a bitmask export stores."""
    return nonzero * dtype_bytes + numel / 8.0


def _out_channel_dim(module: nn.Module) -> int:
    return 1 if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) else -1


@torch.no_grad()
def count_flops(model: nn.Module, inputs: Inputs) -> dict[str, dict[str, Any]]:
    """Multiply-add FLOPs (2 per MAC) of every Linear/Conv module in one forward pass of ``inputs``.

    For a weight of ``numel`` elements applied at ``positions`` output positions (tokens for a
    Linear, batch x spatial for a Conv): dense ``2 * numel * positions``; sparse the same times
    the weight's density (only nonzero weights multiply).
    """
    flops: dict[str, dict[str, Any]] = {}
    names = {id(m): n for n, m in model.named_modules()}

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if not isinstance(output, torch.Tensor):
            return
        weight = module.weight
        positions = output.numel() // max(output.shape[_out_channel_dim(module)], 1)
        dense = 2 * weight.numel() * positions
        density = int(torch.count_nonzero(weight)) / max(weight.numel(), 1)
        row = flops.setdefault(names[id(module)], {"dense": 0, "sparse": 0.0})
        row["dense"] += dense
        row["sparse"] += dense * density

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, SUPPORTED_MODULES)]
    try:
        _forward(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return flops


# -- inputs and timing ----------------------------------------------------------------------------
def make_example_inputs(model: nn.Module, input_shape: Optional[Sequence[int]] = None, seed: int = 0) -> Inputs:
    """Random inputs of ``input_shape`` for a transformers model (token ids or pixel values)."""
    config = getattr(model, "config", None)
    main = getattr(model, "main_input_name", None)
    device = _device_of(model)
    generator = torch.Generator().manual_seed(seed)
    if main == "input_ids" and getattr(config, "vocab_size", None):
        shape = tuple(input_shape or (1, 128))
        if len(shape) != 2:
            raise ValueError(f"input_shape for a text model is (batch, sequence length), got {shape}")
        ids = torch.randint(1, int(config.vocab_size), shape, generator=generator)
        return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}
    if main == "pixel_values":
        channels = int(getattr(config, "num_channels", 3) or 3)
        size = getattr(config, "image_size", 224) or 224
        size = int(size[0] if isinstance(size, (list, tuple)) else size)
        shape = tuple(input_shape or (1, channels, size, size))
        if len(shape) != 4:
            raise ValueError(f"input_shape for an image model is (batch, channels, height, width), got {shape}")
        return {"pixel_values": torch.randn(shape, generator=generator).to(device)}
    raise ValueError(
        f"cannot build example inputs for {type(model).__name__} (main_input_name={main!r}); "
        "pass example_inputs (a tensor or a dict of tensors)"
    )


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _forward(model: nn.Module, inputs: Inputs) -> Any:
    return model(**inputs) if isinstance(inputs, Mapping) else model(inputs)


@torch.inference_mode()
def measure_times(
    models: Mapping[str, nn.Module], inputs: Inputs, repeats: int = 10, warmup: int = 2
) -> dict[str, list[float]]:
    """Wall times (ms) of ``repeats`` forward passes per model (CUDA synchronised).

    The models run interleaved, one pass each per round, so a load spike on a shared machine hits
    every variant alike instead of one whole measurement.
    """
    states = {name: model.training for name, model in models.items()}
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    times: dict[str, list[float]] = {name: [] for name in models}
    try:
        for model in models.values():
            model.eval()
            for _ in range(warmup):
                _forward(model, inputs)
        sync()
        for _ in range(repeats):
            for name, model in models.items():
                start = time.perf_counter()
                _forward(model, inputs)
                sync()
                times[name].append(1000.0 * (time.perf_counter() - start))
    finally:
        for name, model in models.items():
            model.train(states[name])
    return times


def relative_spread(times: Sequence[float]) -> float:
    """Interquartile range over the median: how noisy a timing is (0 for fewer than 4 samples)."""
    if len(times) < 4:
        return 0.0
    q1, _, q3 = statistics.quantiles(times, n=4)
    return (q3 - q1) / statistics.median(times)


def measure_latencies(
    models: Mapping[str, nn.Module], inputs: Inputs, repeats: int = 10, warmup: int = 2
) -> dict[str, float]:
    """Median wall time (ms) of one forward pass per model, measured interleaved."""
    return {name: statistics.median(t) for name, t in measure_times(models, inputs, repeats, warmup).items()}


def measure_latency(model: nn.Module, inputs: Inputs, repeats: int = 10, warmup: int = 2) -> float:
    """Median wall time of one forward pass of one model, in milliseconds."""
    return measure_latencies({"model": model}, inputs, repeats, warmup)["model"]


@torch.no_grad()
def densified_copy(model: nn.Module, targets: Sequence[Target], seed: int = 0) -> nn.Module:
    """A copy whose zeros in targeted weights hold small random values: the dense baseline."""
    dense = copy.deepcopy(model)
    params = dict(dense.named_parameters())
    generator = torch.Generator().manual_seed(seed)
    for target in targets:
        weight = params[target.name]
        zero = weight == 0
        if bool(zero.any()):
            scale = float(weight[~zero].float().std()) if bool((~zero).sum() > 1) else 0.02
            noise = torch.randn(weight.shape, generator=generator).to(weight.device, weight.dtype) * (scale or 0.02)
            weight.copy_(torch.where(zero, noise, weight))
    return dense


# -- optional accelerated paths ---------------------------------------------------------------------
def _sparse_inference_converter() -> Optional[Callable[..., nn.Module]]:
    """``to_sparse_inference`` (CPU sparse kernels) when this installation has it."""
    try:
        from ..inference.convert import to_sparse_inference  # type: ignore[attr-defined]
    except ImportError:
        return None
    return to_sparse_inference


def _build_variant(label: str, build: Callable[[], nn.Module], built: dict, errors: dict) -> None:
    try:
        built[label] = build()
    except Exception as err:  # an optional path must not break the report: record why it is absent
        logger.warning("report: %s could not be built: %s", label, err)
        errors[label] = f"{type(err).__name__}: {err}"


# -- the report ----------------------------------------------------------------------------------
class SizeSpeedReport(dict):
    """A JSON-serialisable dict with ``layers``, ``totals``, ``model``, ``latency`` and ``verdict``."""

    def to_json(self) -> str:
        return json.dumps(self, indent=2, sort_keys=True) + "\n"

    def print(self, console: Any = None) -> None:
        """Rich tables and the verdict line (to the terminal by default)."""
        from .size_speed_render import print_report

        print_report(self, console)

    def __str__(self) -> str:
        from .size_speed_render import report_text

        return report_text(self)

    def plot(self, path: str) -> str:
        """Write a PNG (per-layer sparsity, FLOPs, size, latency) and return its path."""
        from .size_speed_render import plot_report

        return plot_report(self, path)


def _layer_rows(targets: Sequence[Target], flops: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for target in targets:
        weight = target.param.detach()
        numel, nonzero = weight.numel(), int(torch.count_nonzero(weight))
        layer_flops = flops.get(target.module_name, {"dense": 0, "sparse": 0.0})
        rows[target.name] = {
            "shape": list(weight.shape),
            "params": numel,
            "nonzeros": nonzero,
            "sparsity": 1.0 - nonzero / max(numel, 1),
            "pattern": detect_pattern(weight, target.in_dim),
            "compatible_2_4": is_24_compatible(weight, target.in_dim),
            "flops_dense": int(layer_flops["dense"]),
            "flops_sparse": float(layer_flops["sparse"]),
            "bytes": {
                dtype: {"dense": numel * size, "compressed": compressed_bytes(numel, nonzero, size)}
                for dtype, size in DTYPE_BYTES.items()
            },
        }
    return rows


def _overall_pattern(rows: Mapping[str, Mapping[str, Any]]) -> str:
    patterns = {row["pattern"] for row in rows.values()} - {"dense"}
    if not patterns:
        return "dense"
    return "2:4" if patterns == {"2:4"} else "unstructured"


def _totals(rows: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    params = sum(r["params"] for r in rows.values())
    nonzeros = sum(r["nonzeros"] for r in rows.values())
    bytes_ = {}
    for dtype in DTYPE_BYTES:
        dense = sum(r["bytes"][dtype]["dense"] for r in rows.values())
        compressed = sum(r["bytes"][dtype]["compressed"] for r in rows.values())
        bytes_[dtype] = {"dense": dense, "compressed": compressed, "ratio": compressed / max(dense, 1)}
    return {
        "params": params,
        "nonzeros": nonzeros,
        "sparsity": 1.0 - nonzeros / max(params, 1),
        "pattern": _overall_pattern(rows),
        "flops_dense": sum(r["flops_dense"] for r in rows.values()),
        "flops_sparse": sum(r["flops_sparse"] for r in rows.values()),
        "bytes": bytes_,
    }


def _model_totals(model: nn.Module, targets_total: Mapping[str, Any], flops: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Whole model: untargeted parameters stay dense in every encoding."""
    params = sum(p.numel() for p in model.parameters())
    nonzeros = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    other = params - targets_total["params"]
    bytes_ = {}
    for dtype, size in DTYPE_BYTES.items():
        dense = params * size
        compressed = other * size + targets_total["bytes"][dtype]["compressed"]
        bytes_[dtype] = {"dense": dense, "compressed": compressed, "ratio": compressed / max(dense, 1)}
    return {
        "params": params,
        "nonzeros": nonzeros,
        "flops_dense": sum(int(f["dense"]) for f in flops.values()),
        "flops_sparse": sum(float(f["sparse"]) for f in flops.values()),
        "bytes": bytes_,
    }


def verdict(totals: Mapping[str, Any], variants: Sequence[Mapping[str, Any]], device: str) -> str:
    """One honest sentence: pattern and sparsity, measured speedup per kernel kind, size ratio."""
    if totals["pattern"] == "dense":
        measured = [v for v in variants if v.get("ms") is not None]
        timing = f"; {measured[0]['ms']:.1f} ms per forward on this {device}" if measured else ""
        return f"dense ({totals['sparsity']:.1%} zeros): nothing for sparse kernels or compression to gain{timing}"
    head = f"{totals['pattern']} {totals['sparsity']:.0%}"
    base_spread = next((v.get("spread", 0.0) for v in variants if v["name"] == "dense"), 0.0)
    parts = []
    for variant in variants:
        if variant["name"] == "dense":
            continue
        kind = variant["name"].replace("sparse, ", "")
        if variant.get("speedup") is None:
            parts.append(f"{kind}: not measured ({variant.get('error', 'unavailable')})")
        else:
            noise = base_spread + variant.get("spread", 0.0)  # relative IQRs of both timings
            if variant["speedup"] >= max(SPEEDUP_THRESHOLD, 1.0 + noise):
                parts.append(f"{variant['speedup']:.2f}x faster with {kind} on this {device}")
            else:
                within = f", within timing noise +-{noise:.0%}" if noise >= SPEEDUP_THRESHOLD - 1.0 else ""
                parts.append(f"no speedup with {kind} on this {device} ({variant['speedup']:.2f}x{within})")
    if not parts:
        parts.append("latency not measured")
    size = totals["bytes"]["float32"]["ratio"]
    size_part = f"size {size:.2f}x with compressed=True (targeted weights, fp32; bf16 {totals['bytes']['bfloat16']['ratio']:.2f}x)"
    return f"{head}: " + "; ".join(parts) + f"; {size_part}"


def report(
    model: nn.Module,
    example_inputs: Optional[Inputs] = None,
    *,
    input_shape: Optional[Sequence[int]] = None,
    targets: Optional[Sequence[str]] = None,
    ignore: Optional[Sequence[str]] = None,
    measure: bool = True,
    repeats: int = 10,
    warmup: int = 2,
    sparse_kernels: bool = True,
    seed: int = 0,
) -> SizeSpeedReport:
    """Size and speed of ``model`` as it is (exact zeros of its targeted weights).

    ``example_inputs`` (a tensor or a dict of tensors) or ``input_shape`` (text: (batch, seq);
    image: (batch, channels, h, w)) fix the forward pass for FLOPs and timing. ``measure=False``
    skips the timings. ``targets``/``ignore`` are module-name regexes as in ``SparsityConfig``.
    The model is not modified (accelerated variants are measured on copies).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    inputs = example_inputs if example_inputs is not None else make_example_inputs(model, input_shape, seed)
    if not isinstance(inputs, (torch.Tensor, Mapping)):
        raise TypeError(f"example_inputs must be a tensor or a dict of tensors, got {type(inputs).__name__}")
    found = find_targets(model, list(targets) if targets else None, list(ignore) if ignore else None)
    was_training = model.training
    model.eval()  # copies made for the accelerated variants inherit eval mode
    try:
        flops = count_flops(model, inputs)
        rows = _layer_rows(found, flops)
        totals = _totals(rows)
        device = _device_of(model)
        variants: list[dict[str, Any]] = []
        if measure:
            variants = _measure_all(model, found, inputs, totals, device, repeats, warmup, sparse_kernels, seed)
    finally:
        model.train(was_training)
    shapes = {k: list(v.shape) for k, v in inputs.items()} if isinstance(inputs, Mapping) else list(inputs.shape)
    device_name = "GPU" if device.type == "cuda" else device.type.upper()
    return SizeSpeedReport(
        layers=rows,
        totals=totals,
        model=_model_totals(model, totals, flops),
        input_shapes=shapes,
        device=str(device),
        threads=torch.get_num_threads(),
        latency={"repeats": repeats, "warmup": warmup, "variants": variants},
        verdict=verdict(totals, variants, device_name) if measure else verdict(totals, [], device_name),
        notes=[
            "FLOPs: Linear/Conv layers only (2 per multiply-add); attention score products and elementwise ops excluded.",
            "compressed bytes: bitmask (1 bit per weight) + nonzero values; untargeted tensors stay dense.",
            "latency: median wall time of one forward pass; the dense baseline is a copy with the zeros refilled.",
            "speedup: median over interleaved rounds of dense time / variant time (paired, as to_sparse_inference decides).",
        ],
    )


def _measure_all(
    model: nn.Module,
    found: Sequence[Target],
    inputs: Inputs,
    totals: Mapping[str, Any],
    device: torch.device,
    repeats: int,
    warmup: int,
    sparse_kernels: bool,
    seed: int,
) -> list[dict[str, Any]]:
    """Latency of the dense baseline and of every way this model can run here."""
    if totals["pattern"] == "dense":
        return [{"name": "dense", "ms": measure_latency(model, inputs, repeats, warmup), "speedup": 1.0}]
    built: dict[str, nn.Module] = {}
    errors: dict[str, str] = {}
    _build_variant("dense", lambda: densified_copy(model, found, seed), built, errors)
    built["sparse, dense kernels"] = model
    convert = _sparse_inference_converter() if sparse_kernels else None
    if convert is not None and device.type == "cpu":
        _build_variant(
            "sparse kernels (to_sparse_inference)", lambda: convert(copy.deepcopy(model), inputs), built, errors
        )
    if totals["pattern"] == "2:4" and device.type == "cuda":
        from ..inference.semi_structured import to_semi_structured

        _build_variant("2:4 semi-structured kernels", lambda: to_semi_structured(copy.deepcopy(model)), built, errors)
    try:
        times = measure_times(built, inputs, repeats, warmup)
    except Exception as err:  # a converted copy that fails at run time: drop it, measure the rest
        logger.warning("report: timing failed (%s); measuring dense and sparse-with-dense-kernels only", err)
        errors.update({name: f"{type(err).__name__}: {err}" for name in built if name not in ("dense", "sparse, dense kernels")})
        times = measure_times({k: built[k] for k in ("dense", "sparse, dense kernels") if k in built}, inputs, repeats, warmup)
    timings = {name: statistics.median(t) for name, t in times.items()}
    order = ["dense", "sparse, dense kernels", "sparse kernels (to_sparse_inference)", "2:4 semi-structured kernels"]
    variants = []
    for name in order:
        if name in timings:
            variants.append({"name": name, "ms": timings[name], "spread": relative_spread(times[name])})
        elif name in errors:
            variants.append({"name": name, "ms": None, "error": errors[name]})
    for variant in variants:  # the paired speedup of hf_sparse.inference.timing, as to_sparse_inference decides
        name = variant["name"]
        variant["speedup"] = paired_speedup(times["dense"], times[name]) if "dense" in times and name in times else None
    return variants
