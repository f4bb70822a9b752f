"""LoRA (peft) on sparse models: train adapters over an exactly sparse base, merge without densifying.

A plain ``peft`` merge adds the dense delta ``scaling * B @ A`` to every adapted weight and so
silently destroys the sparsity of the base. Here:

- ``PeftSparsifier`` (what ``SparseTrainer`` builds for a ``PeftModel``) knows the base masks
  (from a ``Sparsifier``/``SparseTrainer``, a ``{param name: bool mask}`` dict, a folder written by
  ``SparseTrainer.save_model``, or inferred from exact zeros) and keeps the base exactly sparse;
  with a ``SparsityConfig`` it also prunes the frozen base further while the adapters train.
- ``merge_and_unload`` merges the adapters, re-applies the base masks and reports what masking
  the delta cost (how much of the delta was dropped, and the change in logits on a batch).

Masks are matched by the name a parameter has without peft (``peft_layout.canonical_name``), so
masks from the sparse base model, from the peft model and from the merged model are interchangeable.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union

import torch
from torch import nn

from .checkpoint import load_sparsity_state, save_sparsity_state
from .config import SparsityConfig, parse_nm
from .masks import nm_mask, overall_sparsity
from .methods.base import Masks, PruningMethod
from .peft_layout import base_prefix, canonical_name, is_peft_model, tuner_layers
from .sparsifier import Sparsifier
from .targets import Conv1D, find_targets

logger = logging.getLogger(__name__)

#: What may name base masks: a Sparsifier, anything with ``.sparsifier`` (a SparseTrainer), a
#: ``{param name: bool tensor}`` mapping, a folder written by ``SparseTrainer.save_model``, or None
#: (infer from exact zeros).
MaskSource = Union[None, Sparsifier, Mapping[str, torch.Tensor], str, os.PathLike, Any]

# The prefix PeftModel puts before the base model's names (LoRA and every other tuner model).
_PEFT_PREFIX = "base_model.model."
NM_POLICIES = ("error", "keep_mask", "reproject")
_NM_CANDIDATES = ((2, 4), (1, 4), (4, 8), (1, 2))


# -- where masks come from ---------------------------------------------------------------------------
def masks_from_directory(directory: Union[str, os.PathLike]) -> tuple[Masks, Optional[str]]:
    """(masks, pattern) saved by ``SparseTrainer.save_model`` or ``MergeResult.save_pretrained``.

    The one place that reads hf_sparse mask files, so a new export format only changes this.
    """
    state, config = load_sparsity_state(os.fspath(directory))
    pattern = config.get("pattern") if isinstance(config, Mapping) else None
    return dict(state["masks"]), pattern


def _as_bool_masks(masks: Mapping[str, Any]) -> Masks:
    out: Masks = {}
    for name, mask in masks.items():
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"masks[{name!r}] must be a torch.Tensor, got {type(mask).__name__}")
        if mask.dtype != torch.bool and not bool(torch.all((mask == 0) | (mask == 1))):
            raise ValueError(f"masks[{name!r}] must be a bool mask (True = kept) or hold only 0/1")
        out[str(name)] = mask.to(torch.bool)
    return out


def collect_masks(source: MaskSource) -> tuple[Optional[Masks], Optional[str]]:
    """(masks keyed by canonical parameter name, "N:M"/"unstructured"/None) from any mask source."""
    if source is None:
        return None, None
    pattern: Optional[str] = None
    sparsifier = getattr(source, "sparsifier", source)
    if isinstance(sparsifier, Sparsifier):
        masks, pattern = sparsifier.masks, sparsifier.config.pattern
    elif isinstance(source, (str, os.PathLike)):
        if not os.path.isdir(source):
            raise FileNotFoundError(f"base masks: {os.fspath(source)!r} is not a folder written by SparseTrainer.save_model")
        masks, pattern = masks_from_directory(source)
    elif isinstance(source, Mapping):
        masks = source
    else:
        raise TypeError(
            "base masks must be a Sparsifier, a SparseTrainer, a {param name: bool tensor} dict, "
            f"a folder written by SparseTrainer.save_model, or None; got {type(source).__name__}"
        )
    canonical = {canonical_name(n, _PEFT_PREFIX): m for n, m in _as_bool_masks(masks).items()}
    return canonical, pattern


def _detect_nm(mask: torch.Tensor, in_dim: int) -> Optional[tuple[int, int]]:
    """The N:M pattern a mask follows exactly (N kept in every group of M along ``in_dim``), if any."""
    if mask.dim() < 2:
        return None
    moved = mask.movedim(in_dim, -1)
    for n, m in _NM_CANDIDATES:
        if moved.shape[-1] % m == 0 and bool(torch.all(moved.reshape(-1, m).sum(-1) == n)):
            return n, m
    return None


# -- training: a Sparsifier that starts from the base masks -----------------------------------------
class KeepBaseMasks(PruningMethod):
    """No pruning of its own: the masks stay those of the sparse base (never an update step)."""

    name = "keep_base_masks"

    def is_update_step(self, step: int) -> bool:
        return False


class PeftSparsifier(Sparsifier):
    """The mask engine for a model whose base is already sparse, typically a peft LoRA model.

    ``config=None`` keeps the base masks fixed (targets: exactly the masked layers). With a
    ``SparsityConfig`` its method prunes the base further, starting from the base masks; under
    LoRA the base is frozen, so the method sees no gradients: magnitude methods (gmp, oneshot)
    work, and score the *merged* weight ``W + scaling * B @ A`` by default (``score_on="merged"``),
    which is what a masked merge keeps; methods that grow by gradient are refused.
    """

    def __init__(
        self,
        model: nn.Module,
        config: Optional[SparsityConfig] = None,
        base_masks: MaskSource = None,
        score_on: str = "merged",
    ):
        if score_on not in ("merged", "base"):
            raise ValueError(f"score_on must be 'merged' or 'base', got {score_on!r}")
        known, self.base_pattern = collect_masks(base_masks)
        prefix = base_prefix(model)
        self.keep_only = config is None
        if self.keep_only:
            config = SparsityConfig(method="oneshot", sparsity=0.0, targets=_exact_targets(known, model, prefix))
        super().__init__(model, config)
        if self.keep_only:
            self.method = KeepBaseMasks(config, self.targets)
        elif any(not p.requires_grad for p in self.params.values()) and self.method.needs_gradients:
            raise ValueError(
                f"method {config.method!r} grows weights by gradient, but the base weights are frozen "
                "(requires_grad=False under LoRA): they have no gradient and a grown weight would stay 0. "
                "Use a magnitude method (gmp, oneshot) to prune a LoRA base further."
            )
        self.score_on = score_on
        self._tuner_of = {id(layer.get_base_layer().weight): layer for _, layer in tuner_layers(model)}
        self._regrowth_warned = False
        masks = self._initial_masks(known, prefix)
        if self.keep_only and overall_sparsity(masks) == 0.0:
            raise ValueError(
                "the base has no pruned weights: no base_masks were given and no targeted weight is exactly 0. "
                "Pass base_masks=..., or a sparsity_config to prune the base while the adapters train."
            )
        self._set_masks(masks, optimizer=None)
        logger.info("base masks: %d layers, sparsity %.4f", len(masks), self.sparsity)

    def _initial_masks(self, known: Optional[Masks], prefix: str) -> Masks:
        known = known or {}
        masks: Masks = {}
        for name, param in self.params.items():
            mask = known.get(canonical_name(name, prefix))
            if mask is None:  # not given: the base's own zeros
                mask = param.detach() != 0
            elif mask.shape != param.shape:
                raise ValueError(f"base mask for {name}: shape {tuple(mask.shape)} vs weight {tuple(param.shape)}")
            masks[name] = mask.to(param.device)
        return masks

    def target_sparsity(self) -> float:
        return self.sparsity if self.keep_only else super().target_sparsity()

    @torch.no_grad()
    def weights(self) -> dict[str, torch.Tensor]:
        """Scores see the merged weight of adapted layers when ``score_on="merged"``."""
        weights = super().weights()
        if self.score_on != "merged":
            return weights
        for name, param in self.params.items():
            layer = self._tuner_of.get(id(param))
            if layer is not None:
                weights[name] = param.detach() + _delta_weight(layer).to(param.dtype)
        return weights

    def _set_masks(self, new: Mapping[str, torch.Tensor], optimizer: Any) -> None:
        if self.started and not self._regrowth_warned:
            grown = sum(
                int((new[n].to(self.masks[n].device) & ~self.masks[n]).sum())
                for n, p in self.params.items()
                if not p.requires_grad and n in new
            )
            if grown:
                self._regrowth_warned = True
                logger.warning(
                    "method %r regrew %d frozen base weights: they stay 0 (the base does not train), "
                    "so the real sparsity is higher than the masks say", self.config.method, grown
                )
        super()._set_masks(new, optimizer)


def _exact_targets(known: Optional[Masks], model: nn.Module, prefix: str) -> Optional[list[str]]:
    """Regexes selecting exactly the modules whose weights have masks (None: default selection)."""
    if not known:
        return None
    modules = sorted({name.rsplit(".", 1)[0] for name in known if name.endswith(".weight")})
    present = {canonical_name(n, prefix) for n, _ in model.named_modules()}
    missing = [m for m in modules if m not in present]
    if missing or not modules:
        raise ValueError(
            f"base masks name layers this model does not have: {missing[:5] or sorted(known)[:5]}; "
            "masks are matched by parameter name (peft's 'base_model.model.' and '.base_layer' ignored)"
        )
    return [f"^{re.escape(m)}$" for m in modules]


def _delta_weight(layer: nn.Module) -> torch.Tensor:
    """The weight change the active, unmerged adapters of a peft tuner layer add (0 if none)."""
    weight = layer.get_base_layer().weight
    delta = torch.zeros_like(weight)
    if getattr(layer, "merged", False) or getattr(layer, "disable_adapters", False):
        return delta
    getter = getattr(layer, "get_delta_weight", None)
    for adapter in getattr(layer, "active_adapters", []):
        if getter is not None and adapter in getattr(layer, "lora_A", {}):
            delta += getter(adapter).to(delta.dtype)
    return delta


# -- merging ---------------------------------------------------------------------------------------
@dataclass
class MergeResult:
    """A merged model at exactly the base sparsity, and what masking the LoRA delta cost.

    ``delta_dropped``: per adapted layer, ``||delta * ~mask|| / ||delta||`` (0 = nothing lost,
    1 = all of it). ``max_logit_diff``/``mean_logit_diff``/``changed_predictions``: on the batch
    given to ``merge_and_unload`` (None without one), the masked merge against the unmasked
    (dense-delta) model.
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
                f"; logits vs the dense merge: max |diff| {self.max_logit_diff:.4g}, mean {self.mean_logit_diff:.4g}"
            )
            if self.changed_predictions is not None:
                text += f", {self.changed_predictions:.1%} predictions changed"
        return text

    def save_pretrained(self, directory: Union[str, os.PathLike], **kwargs: Any) -> None:
        """``model.save_pretrained`` plus the masks, as ``SparseTrainer.save_model`` writes them."""
        self.model.save_pretrained(directory, **kwargs)
        state = PeftSparsifier(self.model, None, self.masks).state_dict()
        save_sparsity_state(os.fspath(directory), state, {})


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
    before = {name: layer.get_base_layer().weight.detach().clone() for name, layer in layers}
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
                delta = param.detach().float() - before[layer_name].to(param.device).float()
                norm = float(delta.norm())
                dropped[name] = float(delta[~mask].norm()) / norm if norm > 0 else 0.0
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
            masks[name] = weight.detach() != 0
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
        nm = declared if given_names and name in given_names else _detect_nm(masks[name], in_dim)
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
    "KeepBaseMasks",
    "MergeResult",
    "PeftSparsifier",
    "collect_masks",
    "masks_from_directory",
    "merge_and_unload",
]
