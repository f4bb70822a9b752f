"""The sparse model card: README.md with YAML front matter, sparsity table, method, results, plots.

Rendered from ``hf_sparse/templates/model_card.md`` (``string.Template``); plots are PNGs drawn
with matplotlib's Agg backend from ``trainer.state.log_history`` and the masks.
"""

from __future__ import annotations

import logging
import os
from importlib import resources
from string import Template
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from huggingface_hub import ModelCardData

from .files import atomic_path, atomic_write_text

logger = logging.getLogger(__name__)

CARD_NAME = "README.md"
SPARSITY_PLOT = "sparsity_vs_step.png"
LAYER_PLOT = "layer_sparsity.png"


_CARD_MARK = "<!-- written by hf_sparse"


def is_hf_sparse_card(path: str) -> bool:
    """Whether the README.md at ``path`` is a card hf_sparse wrote (a hand-written one is never replaced by export)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return _CARD_MARK in handle.read()
    except OSError:
        return False


def template_text() -> str:
    return resources.files("hf_sparse").joinpath("templates/model_card.md").read_text(encoding="utf-8")


def _as_list(value: Union[str, Sequence[str], None]) -> Optional[list[str]]:
    if value is None:
        return None
    return [value] if isinstance(value, str) else list(value)


def _layers(masks: Mapping[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    return {
        name: {"shape": list(m.shape), "numel": m.numel(), "kept": int(m.sum()), "sparsity": 1 - int(m.sum()) / max(m.numel(), 1)}
        for name, m in masks.items()
    }


def plot_training(log_history: Sequence[Mapping[str, Any]], path: str) -> bool:
    """Sparsity (and loss, on a second axis) vs optimizer step; False when the logs hold no sparsity."""
    points = [(e["step"], e["sparsity"]) for e in log_history if "sparsity" in e and "step" in e]
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(*zip(*points), color="tab:blue", marker=".", label="sparsity")
    targets = [(e["step"], e["target_sparsity"]) for e in log_history if "target_sparsity" in e and "step" in e]
    if targets:
        ax.plot(*zip(*targets), color="tab:blue", linestyle="--", alpha=0.6, label="target sparsity")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("sparsity")
    ax.set_ylim(0, 1)
    losses = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    if losses:
        ax2 = ax.twinx()
        ax2.plot(*zip(*losses), color="tab:red", alpha=0.7, label="training loss")
        ax2.set_ylabel("training loss")
        ax2.legend(loc="lower right")
    ax.legend(loc="upper left")
    ax.set_title("Sparsity and loss during training")
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)
    return True


def plot_layers(layers: Mapping[str, Mapping[str, Any]], path: str) -> bool:
    if not layers:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n.removesuffix(".weight") for n in layers]
    values = [r["sparsity"] for r in layers.values()]
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.22 * len(names) + 1)))
    ax.barh(range(len(names)), values, color="tab:blue")
    ax.set_yticks(range(len(names)), labels=names, fontsize=6)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("sparsity")
    ax.set_title("Per-layer sparsity")
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)
    return True


def _save_figure(fig: Any, path: str) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def _how_to_load(layout: str, repo: str) -> str:
    if layout == "dense":
        return (
            "Plain transformers loads it (the zeros are stored densely); hf_sparse also restores the masks:\n\n"
            f"```python\nfrom transformers import AutoModel\nmodel = AutoModel.from_pretrained(\"{repo}\")\n\n"
            f"import hf_sparse  # not on PyPI: pip install -e a clone of hf_sparse\nmodel, masks = hf_sparse.load_sparse(\"{repo}\")  # local folder\n```"
        )
    if layout == "native":
        return (
            "This folder is in hf_sparse's compressed layout: plain `from_pretrained` refuses it (no "
            "`model.safetensors`). Load it with hf_sparse, which gives the exact weights and the masks:\n\n"
            f"```python\nimport hf_sparse  # not on PyPI: pip install -e a clone of hf_sparse\nmodel, masks = hf_sparse.load_sparse(\"{repo}\")"
            "  # a local folder (download it first, e.g. huggingface_hub.snapshot_download)\n```"
        )
    return (
        "This folder uses the compressed-tensors 0.14 `sparse-bitmask` layout. **transformers >= 5.10 "
        "cannot read it and silently loads random weights for the compressed layers.** Load it with "
        "hf_sparse, or with transformers <= 4.55 + compressed-tensors 0.14:\n\n"
        f"```python\nimport hf_sparse  # not on PyPI: pip install -e a clone of hf_sparse\nmodel, masks = hf_sparse.load_sparse(\"{repo}\")\n```"
    )


def write_model_card(
    directory: str,
    masks: Optional[Mapping[str, torch.Tensor]] = None,
    sparsity_config: Any = None,
    log_history: Optional[Sequence[Mapping[str, Any]]] = None,
    eval_results: Optional[Mapping[str, float]] = None,
    model_name: Optional[str] = None,
    base_model: Optional[str] = None,
    datasets: Union[str, Sequence[str], None] = None,
    metrics: Union[str, Sequence[str], None] = None,
    tags: Union[str, Sequence[str], None] = None,
    language: Union[str, Sequence[str], None] = None,
    license: Optional[str] = None,
    layout: Optional[str] = None,
    notes: Optional[Sequence[str]] = None,
) -> str:
    """Write ``README.md`` (and the PNG plots) into a saved folder; returns the card's path.

    Masks default to those stored in the folder; the layout is detected from its files (a folder
    without weights yet, e.g. a Trainer's output_dir before ``save_model``, is described as dense).
    """
    from .. import __version__
    from .load import describe, detect_format

    if layout is None:
        try:
            layout = detect_format(directory)
        except FileNotFoundError:
            if masks is None:
                raise
            os.makedirs(directory, exist_ok=True)
            layout = "dense"
    if masks is None:
        layers = {n: {k: r[k] for k in ("shape", "numel", "kept", "sparsity")} for n, r in describe(directory)["layers"].items()}
    else:
        layers = _layers(masks)
    if sparsity_config is None:
        config_dict = describe(directory).get("sparsity_config") or {}
    else:
        config_dict = sparsity_config if isinstance(sparsity_config, Mapping) else sparsity_config.to_dict()
    numel = sum(r["numel"] for r in layers.values())
    kept = sum(r["kept"] for r in layers.values())
    overall = 1 - kept / max(numel, 1)
    metric_names = _as_list(metrics) or sorted(
        {k.removeprefix("eval_") for k in (eval_results or {}) if k not in ("eval_loss", "epoch") and not k.endswith(("runtime", "per_second"))}
    ) or None
    data = ModelCardData(
        library_name="transformers" if layout == "dense" else "hf_sparse",
        tags=sorted({"sparse", "hf_sparse", "pruning", *(_as_list(tags) or [])}),
        base_model=base_model,
        datasets=_as_list(datasets),
        metrics=metric_names,
        language=_as_list(language),
        license=license,
    )
    plots = []
    if log_history and plot_training(log_history, os.path.join(directory, SPARSITY_PLOT)):
        plots.append(f"![sparsity and loss vs step]({SPARSITY_PLOT})")
    if plot_layers(layers, os.path.join(directory, LAYER_PLOT)):
        plots.append(f"![per-layer sparsity]({LAYER_PLOT})")
    method = (
        "\n".join(f"- `{k}`: `{config_dict[k]}`" for k in sorted(config_dict) if config_dict[k] not in (None, {}, []))
        if config_dict
        else "Not recorded (no sparsity config was saved with this folder)."
    )
    results = (
        "| metric | value |\n| --- | ---: |\n" + "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in sorted(eval_results.items()))
        if eval_results
        else "No evaluation results were recorded."
    )
    files = "\n".join(f"- `{n}`" for n in sorted(os.listdir(directory)) if not n.startswith((".", "checkpoint-")))
    name = model_name or os.path.basename(os.path.abspath(directory))
    text = Template(template_text()).safe_substitute(
        front_matter=data.to_yaml(),
        model_name=name,
        overall=f"{overall:.2%}",
        kept=f"{kept:,}",
        numel=f"{numel:,}",
        layout=layout,
        layer_table="\n".join(
            f"| `{n}` | {'x'.join(map(str, r['shape']))} | {r['numel']:,} | {r['kept']:,} | {r['sparsity']:.2%} |" for n, r in layers.items()
        ),
        method=method,
        notes="\n".join(f"- {line}" for line in notes) if notes else "None.",
        eval_results=results,
        plots="\n\n".join(plots) or "No training logs were available.",
        how_to_load=_how_to_load(layout, name),
        files=files,
        hf_sparse_version=__version__,
    )
    path = os.path.join(directory, CARD_NAME)
    atomic_write_text(path, text)
    return path
