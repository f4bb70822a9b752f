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

The parts live by concern: :mod:`.flops` (counting), :mod:`.example_inputs` (input synthesis, the
dense baseline), :mod:`.latency` (timing), :mod:`.verdict` (the sentence); this module assembles them.
"""

from __future__ import annotations

import copy
import json
import logging
import statistics
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from torch import nn

from ..core.patterns import detect_pattern, is_24_compatible
from ..core.targets import Target, find_targets
from ..inference.timing import paired_speedup
from .example_inputs import Inputs, densified_copy, device_of, make_example_inputs
from .flops import compressed_bytes, count_flops
from .latency import measure_latencies, measure_latency, measure_times, relative_spread
from .verdict import SPEEDUP_THRESHOLD, verdict

logger = logging.getLogger(__name__)

DTYPE_BYTES = {"float32": 4, "bfloat16": 2}

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
        device = device_of(model)
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


__all__ = [
    "DTYPE_BYTES",
    "SPEEDUP_THRESHOLD",
    "SizeSpeedReport",
    "compressed_bytes",
    "count_flops",
    "densified_copy",
    "make_example_inputs",
    "measure_latencies",
    "measure_latency",
    "measure_times",
    "relative_spread",
    "report",
    "verdict",
]
