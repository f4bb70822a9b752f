"""Rendering of a size/speed report: rich tables and verdict in a terminal, plain text, a PNG."""

from __future__ import annotations

import io
import os
from typing import Any, Mapping

from ..io.files import atomic_path


def _human(value: float, unit: str) -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def rich_tables(report: Mapping[str, Any]) -> list:
    from rich.markup import escape
    from rich.table import Table

    layers = Table(title="Per-layer sparsity, FLOPs and size (targeted weights)")
    for column in ("layer", "params", "nonzeros", "sparsity", "pattern", "FLOPs dense", "FLOPs sparse",
                   "fp32 bytes", "fp32 compressed"):
        layers.add_column(column, justify="left" if column in ("layer", "pattern") else "right")
    for name, row in report["layers"].items():
        layers.add_row(
            name, f"{row['params']:,}", f"{row['nonzeros']:,}", f"{row['sparsity']:.2%}", row["pattern"],
            _human(row["flops_dense"], "FLOP"), _human(row["flops_sparse"], "FLOP"),
            _human(row["bytes"]["float32"]["dense"], "B"), _human(row["bytes"]["float32"]["compressed"], "B"),
        )
    t = report["totals"]
    layers.add_row(
        "[bold]targeted total", f"{t['params']:,}", f"{t['nonzeros']:,}", f"{t['sparsity']:.2%}", t["pattern"],
        _human(t["flops_dense"], "FLOP"), _human(t["flops_sparse"], "FLOP"),
        _human(t["bytes"]["float32"]["dense"], "B"), _human(t["bytes"]["float32"]["compressed"], "B"),
    )
    summary = Table(title="Model totals")
    summary.add_column("quantity")
    summary.add_column("value", justify="right")
    m = report["model"]
    summary.add_row("all parameters / nonzeros", f"{m['params']:,} / {m['nonzeros']:,}")
    summary.add_row("input", str(report["input_shapes"]))
    summary.add_row(
        "Linear/Conv FLOPs dense -> sparse", f"{_human(m['flops_dense'], 'FLOP')} -> {_human(m['flops_sparse'], 'FLOP')}"
    )
    for dtype, sizes in m["bytes"].items():
        summary.add_row(
            f"whole model {dtype}: dense -> compressed",
            f"{_human(sizes['dense'], 'B')} -> {_human(sizes['compressed'], 'B')} ({sizes['ratio']:.3f}x)",
        )
    for variant in report["latency"]["variants"]:
        value = f"{variant['ms']:.2f} ms" if variant.get("ms") is not None else escape(f"n/a ({variant.get('error', '')})")
        if variant.get("speedup") is not None:
            value += f"  ({variant['speedup']:.2f}x vs dense)"
        summary.add_row(f"latency: {variant['name']}", value)
    return [layers, summary]


def print_report(report: Mapping[str, Any], console: Any = None) -> None:
    from rich.console import Console
    from rich.markup import escape

    if console is None:
        console = Console()
        if not console.is_terminal:  # piped or captured: do not wrap layer names at 80 columns
            console = Console(width=200)
    for table in rich_tables(report):
        console.print(table)
    console.print(f"[bold]verdict:[/bold] {escape(report['verdict'])}")


def report_text(report: Mapping[str, Any]) -> str:
    from rich.console import Console

    buffer = io.StringIO()
    print_report(report, Console(file=buffer, width=160, color_system=None))
    return buffer.getvalue()


def plot_report(report: Mapping[str, Any], path: str) -> str:
    """Write a 2x2 figure to ``path`` (atomically) and return the path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    layers = report["layers"]
    names = [n.removesuffix(".weight") for n in layers]
    short = [n if len(n) <= 28 else "..." + n[-25:] for n in names]
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))

    ax = axes[0][0]
    ax.barh(range(len(layers)), [100 * r["sparsity"] for r in layers.values()], color="tab:blue")
    ax.set_yticks(range(len(layers)), short, fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("sparsity (%)")
    ax.set_title(f"per-layer sparsity (targeted total {report['totals']['sparsity']:.1%}, {report['totals']['pattern']})")

    ax = axes[0][1]
    model = report["model"]
    ax.bar(["dense", "sparse (theoretical)"], [model["flops_dense"] / 1e9, model["flops_sparse"] / 1e9],
           color=["tab:gray", "tab:green"])
    ax.set_ylabel("GFLOPs per forward (Linear/Conv)")
    ax.set_title(f"FLOPs, input {report['input_shapes']}")

    ax = axes[1][0]
    dtypes = list(model["bytes"])
    x = range(len(dtypes))
    ax.bar([i - 0.2 for i in x], [model["bytes"][d]["dense"] / 1e6 for d in dtypes], width=0.4, label="dense", color="tab:gray")
    ax.bar([i + 0.2 for i in x], [model["bytes"][d]["compressed"] / 1e6 for d in dtypes], width=0.4,
           label="bitmask + values", color="tab:orange")
    ax.set_xticks(list(x), dtypes)
    ax.set_ylabel("MB (whole model)")
    ax.legend()
    ax.set_title("size: dense vs compressed estimate")

    ax = axes[1][1]
    variants = [v for v in report["latency"]["variants"] if v.get("ms") is not None]
    if variants:
        ax.bar(range(len(variants)), [v["ms"] for v in variants], color="tab:purple")
        ax.set_xticks(range(len(variants)), [v["name"].replace(" (", "\n(") for v in variants], fontsize=7)
        for i, v in enumerate(variants):
            if v.get("speedup"):
                ax.annotate(f"{v['speedup']:.2f}x", (i, v["ms"]), ha="center", va="bottom", fontsize=8)
    else:
        ax.text(0.5, 0.5, "latency not measured", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("ms per forward (median)")
    ax.set_title(f"measured latency on {report['device']} ({report['threads']} threads)")

    fig.suptitle(report["verdict"], fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
