"""sparsity_report: what is really zero in a model, per layer and overall.

Counts exact zeros in the weights (not masks), so it tells the truth about any model,
trained by hf_sparse or not.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

import torch
from torch import nn

from ..core.targets import find_targets


class SparsityReport(dict):
    """A dict ``{"layers": {name: {...}}, "numel", "nonzero", "sparsity"}`` that prints as a table."""

    def __str__(self) -> str:
        layers = self["layers"]
        width = max([len("parameter")] + [len(n) for n in layers])
        lines = [f"{'parameter':<{width}}  {'shape':>18}  {'numel':>11}  {'nonzero':>11}  {'sparsity':>8}"]
        for name, row in layers.items():
            shape = "x".join(str(s) for s in row["shape"])
            lines.append(
                f"{name:<{width}}  {shape:>18}  {row['numel']:>11,}  {row['nonzero']:>11,}  {row['sparsity']:>8.2%}"
            )
        lines.append(
            f"{'total':<{width}}  {'':>18}  {self['numel']:>11,}  {self['nonzero']:>11,}  {self['sparsity']:>8.2%}"
        )
        return "\n".join(lines)


@torch.no_grad()
def sparsity_report(
    model: nn.Module,
    targets: Optional[Iterable[str]] = None,
    ignore: Optional[Iterable[str]] = None,
) -> SparsityReport:
    """Per-layer and overall sparsity of the weights hf_sparse would target by default.

    ``targets``/``ignore`` are module-name regexes, as in ``SparsityConfig``.
    """
    layers: dict[str, Any] = {}
    for target in find_targets(model, list(targets) if targets else None, list(ignore) if ignore else None):
        weight = target.param
        nonzero = int(torch.count_nonzero(weight))
        layers[target.name] = {
            "shape": list(weight.shape),
            "numel": weight.numel(),
            "nonzero": nonzero,
            "sparsity": 1.0 - nonzero / max(weight.numel(), 1),
        }
    numel = sum(r["numel"] for r in layers.values())
    nonzero = sum(r["nonzero"] for r in layers.values())
    return SparsityReport(layers=layers, numel=numel, nonzero=nonzero, sparsity=1.0 - nonzero / max(numel, 1))
