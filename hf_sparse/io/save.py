"""save_sparse: write a sparse model as dense+masks, native compressed, or the compressed-tensors layout.

Read back with :func:`hf_sparse.load_sparse` (and masks alone with :func:`hf_sparse.load_masks`).
Layouts and header metadata: see :mod:`hf_sparse.io.native_format`.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from typing import Mapping, Optional, Union

import torch
from torch import nn

from . import compressed_tensors as native
from . import ct_layout
from ..config import SparsityConfig
from .files import atomic_write_text
from ..core.masks import check_masks_fit
from .native_format import (
    COMPRESSED_TENSORS,
    DENSE,
    KEY_ALIASES,
    KEY_ENCODINGS,
    MASKS_PATTERN,
    NATIVE,
    NATIVE_PATTERN,
    WEIGHTS_PATTERN,
    base_metadata,
    save_masks,
)
from .shards import remove_checkpoint_files, rewrite_metadata, save_sharded, weight_files
from ..core.targets import find_targets

logger = logging.getLogger(__name__)

Compressed = Union[bool, str]
_LEGACY_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")


def _format_of(compressed: Compressed) -> str:
    if compressed is False or compressed is None or compressed == DENSE:
        return DENSE
    if compressed is True or compressed == NATIVE:
        return NATIVE
    if compressed == COMPRESSED_TENSORS:
        return COMPRESSED_TENSORS
    raise ValueError(f"compressed must be False, True or 'compressed-tensors', got {compressed!r}")


def _config_dict(config: Union[SparsityConfig, Mapping, None]) -> Optional[dict]:
    if config is None:
        return None
    if isinstance(config, SparsityConfig):
        return config.to_dict()
    if isinstance(config, Mapping):
        return SparsityConfig.from_dict(dict(config)).to_dict()
    raise TypeError(f"config must be a SparsityConfig, a dict or None, got {type(config).__name__}")


def resolve_masks(
    model: nn.Module, masks: Optional[Mapping[str, torch.Tensor]], config: Optional[dict]
) -> dict[str, torch.Tensor]:
    """The masks to save: given ones (checked against the model), else ``weight != 0`` of the targets."""
    if masks is None:
        targets = find_targets(model, (config or {}).get("targets"), (config or {}).get("ignore"))
        return {t.name: t.param.detach().ne(0).cpu() for t in targets}
    check_masks_fit(dict(model.named_parameters()), masks)
    return {name: mask.detach().cpu().to(torch.bool) for name, mask in masks.items()}


def _dedupe(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Drop tensors sharing storage with an earlier one (tied weights): safetensors cannot store aliases."""
    kept: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.dtype)
        if tensor.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        kept[name] = tensor.detach().cpu().contiguous()
    return kept, aliases


def _clean(directory: str, keep: str) -> None:
    """Remove weights of the other layouts, so a folder never holds two disagreeing checkpoints."""
    for pattern in (WEIGHTS_PATTERN, NATIVE_PATTERN, MASKS_PATTERN):
        if pattern != keep:
            remove_checkpoint_files(directory, pattern)
    for name in _LEGACY_WEIGHTS:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            logger.warning("removing stale %s from %s", name, directory)
            os.unlink(path)


def _save_config(model: nn.Module, directory: str, quantization_config: Optional[dict] = None) -> None:
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return
    data = json.loads(config.to_json_string(use_diff=True))
    data.pop("quantization_config", None)
    data["architectures"] = [type(model).__name__]
    if quantization_config is not None:
        data["quantization_config"] = quantization_config
    atomic_write_text(os.path.join(directory, "config.json"), json.dumps(data, indent=2, sort_keys=True) + "\n")
    generation = getattr(model, "generation_config", None)
    if generation is not None and getattr(model, "can_generate", lambda: False)():
        generation.save_pretrained(directory)


def annotate_checkpoint(
    directory: str,
    masks: Mapping[str, torch.Tensor],
    config: Union[SparsityConfig, Mapping, None] = None,
) -> None:
    """Add hf_sparse header metadata to the dense weights in ``directory`` and write the masks file.

    Used by :func:`save_sparse` and by ``SparseTrainer`` right after ``Trainer._save``.
    """
    files = weight_files(directory, WEIGHTS_PATTERN)
    if not files:
        raise FileNotFoundError(f"no model.safetensors (or shards) in {directory} to annotate")
    metadata = base_metadata(DENSE, _config_dict(config), masks)
    for path in files:
        rewrite_metadata(path, metadata)
    remove_checkpoint_files(directory, NATIVE_PATTERN)  # a stale compressed copy would shadow these weights
    save_masks(directory, masks, metadata)


def save_sparse(
    model: nn.Module,
    save_directory: Union[str, os.PathLike],
    masks: Optional[Mapping[str, torch.Tensor]] = None,
    config: Union[SparsityConfig, Mapping, None] = None,
    compressed: Compressed = False,
    max_shard_size: Union[int, str] = "5GB",
) -> str:
    """Save ``model`` (its weights already sparse) into ``save_directory``; returns the layout written.

    ``masks``: bool tensors by parameter name (True = kept); default ``weight != 0`` over the
    targets of ``config`` (or hf_sparse's default targets). ``compressed``: ``False`` dense +
    masks, ``True`` hf_sparse's native compressed layout, ``"compressed-tensors"`` the
    compressed-tensors 0.14 sparse-bitmask layout. Large models are sharded like ``save_pretrained``.
    """
    fmt = _format_of(compressed)
    directory = os.fspath(save_directory)
    os.makedirs(directory, exist_ok=True)
    config_dict = _config_dict(config)
    masks = resolve_masks(model, masks, config_dict)
    if config_dict is not None:
        SparsityConfig.from_dict(config_dict).save_pretrained(directory)
    if fmt == DENSE:
        _clean(directory, WEIGHTS_PATTERN)
        if hasattr(model, "save_pretrained"):
            model.save_pretrained(directory, max_shard_size=max_shard_size)
        else:
            tensors, _ = _dedupe(model.state_dict())
            save_sharded(tensors, directory, WEIGHTS_PATTERN, max_shard_size, lambda keys: {"format": "pt"})
        annotate_checkpoint(directory, masks, config_dict)
    elif fmt == NATIVE:
        _save_native(model, directory, masks, config_dict, max_shard_size)
    else:
        _save_compressed_tensors(model, directory, masks, config_dict, max_shard_size)
    logger.info("saved %s checkpoint to %s", fmt, directory)
    return fmt


def _save_native(model: nn.Module, directory: str, masks: dict, config: Optional[dict], max_shard_size) -> None:
    state, aliases = _dedupe(model.state_dict())
    tensors: dict[str, torch.Tensor] = {}
    encodings: dict[str, dict] = {}
    for name, tensor in state.items():
        if name not in masks:
            tensors[name] = tensor
            continue
        encoding, parts = native.encode(tensor, masks[name])
        encodings[name] = {"encoding": encoding, "shape": list(tensor.shape)}
        for part, value in parts.items():
            tensors[f"{name}.sparse_{part}"] = value
    missing = sorted(set(masks) - set(encodings))
    if missing:
        raise ValueError(f"masks name tensors absent from the state dict (tied or not persistent?): {missing}")
    metadata = base_metadata(NATIVE, config, masks)
    metadata[KEY_ENCODINGS] = json.dumps(encodings, sort_keys=True)
    metadata[KEY_ALIASES] = json.dumps(aliases, sort_keys=True)
    _clean(directory, NATIVE_PATTERN)
    save_sharded(tensors, directory, NATIVE_PATTERN, max_shard_size, lambda keys: metadata)
    _save_config(model, directory)


def _is_24(masks: Mapping[str, torch.Tensor]) -> bool:
    return bool(masks) and all(m.dim() == 2 and native.is_2_4(m) for m in masks.values())


def _save_compressed_tensors(model: nn.Module, directory: str, masks: dict, config: Optional[dict], max_shard_size) -> None:
    warnings.warn(
        "compressed-tensors layout: readable by compressed-tensors <= 0.14 (transformers <= 4.55 with it) "
        "and hf_sparse.load_sparse; transformers >= 5.10 cannot read it and silently loads RANDOM weights "
        "for the compressed modules. Prefer compressed=True (fails loudly without hf_sparse) or dense.",
        UserWarning,
        stacklevel=3,
    )
    fmt = ct_layout.BITMASK_24 if _is_24(masks) else ct_layout.BITMASK
    state, _ = _dedupe(model.state_dict())
    modules = dict(model.named_modules())
    tensors: dict[str, torch.Tensor] = {}
    targets: set[str] = set()
    for name, tensor in state.items():
        if name not in masks:
            tensors[name] = tensor
            continue
        if bool((tensor.ne(0) & ~masks[name]).any()):
            raise ValueError(f"{name} has nonzero weights where its mask is False; apply the masks before saving")
        prefix = name[: -len(".weight")] if name.endswith(".weight") else name
        if not name.endswith(".weight") or prefix not in modules:
            raise ValueError(f"compressed-tensors layout compresses module weights only, not {name!r}")
        targets.add(type(modules[prefix]).__name__)
        tensors.update(ct_layout.encode(prefix, tensor, fmt))
    compressed_modules = {n[: -len(".weight")] for n in masks}
    ignore = [n for n, m in modules.items() if n and type(m).__name__ in targets and n not in compressed_modules]
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    block = ct_layout.config_block(fmt, sorted(targets), ignore, round(1.0 - kept / max(total, 1), 6))
    _clean(directory, WEIGHTS_PATTERN)
    metadata = base_metadata(COMPRESSED_TENSORS, config, masks)
    save_sharded(tensors, directory, WEIGHTS_PATTERN, max_shard_size, lambda keys: metadata)
    # compressed-tensors stores W != 0; keep exact masks beside it when they differ (kept zeros)
    implied = {
        n: state[n].ne(0) if fmt == ct_layout.BITMASK else ct_layout.mask_24(ct_layout.normalise_zeros(state[n]))
        for n in masks
    }
    if any(not torch.equal(implied[n], masks[n]) for n in masks):
        save_masks(directory, masks, metadata)
    _save_config(model, directory, block)
