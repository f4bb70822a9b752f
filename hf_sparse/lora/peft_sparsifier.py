"""PeftSparsifier: the mask engine for a model whose base is already sparse (typically peft LoRA).

``SparseTrainer`` builds one for a ``PeftModel``. It starts from the base masks (``peft_masks``) and
either keeps them fixed (the registered ``constant`` method) or lets a ``SparsityConfig`` method
prune the frozen base further.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
from typing import Any, Mapping, Optional

import torch
from torch import nn

from ..config import SparsityConfig, parse_nm
from ..core.masks import nonzero_mask, overall_sparsity
from ..core.patterns import common_pattern
from ..sparsifier import Sparsifier
from ..core.peft_layout import base_prefix, canonical_name, tuner_layers
from .peft_masks import Masks, MaskSource, collect_masks

logger = logging.getLogger(__name__)


class PeftSparsifier(Sparsifier):
    """The mask engine for a model whose base is already sparse, typically a peft LoRA model.

    ``config=None`` keeps the base masks fixed with the ``constant`` method (targets: exactly the
    masked layers; ``self.config`` records the base's pattern and sparsity). With a
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
        if self.keep_only:  # the registered ``constant`` method, given the base masks below
            config = SparsityConfig(method="constant", targets=_exact_targets(known, model, prefix))
        super().__init__(model, config)
        if not self.keep_only and any(not p.requires_grad for p in self.params.values()) and self.method.needs_gradients:
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
        if self.keep_only:
            self._describe_base(masks)
            self._set_masks(self.method.init_masks(self.weights(), self.masks), optimizer=None)
        logger.info("base masks: %d layers, sparsity %.4f", len(masks), self.sparsity)

    def _describe_base(self, masks: Masks) -> None:
        """The saved config and the card say what the kept base holds: its pattern and sparsity."""
        in_dims = [next(t.in_dim for t in self.targets if t.name == name) for name in masks]
        pattern = self.base_pattern or common_pattern(list(masks.values()), in_dims)
        sparsity = None if parse_nm(pattern) else round(min(self.sparsity, 0.999999), 6)
        described = dataclasses.replace(self.config, pattern=pattern, sparsity=sparsity)
        described.recipe_choices = self.config.recipe_choices  # the same recipe's fill, a field or two more said
        self.config = self.method.config = described

    def _initial_masks(self, known: Optional[Masks], prefix: str) -> Masks:
        known = known or {}
        outside = set(known) - {canonical_name(name, prefix) for name in self.params}
        if outside:
            logger.info(
                "%d base masks lie outside the targets: not enforced while training (frozen weights keep "
                "their zeros); merge_and_unload re-applies them", len(outside)
            )
        masks: Masks = {}
        for name, param in self.params.items():
            mask = known.get(canonical_name(name, prefix))
            if mask is None:  # not given: the base's own zeros
                mask = nonzero_mask(param)
            elif mask.shape != param.shape:
                raise ValueError(f"base mask for {name}: shape {tuple(mask.shape)} vs weight {tuple(param.shape)}")
            masks[name] = mask.to(param.device)
        return masks

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




class MaskedLoraDeltas:
    """Train LoRA on the weight it will be merged into: ``W + (scaling * B @ A) * mask``.

    Plain LoRA trains a dense delta, of which a masked merge keeps only the entries at kept
    weights; the trained model and the merged one differ (``MergeResult`` measures by how much).
    With this, each adapted peft ``lora.Linear`` applies the masked delta in its forward, so the
    model being trained *is* the masked merge and merging costs nothing. Price: one dense
    ``out x in`` delta per adapted layer and forward. Masks are read at every forward: give the
    trainer's ``PeftSparsifier`` (``trainer.sparsifier``) to follow a base that is pruned further.

    ``MaskedLoraDeltas(peft_model, trainer.sparsifier)`` before ``trainer.train()``; ``.remove()``
    (or leaving a ``with`` block) restores peft's forward. Plain LoRA Linear only (no DoRA, no
    ``lora_bias``).
    """

    def __init__(self, peft_model: nn.Module, masks: MaskSource = None):
        from peft.tuners.lora.layer import Linear as LoraLinear

        sparsifier = getattr(masks, "sparsifier", masks)
        live = sparsifier if isinstance(sparsifier, Sparsifier) else None
        known, _ = collect_masks(None if live is not None else masks)
        prefix = base_prefix(peft_model)
        self.layers: list[nn.Module] = []
        unsupported = []
        for module_name, layer in tuner_layers(peft_model):
            weight = layer.get_base_layer().weight
            if not isinstance(layer, LoraLinear) or layer.lora_variant or any(layer.lora_bias.values()):
                unsupported.append(f"{module_name} ({type(layer).__name__})")
                continue
            mask_of = self._mask_getter(live, known, canonical_name(module_name, prefix) + ".weight", weight)
            if mask_of is not None:
                layer.forward = functools.partial(_masked_lora_forward, layer, mask_of)
                self.layers.append(layer)
        if unsupported:
            self.remove()
            raise TypeError(f"MaskedLoraDeltas supports plain LoRA Linear layers only; got {unsupported[:4]}")
        if not self.layers:
            raise ValueError("no adapted layer has a known mask (no masks given and no exact zeros)")

    @staticmethod
    def _mask_getter(live: Optional[Sparsifier], known: Optional[Masks], name: str, weight: torch.Tensor):
        if live is not None:
            key = next((n for n, p in live.params.items() if p is weight), None)
            if key is not None:
                return lambda: live.masks[key]
        mask = (known or {}).get(name)
        if mask is None and bool(torch.any(weight == 0)):
            mask = nonzero_mask(weight)
        return None if mask is None else (lambda: mask)

    def remove(self) -> None:
        for layer in self.layers:
            layer.__dict__.pop("forward", None)
        self.layers = []

    def __enter__(self) -> "MaskedLoraDeltas":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()


def _masked_lora_forward(layer: nn.Module, mask_of: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    if layer.disable_adapters or layer.merged or kwargs.get("adapter_names") is not None:
        return type(layer).forward(layer, x, *args, **kwargs)
    result = layer.base_layer(x, *args, **kwargs)
    dtype = result.dtype
    mask = mask_of()
    for adapter in layer.active_adapters:
        if adapter not in layer.lora_A:
            continue
        delta = layer.get_delta_weight(adapter) * mask.to(x.device)
        if layer.fan_in_fan_out:
            delta = delta.T
        inputs = layer._cast_input_dtype(layer.lora_dropout[adapter](x), delta.dtype)
        result = result + nn.functional.linear(inputs, delta)
    return result.to(dtype)
