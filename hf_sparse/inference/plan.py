"""What ``to_sparse_inference`` decided, per layer and for the whole model, and where it was measured.

A :class:`SparseInferencePlan` is a list of :class:`LayerChoice` (kernel, sparsity, measured
speedup with its confidence bound) plus the whole-model figure and the machine it was measured on
(:func:`machine_info`: CPU model, threads, torch version). It prints as a table, converts to and
from JSON, and is saved beside a model as ``sparse_inference_plan.json`` so that a later load on
the same kind of machine applies it without timing (:func:`same_machine` says what differs when
it is not).
"""

from __future__ import annotations

import json
import logging
import os
import platform
from dataclasses import asdict, dataclass, fields
from typing import Any, Optional, Union

import torch

logger = logging.getLogger(__name__)

PLAN_FILE = "sparse_inference_plan.json"
PLAN_VERSION = 1
#: Fields of :func:`machine_info` that must match for a saved plan to apply without timing.
MACHINE_KEYS = ("device", "cpu", "arch", "threads", "torch")


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
    # the transposed layout a chained sparse producer hands over
    timed_layout: str = ""
    speedup_low: Optional[float] = None  # the speedup's confidence bound (sign test over rounds)
    speedup_high: Optional[float] = None
    rounds: int = 0
    settled: bool = True  # False: the bound straddled min_speedup at the round cap; the median decided

    @classmethod
    def from_dict(cls, data: dict) -> "LayerChoice":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if values.get("input_shape") is not None:
            values["input_shape"] = tuple(values["input_shape"])
        return cls(**values)


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; else what ``platform`` knows)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: Union[str, torch.device] = "cpu") -> dict[str, Any]:
    """Where a timing was taken: device type, CPU model, architecture, threads, torch version."""
    device = torch.device(device)
    info = {
        "device": device.type,
        "cpu": cpu_model(),
        "arch": platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "logical_cpus": os.cpu_count(),
    }
    if device.type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def same_machine(saved: dict, current: dict) -> list[str]:
    """What differs between two :func:`machine_info` records (empty: the same kind of machine)."""
    keys = MACHINE_KEYS + (("gpu",) if "gpu" in saved or "gpu" in current else ())
    return [f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)]


class SparseInferencePlan(list):
    """The per-layer choices (a list of :class:`LayerChoice`) that prints as a table."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.threads: int = torch.get_num_threads()
        self.machine: dict[str, Any] = {}
        self.transposed_outputs: list[str] = []
        self.shared_inputs: list[list[str]] = []  # groups of sibling layers that share one transposed input copy
        self.model_speedup: Optional[float] = None  # whole model, dense time / converted time
        self.model_speedup_low: Optional[float] = None
        self.model_speedup_high: Optional[float] = None
        self.model_rounds: int = 0
        self.model_settled: bool = True
        self.reverted: bool = False  # True when the whole model was not faster and went back to dense
        self.input_shapes: Any = None
        self.source: str = "measured"  # or "saved plan (<folder>)" when applied without timing

    @property
    def converted(self) -> list[LayerChoice]:
        return [c for c in self if c.kernel != "dense"]

    def to_dict(self) -> dict:
        return {
            "version": PLAN_VERSION,
            "threads": self.threads,
            "machine": dict(self.machine),
            "input_shapes": self.input_shapes,
            "transposed_outputs": list(self.transposed_outputs),
            "shared_inputs": [list(g) for g in self.shared_inputs],
            "model_speedup": self.model_speedup,
            "model_speedup_low": self.model_speedup_low,
            "model_speedup_high": _finite(self.model_speedup_high),
            "model_rounds": self.model_rounds,
            "model_settled": self.model_settled,
            "reverted": self.reverted,
            "layers": [{**asdict(c), "speedup_high": _finite(c.speedup_high)} for c in self],
        }

    @classmethod
    def from_dict(cls, data: dict, where: str = "plan") -> "SparseInferencePlan":
        if not isinstance(data, dict) or not isinstance(data.get("layers"), list):
            raise ValueError(f"{where}: not a sparse inference plan (a JSON object with a 'layers' list)")
        if int(data.get("version", 1)) > PLAN_VERSION:
            raise ValueError(f"{where}: plan version {data['version']} is newer than this hf_sparse reads ({PLAN_VERSION})")
        try:
            plan = cls(LayerChoice.from_dict(layer) for layer in data["layers"])
        except TypeError as err:
            raise ValueError(f"{where}: a layer entry is malformed: {err}") from err
        for key in ("threads", "machine", "input_shapes", "transposed_outputs", "shared_inputs", "model_speedup",
                    "model_speedup_low", "model_speedup_high", "model_rounds", "model_settled", "reverted"):
            if key in data:
                setattr(plan, key, data[key])
        return plan

    def save(self, directory: Union[str, os.PathLike]) -> str:
        """Write the plan as ``sparse_inference_plan.json`` into ``directory`` (atomically); returns the path."""
        from ..io.files import atomic_write_text

        path = os.path.join(os.fspath(directory), PLAN_FILE)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n")
        return path

    def __str__(self) -> str:
        width = max([len("layer")] + [len(c.name) for c in self])
        lines = [f"{'layer':<{width}}  {'sparsity':>8}  {'kernel':>6}  {'dense ms':>9}  {'sparse ms':>9}  {'speedup':>7}  {'bound':>13}  reason"]
        for c in self:
            ms = lambda v: f"{v:9.3f}" if v is not None else f"{'-':>9}"  # noqa: E731
            speed = f"{c.speedup:6.2f}x" if c.speedup is not None else f"{'-':>7}"
            lines.append(
                f"{c.name:<{width}}  {c.sparsity:>8.2%}  {c.kernel:>6}  {ms(c.dense_ms)}  {ms(c.sparse_ms)}  {speed}  "
                f"{_bound(c.speedup_low, c.speedup_high):>13}  {c.reason}"
            )
        lines.append(f"{len(self.converted)}/{len(self)} layers on sparse kernels ({self.threads} threads; {self.source})")
        if self.transposed_outputs:
            lines.append(f"transposed outputs (no copy) for: {', '.join(self.transposed_outputs)}")
        if self.shared_inputs:
            lines.append(f"{len(self.shared_inputs)} groups of layers share one transposed input")
        if self.model_speedup is not None:
            verdict = "reverted to dense: not faster" if self.reverted else "kept"
            bound = _bound(self.model_speedup_low, self.model_speedup_high)
            settled = "" if self.model_settled else ", bound straddled the threshold at the round cap"
            lines.append(
                f"whole model: {self.model_speedup:.2f}x vs dense, 90% bound {bound} over {self.model_rounds} rounds "
                f"({verdict}{settled})"
            )
        return "\n".join(lines)


def _finite(value: Optional[float]) -> Optional[float]:
    """JSON has no infinity: an unbounded side is written as null."""
    return None if value is None or value == float("inf") else value


def _bound(low: Optional[float], high: Optional[float]) -> str:
    if low is None:
        return "-"
    return f"[{low:.2f}, {'inf' if high is None or high == float('inf') else f'{high:.2f}'}]"


def read_plan(directory: Union[str, os.PathLike]) -> Optional[SparseInferencePlan]:
    """The plan saved in ``directory`` (None when there is none)."""
    path = os.path.join(os.fspath(directory), PLAN_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is corrupt: {err}") from err
    return SparseInferencePlan.from_dict(data, where=path)


__all__ = ["LayerChoice", "PLAN_FILE", "SparseInferencePlan", "machine_info", "read_plan", "same_machine"]
