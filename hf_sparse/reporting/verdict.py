"""The one sentence a report ends with: what the user gets, measured, with the noise taken into account."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

#: A measured ratio below this (or below 1 + the timings' relative spread) is "no speedup".
SPEEDUP_THRESHOLD = 1.10


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


__all__ = ["SPEEDUP_THRESHOLD", "verdict"]
