"""How a peft model wraps its base: which modules are adapters, and the names the base had.

peft replaces an adapted ``nn.Linear`` by a tuner layer holding the original as ``base_layer``
next to ``lora_A``/``lora_B`` (both ``nn.Linear`` too), and puts the whole model under
``base_model.model.``. hf_sparse sparsifies base weights only and matches ``targets``/``ignore``
regexes, and masks saved from a plain model, against the *canonical* name: the one the
parameter has in the model without peft (``bert.encoder.layer.0.attention.self.query.weight``
for ``base_model.model.bert.encoder.layer.0.attention.self.query.base_layer.weight``).

peft is only looked at when it is already imported: a model cannot be a peft model otherwise,
so plain models pay nothing. It sits in ``core`` because target selection must see through peft's
wrappers; ``lora`` builds on it.
"""

from __future__ import annotations

import sys
from typing import Iterator, Optional

from torch import nn

# Path segments peft inserts between a base module and its parent.
_BASE_SEGMENTS = ("base_layer", "original_module")


def _peft_types() -> Optional[tuple[type, type, type]]:
    if "peft" not in sys.modules:
        return None
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer

    return PeftModel, BaseTuner, BaseTunerLayer


def _wrapper_types() -> tuple[type, ...]:
    """Module types peft wraps around base modules (tuner layers and auxiliary wrappers)."""
    types = _peft_types()
    if types is None:
        return ()
    from peft.utils.other import AuxiliaryTrainingWrapper

    return (types[2], AuxiliaryTrainingWrapper)


def is_peft_model(model: nn.Module) -> bool:
    """True for a ``peft.PeftModel`` or a bare tuner model (``LoraModel``)."""
    types = _peft_types()
    return types is not None and isinstance(model, (types[0], types[1]))


def base_prefix(model: nn.Module) -> str:
    """The module path (with a trailing dot) under which a peft model keeps the base model."""
    types = _peft_types()
    if types is None:
        return ""
    if isinstance(model, types[0]):
        base = model.get_base_model()
    elif isinstance(model, types[1]):
        base = model.model
    else:
        return ""
    for name, module in model.named_modules():
        if module is base:
            return f"{name}." if name else ""
    return ""


def canonical_name(name: str, prefix: str = "") -> str:
    """The name a module or parameter has in the base model without peft.

    Drops ``prefix`` (see :func:`base_prefix`), the ``base_layer``/``original_module`` segments
    peft inserts, and ``modules_to_save.<adapter>`` (the trained copy that replaces a module).
    """
    if prefix and name.startswith(prefix):
        name = name[len(prefix):]
    parts = name.split(".")
    kept: list[str] = []
    i = 0
    while i < len(parts):
        if parts[i] in _BASE_SEGMENTS:
            i += 1
        elif parts[i] == "modules_to_save" and i + 1 < len(parts):
            i += 2
        else:
            kept.append(parts[i])
            i += 1
    return ".".join(kept)


def skipped_module_ids(model: nn.Module) -> set[int]:
    """Modules hf_sparse never sparsifies in a peft model: the tuner wrappers themselves, every
    adapter module inside them (``lora_A``, ``lora_B``, embedding adapters, ...) and the
    inactive ``original_module`` of a ``modules_to_save`` wrapper (the trained copy is live).
    Empty for a plain model."""
    wrappers = _wrapper_types()
    if not wrappers:
        return set()
    tuner_layer = wrappers[0]
    skipped: set[int] = set()
    for module in model.modules():
        if not isinstance(module, wrappers):
            continue
        skipped.add(id(module))
        live = "base_layer" if isinstance(module, tuner_layer) else "modules_to_save"
        for child_name, child in module.named_children():
            if child_name != live:
                skipped.update(id(m) for m in child.modules())
    return skipped


def tuner_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(module name, layer) of the outermost peft tuner layers (the ones a merge folds in)."""
    types = _peft_types()
    if types is None:
        return
    inside: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, types[2]) and not any(name.startswith(p + ".") for p in inside):
            inside.append(name)
            yield name, module
