"""LoRA (peft) on sparse models: train adapters over an exactly sparse base, merge without densifying.

A plain ``peft`` merge adds the dense delta ``scaling * B @ A`` to every adapted weight and so
silently destroys the sparsity of the base. Here:

- ``PeftSparsifier`` (what ``SparseTrainer`` builds for a ``PeftModel``) knows the base masks
  (from a ``Sparsifier``/``SparseTrainer``, a ``{param name: bool mask}`` dict, a folder written by
  ``SparseTrainer.save_model``, or inferred from exact zeros) and keeps the base exactly sparse;
  with a ``SparsityConfig`` it also prunes the frozen base further while the adapters train.
- ``merge_and_unload`` merges the adapters, re-applies the base masks and reports what masking
  the delta cost (how much of the delta was dropped, and the change in logits on a batch).

Masks are matched by the name a parameter has without peft (``core.peft_layout.canonical_name``), so
masks from the sparse base model, from the peft model and from the merged model are interchangeable.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union

import torch
from torch import nn

from ..config import parse_nm
from ..core.masks import nm_mask, nonzero_mask, overall_sparsity
from ..core.patterns import nm_pattern
from ..core.peft_layout import base_prefix, canonical_name, is_peft_model, tuner_layers
from .peft_masks import Masks, MaskSource, collect_masks, masks_from_directory
from .peft_sparsifier import MaskedLoraDeltas, PeftSparsifier
from ..core.targets import Conv1D

logger = logging.getLogger(__name__)

NM_POLICIES = ("error", "keep_mask", "reproject")


@dataclass
class MergeResult:
    """A merged model at exactly the base sparsity, and what masking the LoRA delta cost.

    ``delta_dropped``: per adapted layer, ``||delta * ~mask|| / ||delta||`` (0 = nothing lost,
    1 = all of it). ``max_logit_diff``/``mean_logit_diff``/``changed_predictions``: on the batch
    given to ``merge_and_unload`` (None without one), the masked merge against the model before the
    merge (the model as trained: dense delta with plain LoRA, masked with ``MaskedLoraDeltas``).
    """

    model: nn.Module
    masks: Masks
    sparsity: float
    delta_dropped: dict[str, float] = field(default_factory=dict)
    max_logit_diff: Optional[float] = None
    mean_logit_diff: Optional[float] = None
    changed_predictions: Optional[float] = None

    @property
    def mean_delta_dropped(self) -> float:
        values = list(self.delta_dropped.values())
        return sum(values) / len(values) if values else 0.0

    def __str__(self) -> str:
        text = (
            f"merged at sparsity {self.sparsity:.4f}; masking dropped {self.mean_delta_dropped:.1%} of the "
            f"LoRA delta (norm, mean over {len(self.delta_dropped)} layers)"
        )
        if self.max_logit_diff is not None:
            text += (
                f"; logits vs before the merge: max |diff| {self.max_logit_diff:.4g}, mean {self.mean_logit_diff:.4g}"
            )
            if self.changed_predictions is not None:
                text += f", {self.changed_predictions:.1%} predictions changed"
        return text

    def save_pretrained(self, directory: Union[str, os.PathLike], **kwargs: Any) -> None:
        """The merged model and its masks in hf_sparse's dense layout (``hf_sparse.save_sparse``)."""
        from ..io.save import save_sparse

        save_sparse(self.model, os.fspath(directory), masks=self.masks, **kwargs)


def _logits(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, Mapping):
        logits = output.get("logits")
    if logits is None and isinstance(output, (tuple, list)):
        logits = output[0]
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"cannot find logits in the model output ({type(output).__name__})")
    return logits


@torch.no_grad()
def _forward(model: nn.Module, inputs: Mapping[str, Any]) -> torch.Tensor:
    device = next(model.parameters()).device
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    was_training = model.training
    model.eval()
    try:
        return _logits(model(**batch)).detach().float().clone()
    finally:
        model.train(was_training)


def merge_and_unload(
    peft_model: nn.Module,
    masks: MaskSource = None,
    *,
    inputs: Optional[Mapping[str, Any]] = None,
    nm: str = "error",
    safe_merge: bool = False,
    adapter_names: Optional[list[str]] = None,
) -> MergeResult:
    """Merge the LoRA adapters into a sparse base and re-apply the base masks.

    ``masks``: any mask source (see ``MaskSource``); layers it does not cover use the zeros of
    their base weight. ``inputs``: a batch (dict of tensors) on which to measure the change in
    logits caused by masking the delta. ``nm``: what to do with adapted layers whose mask is N:M
    (2:4, ...): ``"error"`` (default) refuses, ``"keep_mask"`` re-applies the base N:M mask,
    ``"reproject"`` picks a new N:M mask from the merged weights (top-N |w| in every group of M;
    fewer dropped deltas, but kept positions of the base may change). Both keep the exact N:M pattern.
    Modifies ``peft_model`` in place, like peft's own ``merge_and_unload``.
    """
    if nm not in NM_POLICIES:
        raise ValueError(f"nm must be one of {NM_POLICIES}, got {nm!r}")
    if not is_peft_model(peft_model):
        raise TypeError(f"merge_and_unload needs a peft model (PeftModel or LoraModel), got {type(peft_model).__name__}")
    if inputs is not None and not isinstance(inputs, Mapping):
        raise TypeError(f"inputs must be a dict of model inputs, got {type(inputs).__name__}")
    given, pattern = collect_masks(masks)
    prefix = base_prefix(peft_model)
    if given is not None and not set(given) & {canonical_name(n, prefix) for n, _ in peft_model.named_parameters()}:
        raise ValueError(
            f"masks name no parameter of this model (e.g. {sorted(given)[:3]}); masks are matched by parameter "
            "name without peft's 'base_model.model.' and '.base_layer'"
        )
    layers = list(tuner_layers(peft_model))
    if not layers:
        raise ValueError("the peft model has no adapter layers to merge")
    adapted = _adapted_masks(layers, given, prefix)
    nm_layers = _nm_layers(layers, adapted, given, pattern, prefix)
    if nm_layers and nm == "error":
        shown = ", ".join(f"{n} ({p[0]}:{p[1]})" for n, p in list(nm_layers.items())[:3])
        raise ValueError(
            f"adapters sit on N:M-sparse layers ({shown}{', ...' if len(nm_layers) > 3 else ''}): a merged "
            "dense delta breaks the pattern. Pass nm='keep_mask' to re-apply the base N:M masks (drops the "
            "delta at pruned positions) or nm='reproject' to choose a new N:M mask from the merged weights."
        )
    # kept on the CPU, so measuring the dropped delta costs no accelerator memory
    before = {name: layer.get_base_layer().weight.detach().to("cpu", copy=True) for name, layer in layers}
    reference = _forward(peft_model, inputs) if inputs is not None else None

    merged = peft_model.merge_and_unload(safe_merge=safe_merge, adapter_names=adapter_names)
    params = dict(merged.named_parameters())
    final: Masks = {}
    dropped: dict[str, float] = {}
    with torch.no_grad():
        for name, mask in {**(given or {}), **adapted}.items():
            param = params.get(name)
            if param is None:
                if name in adapted:
                    raise RuntimeError(f"{name} vanished in the merge")
                continue  # a mask for a layer the merged model lacks (e.g. a peft-only module)
            if mask.shape != param.shape:
                raise ValueError(f"mask for {name}: shape {tuple(mask.shape)} vs weight {tuple(param.shape)}")
            mask = mask.to(param.device)
            if name in nm_layers and nm == "reproject":
                n, m = nm_layers[name]
                mask = nm_mask(param.detach().abs().float(), n, m, in_dim=_in_dim(merged, name))
            layer_name = _layer_of(name, layers, prefix)
            if layer_name is not None:
                delta = param.detach().float().cpu() - before.pop(layer_name).float()
                norm = float(delta.norm())
                dropped[name] = float(delta[~mask.cpu()].norm()) / norm if norm > 0 else 0.0
            param.masked_fill_(~mask, 0.0)
            final[name] = mask
    result = MergeResult(merged, final, overall_sparsity(final), dropped)
    if reference is not None:
        after = _forward(merged, inputs)
        diff = (after - reference).abs()
        result.max_logit_diff = float(diff.max())
        result.mean_logit_diff = float(diff.mean())
        if reference.dim() >= 2 and reference.shape[-1] > 1:
            changed = after.argmax(-1) != reference.argmax(-1)
            result.changed_predictions = float(changed.float().mean())
    logger.info("%s", result)
    return result


def _adapted_masks(layers: list[tuple[str, nn.Module]], given: Optional[Masks], prefix: str) -> Masks:
    """Masks (canonical names) of the adapted base weights: given, else their exact zeros."""
    masks: Masks = {}
    inferred = []
    for module_name, layer in layers:
        weight = layer.get_base_layer().weight
        name = canonical_name(module_name, prefix) + ".weight"
        if given is not None and name in given:
            masks[name] = given[name]
        elif bool(torch.any(weight == 0)):
            masks[name] = nonzero_mask(weight)
            inferred.append(name)
    if not masks:
        raise ValueError(
            "cannot merge into a sparse base: its masks are unknown (masks=None) and cannot be inferred "
            f"(no adapted base weight has an exact zero: {[canonical_name(n, prefix) for n, _ in layers][:4]}). "
            "Pass masks= (a SparseTrainer, Sparsifier, {name: bool mask} dict or a saved folder), or use "
            "peft's merge_and_unload() for a dense base."
        )
    if given is not None and inferred:
        logger.info("masks of %d adapted layers inferred from exact zeros: %s", len(inferred), inferred[:4])
    dense = [canonical_name(n, prefix) for n, _ in layers if canonical_name(n, prefix) + ".weight" not in masks]
    if dense:
        logger.info("adapted layers with a dense base, merged densely: %s", dense[:4])
    return masks


def _nm_layers(
    layers: list[tuple[str, nn.Module]], masks: Masks, given: Optional[Masks], pattern: Optional[str], prefix: str
) -> dict[str, tuple[int, int]]:
    """Adapted layers whose mask is N:M: declared by the mask source's config, else detected."""
    declared = parse_nm(pattern) if pattern else None
    given_names = set(given or {})
    found: dict[str, tuple[int, int]] = {}
    for module_name, layer in layers:
        name = canonical_name(module_name, prefix) + ".weight"
        if name not in masks:
            continue
        in_dim = 0 if isinstance(layer.get_base_layer(), Conv1D) else 1
        nm = declared if given_names and name in given_names else nm_pattern(masks[name], in_dim)
        if nm is not None:
            found[name] = nm
    return found


def _layer_of(param_name: str, layers: list[tuple[str, nn.Module]], prefix: str) -> Optional[str]:
    for module_name, _ in layers:
        if canonical_name(module_name, prefix) + ".weight" == param_name:
            return module_name
    return None


def _in_dim(model: nn.Module, param_name: str) -> int:
    module = model.get_submodule(param_name.rsplit(".", 1)[0])
    return 0 if isinstance(module, Conv1D) else 1


__all__ = [
    "MaskedLoraDeltas",
    "MergeResult",
    "PeftSparsifier",
    "collect_masks",
    "masks_from_directory",
    "merge_and_unload",
]
