"""The three layout writers behind :func:`hf_sparse.io.save.save_sparse` (and the Trainer's dense one).

Each writes into a staging folder (see :func:`hf_sparse.io.files.save_transaction`): config.json first,
then the weights with hf_sparse's header (which binds that config.json), then the masks file.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from typing import Callable, Mapping, Optional, Union

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from . import ct_layout
from . import native_codec as native
from ..config import CONFIG_NAME
from .binding import model_config_header
from .existing_masks import masks_from_zeros
from .files import atomic_write_text
from .native_format import (
    COMPRESSED_TENSORS,
    DENSE,
    KEY_ALIASES,
    KEY_ENCODINGS,
    KEY_SAVE_ID,
    MASKS_IN_FILE,
    MASKS_IN_WEIGHTS,
    NATIVE,
    NATIVE_PATTERN,
    WEIGHTS_PATTERN,
    base_metadata,
    save_masks,
)
from .shards import open_checkpoint, read_metadata, save_sharded, with_checksums
from .weights_header import adding_weights_header

logger = logging.getLogger(__name__)


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


def _config_json(model: nn.Module, quantization_config: Optional[dict] = None) -> Optional[dict]:
    """What config.json will hold for ``model`` (None for a model without a transformers config)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return None
    data = json.loads(config.to_json_string(use_diff=True))
    data.pop("quantization_config", None)
    data["architectures"] = [type(model).__name__]
    if quantization_config is not None:
        data["quantization_config"] = quantization_config
    return data


def _save_config(model: nn.Module, directory: str, quantization_config: Optional[dict] = None) -> None:
    """config.json (and generation_config.json), written before the weights, whose header binds it."""
    data = _config_json(model, quantization_config)
    if data is None:
        return
    atomic_write_text(os.path.join(directory, "config.json"), json.dumps(data, indent=2, sort_keys=True) + "\n")
    generation = getattr(model, "generation_config", None)
    if generation is not None and getattr(model, "can_generate", lambda: False)():
        generation.save_pretrained(directory)


def write_sparsity_config(directory: str, config: Optional[dict]) -> None:
    """``sparsity_config.json``: exactly the dict recorded in the weights' header (a load compares them)."""
    if config is not None:
        atomic_write_text(os.path.join(directory, CONFIG_NAME), json.dumps(config, indent=2, sort_keys=True) + "\n")


ADAPTER_WEIGHTS = "adapter_model.safetensors"


def write_dense_checkpoint(
    staging: str,
    write_weights: Callable[[Mapping[str, str]], None],
    masks: Mapping[str, torch.Tensor],
    config: Optional[dict],
    save_id: str,
) -> None:
    """The dense layout into ``staging``: weights (by ``write_weights(header)``) + the masks file.

    Shared by :func:`save_sparse` and ``SparseTrainer._save`` (whose weights the Trainer writes;
    for a peft model they are ``adapter_model.safetensors``, which gets the same header).
    """
    metadata = base_metadata(DENSE, config, masks, save_id, MASKS_IN_FILE)
    with adding_weights_header(staging, metadata):
        write_weights(metadata)
    checkpoint = open_checkpoint(staging, WEIGHTS_PATTERN)
    files = list(checkpoint.files) if checkpoint is not None else []
    adapter = os.path.join(staging, ADAPTER_WEIGHTS)
    if os.path.isfile(adapter):
        files.append(adapter)
    for path in files:
        old = read_metadata(path)
        if old.get(KEY_SAVE_ID) == save_id:
            continue
        # the writer no longer goes through the wrapped function: add the header in a second write
        logger.warning("%s was written without hf_sparse's header; rewriting it once to add it", os.path.basename(path))
        tensors = load_file(path)
        save_file(tensors, path, metadata=with_checksums(tensors, {**old, **metadata, **model_config_header(staging)}))
    save_masks(staging, masks, metadata)
    write_sparsity_config(staging, config)


def _write_dense_weights(model: nn.Module, staging: str, max_shard_size: Union[int, str], header: Mapping[str, str]) -> None:
    if hasattr(model, "save_pretrained"):
        model.save_pretrained(staging, max_shard_size=max_shard_size)  # header added by adding_weights_header
    else:
        tensors, _ = _dedupe(model.state_dict())
        save_sharded(tensors, staging, WEIGHTS_PATTERN, max_shard_size, lambda keys: dict(header))


def _save_native(model: nn.Module, directory: str, masks: dict, config: Optional[dict], max_shard_size, save_id: str) -> None:
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
            tensors[native.part_key(name, part)] = value
    missing = sorted(set(masks) - set(encodings))
    if missing:
        raise ValueError(f"masks name tensors absent from the state dict (tied or not persistent?): {missing}")
    ambiguous = sorted(k for k in state if k not in masks and native.split_part_key(k) is not None)
    if ambiguous:
        raise ValueError(
            f"tensors {ambiguous[:3]} are named like parts of an encoded weight (<name>.sparse_<part>): the native "
            "layout cannot store them unambiguously; save with compressed=False or 'compressed-tensors'"
        )
    metadata = base_metadata(NATIVE, config, masks, save_id, MASKS_IN_WEIGHTS)
    metadata[KEY_ENCODINGS] = json.dumps(encodings, sort_keys=True)
    metadata[KEY_ALIASES] = json.dumps(aliases, sort_keys=True)
    _save_config(model, directory)
    metadata.update(model_config_header(directory))
    save_sharded(tensors, directory, NATIVE_PATTERN, max_shard_size, lambda keys: metadata)


def _is_24(masks: Mapping[str, torch.Tensor]) -> bool:
    return bool(masks) and all(m.dim() == 2 and native.is_2_4(m) for m in masks.values())


def _save_compressed_tensors(
    model: nn.Module, directory: str, masks: dict, config: Optional[dict], max_shard_size, save_id: str
) -> None:
    warnings.warn(
        "compressed-tensors layout: readable by compressed-tensors <= 0.14 (transformers <= 4.55 with it) "
        "and hf_sparse.load_sparse; transformers >= 5.10 cannot read it and silently loads RANDOM weights "
        "for the compressed modules. Prefer compressed=True (fails loudly without hf_sparse) or dense.",
        UserWarning,
        stacklevel=4,
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
    # compressed-tensors stores W != 0; keep exact masks beside it when they differ (kept zeros)
    implied = {
        n: masks_from_zeros({n: state[n]})[n] if fmt == ct_layout.BITMASK
        else ct_layout.mask_24(ct_layout.normalise_zeros(state[n]))
        for n in masks
    }
    exact = all(torch.equal(implied[n], masks[n]) for n in masks)
    metadata = base_metadata(COMPRESSED_TENSORS, config, masks, save_id, MASKS_IN_WEIGHTS if exact else MASKS_IN_FILE)
    _save_config(model, directory, block)
    metadata.update(model_config_header(directory))
    save_sharded(tensors, directory, WEIGHTS_PATTERN, max_shard_size, lambda keys: metadata)
    if not exact:
        save_masks(directory, masks, metadata)
