"""load_sparse / load_masks: read any folder save_sparse writes, and compressed-tensors sparse folders.

``model, masks = hf_sparse.load_sparse(folder)`` gives the exact weights and the masks (bool
tensors by parameter name, True = kept) for every layout: dense + masks, hf_sparse native
compressed, compressed-tensors ``sparse-bitmask`` / ``sparse-24-bitmask`` (ours or theirs).
The model class comes from ``config.json``'s ``architectures``, looked up only among
``transformers``' own ``PreTrainedModel`` classes (an allow-list: nothing is imported by a
name from a file, no remote code); pass ``model_class=`` or ``model=`` for anything else.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any, Optional, Union

import torch
from torch import nn

from . import compressed_tensors as native
from . import ct_layout
from .save import resolve_masks
from .native_format import (
    COMPRESSED_TENSORS,
    DENSE,
    KEY_ALIASES,
    KEY_CONFIG,
    KEY_ENCODINGS,
    KEY_FORMAT,
    MASKS_PATTERN,
    NATIVE,
    NATIVE_PATTERN,
    WEIGHTS_PATTERN,
    check_version,
    json_meta,
    read_masks,
)
from ..core.masks import check_masks_fit
from .shards import load_tensors, open_checked, read_metadata, weight_files

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
_CLASS_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def read_config(directory: str) -> Optional[dict]:
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is corrupt: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object")
    return data


def detect_format(directory: PathLike) -> str:
    """``"native"``, ``"compressed-tensors"`` or ``"dense"``; FileNotFoundError when no weights."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory} is not a folder")
    if weight_files(directory, NATIVE_PATTERN):
        return NATIVE
    config = read_config(directory) or {}
    if weight_files(directory, WEIGHTS_PATTERN):
        return COMPRESSED_TENSORS if ct_layout.sparsity_format(config) else DENSE
    raise FileNotFoundError(f"{directory} holds no safetensors weights (model.safetensors or model.sparse.safetensors)")


def resolve_model_class(config: Optional[dict], directory: str) -> type:
    """The transformers class named by ``architectures``; only transformers' own PreTrainedModel classes."""
    import transformers

    names = (config or {}).get("architectures") or []
    if not names:
        raise ValueError(f"{directory}/config.json names no architectures: pass model_class= or model= to load_sparse")
    name = names[0]
    if (config or {}).get("auto_map"):
        raise ValueError(
            f"{directory} uses custom code (auto_map); hf_sparse never runs remote code: pass model_class= or model="
        )
    cls = getattr(transformers, name, None) if isinstance(name, str) and _CLASS_NAME.match(name) else None
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise ValueError(
            f"architectures[0]={name!r} is not a transformers PreTrainedModel class; pass model_class= or model="
        )
    return cls


def _build(directory: str, config: Optional[dict], model_class: Optional[type]) -> nn.Module:
    cls = model_class or resolve_model_class(config, directory)
    if config is None:
        raise ValueError(f"{directory} has no config.json: pass model= to load_sparse")
    data = {k: v for k, v in config.items() if k != "quantization_config"}
    model_config = cls.config_class.from_dict(data)
    return cls._from_config(model_config)


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], directory: str, aliases: dict) -> nn.Module:
    float_dtypes = {t.dtype for k, t in state.items() if t.is_floating_point()}
    if len(float_dtypes) == 1:
        model.to(next(iter(float_dtypes)))
    expected = model.state_dict()
    shape_errors = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    if shape_errors:
        raise ValueError(f"{directory}: tensor shapes do not match the model: {shape_errors[:5]}")
    missing, unexpected = model.load_state_dict(state, strict=False)
    # tied weights (stored once) come back through the tensor they share storage with
    by_storage: dict[int, set[str]] = {}
    for key, tensor in expected.items():
        by_storage.setdefault(tensor.untyped_storage().data_ptr(), set()).add(key)
    really_missing = [
        k for k in missing
        if k not in aliases and not (by_storage.get(expected[k].untyped_storage().data_ptr(), set()) & set(state))
    ]
    if really_missing or unexpected:
        raise ValueError(
            f"{directory} does not match the model: missing {sorted(really_missing)[:8]}, "
            f"unexpected {sorted(unexpected)[:8]}: incomplete checkpoint or wrong model class"
        )
    return model


def _read_state(directory: str, fmt: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, str]]:
    """(dense state dict, masks decoded from the weights file, header metadata)."""
    pattern = NATIVE_PATTERN if fmt == NATIVE else WEIGHTS_PATTERN
    files = weight_files(directory, pattern)
    tensors, metadata = load_tensors(files)
    check_version(metadata, files[0])
    if fmt == COMPRESSED_TENSORS:
        return (*ct_layout.decode_state(tensors), metadata)
    if fmt == DENSE:
        return tensors, {}, metadata
    encodings = json_meta(metadata, KEY_ENCODINGS, files[0])
    if metadata.get(KEY_FORMAT) != NATIVE or not isinstance(encodings, dict):
        raise ValueError(f"{files[0]} lacks hf_sparse's encodings header: not an hf_sparse compressed file")
    state: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor] = {}
    parts_of: dict[str, dict[str, torch.Tensor]] = {name: {} for name in encodings}
    for key, value in tensors.items():
        base, _, part = key.rpartition(".sparse_")
        if base in parts_of:
            parts_of[base][part] = value
        else:
            state[key] = value
    for name, info in encodings.items():
        state[name], masks[name] = native.decode(info["encoding"], info["shape"], parts_of[name], name)
    return state, masks, metadata


def load_masks(directory: PathLike) -> dict[str, torch.Tensor]:
    """Masks saved in ``directory`` (bool tensors by parameter name, True = kept), any layout.

    Reads ``sparse_masks.safetensors`` when present, else the masks a compressed layout implies
    (native: exact; compressed-tensors: the stored bitmasks). Raises FileNotFoundError for a plain
    dense folder without masks.
    """
    directory = os.fspath(directory)
    files = weight_files(directory, MASKS_PATTERN)
    if files:
        return read_masks(files)
    fmt = detect_format(directory)
    if fmt == DENSE:
        raise FileNotFoundError(f"{directory} holds no hf_sparse masks ({MASKS_PATTERN.format(suffix='')})")
    return _read_state(directory, fmt)[1]


def load_sparse(
    directory: PathLike,
    model: Optional[nn.Module] = None,
    model_class: Optional[type] = None,
    *,
    sparse_inference: bool = False,
    example_inputs: Any = None,
    **from_pretrained_kwargs: Any,
) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Load ``(model, masks)`` from a folder in any layout save_sparse writes (or compressed-tensors').

    ``model``: load into this instance instead of building one from config.json. ``model_class``:
    the class to build (default: ``architectures[0]`` among transformers' classes). Extra keyword
    arguments go to ``from_pretrained`` for dense folders. Masks: stored ones, else ``weight != 0``
    over the saved sparsity config's targets (or hf_sparse's default targets). The masks are also
    attached to the model, so a ``SparseTrainer`` fine-tuning it starts from them.
    ``sparse_inference=True``: return the model in eval mode with CPU sparse kernels where they are
    measured faster (``hf_sparse.to_sparse_inference`` on ``example_inputs``).
    """
    directory = os.fspath(directory)
    fmt = detect_format(directory)
    config = read_config(directory)
    if fmt == DENSE and model is None:
        for path in weight_files(directory, WEIGHTS_PATTERN):
            check_version(read_metadata(path), path)
        cls = model_class or resolve_model_class(config, directory)
        model = cls.from_pretrained(directory, **from_pretrained_kwargs)
        metadata = read_metadata(weight_files(directory, WEIGHTS_PATTERN)[0])
        implied: dict[str, torch.Tensor] = {}
    else:
        state, implied, metadata = _read_state(directory, fmt)
        aliases = json_meta(metadata, KEY_ALIASES, directory) or {}
        model = _load_into(model if model is not None else _build(directory, config, model_class), state, directory, aliases)
    files = weight_files(directory, MASKS_PATTERN)
    masks = read_masks(files) if files else implied
    if not masks:
        saved = json_meta(metadata, KEY_CONFIG, directory) or {}
        masks = resolve_masks(model, None, saved)
        logger.info("%s stores no masks: using weight != 0 over %d target weights", directory, len(masks))
    check_masks_fit(dict(model.named_parameters()), masks, where=directory)
    from .existing_masks import attach_masks  # local: existing_masks reads folders through this module

    attach_masks(model, masks)
    if sparse_inference:
        from ..inference.convert import to_sparse_inference

        model.eval()
        to_sparse_inference(model, example_inputs, targets=_module_patterns(masks) or None)
    return model, masks


def _module_patterns(masks: dict[str, torch.Tensor]) -> list[str]:
    """Exact module-name regexes for the masked weights (what to consider for sparse kernels)."""
    return [f"^{re.escape(name.rsplit('.', 1)[0])}$" for name in masks if name.endswith(".weight")]


def describe(directory: PathLike) -> dict[str, Any]:
    """Layout, format version, files and per-tensor sparsity of a folder (for ``inspect``)."""
    directory = os.fspath(directory)
    fmt = detect_format(directory)
    pattern = NATIVE_PATTERN if fmt == NATIVE else WEIGHTS_PATTERN
    files = weight_files(directory, pattern)
    for path in files:
        with open_checked(path):
            pass
    state, implied, metadata = _read_state(directory, fmt)
    mask_files = weight_files(directory, MASKS_PATTERN)
    masks = read_masks(mask_files) if mask_files else implied
    layers = {}
    for name, mask in masks.items():
        weight = state.get(name)
        layers[name] = {
            "shape": list(mask.shape),
            "numel": mask.numel(),
            "kept": int(mask.sum()),
            "nonzero": int(weight.ne(0).sum()) if weight is not None else None,
            "sparsity": 1.0 - int(mask.sum()) / max(mask.numel(), 1),
            "encoding": (json_meta(metadata, KEY_ENCODINGS, directory) or {}).get(name, {}).get("encoding", fmt),
        }
    numel = sum(r["numel"] for r in layers.values())
    kept = sum(r["kept"] for r in layers.values())
    subformat = ct_layout.sparsity_format(read_config(directory) or {}) if fmt == COMPRESSED_TENSORS else None
    return {
        "format": fmt,
        "subformat": subformat,
        "format_version": metadata.get("hf_sparse_format_version"),
        "files": {os.path.basename(p): os.path.getsize(p) for p in files + (mask_files or [])},
        "layers": layers,
        "sparsity": 1.0 - kept / max(numel, 1),
        "sparsity_config": json_meta(metadata, KEY_CONFIG, directory),
    }
