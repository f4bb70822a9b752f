"""save_sparse: write a sparse model as dense+masks, native compressed, or the compressed-tensors layout.

Read back with :func:`hf_sparse.load_sparse` (and masks alone with :func:`hf_sparse.load_masks`).
Layouts and header metadata: see :mod:`hf_sparse.io.native_format`.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from typing import Callable, Mapping, Optional, Union

import torch
from torch import nn

from . import native_codec as native
from . import ct_layout
from ..config import CONFIG_NAME, SparsityConfig
from ..core.masks import check_masks_fit
from .existing_masks import masks_from_zeros
from .binding import model_config_header
from .files import atomic_write_text, new_save_id, save_transaction
from .readback import read_back
from .weights_header import adding_weights_header
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
from safetensors.torch import load_file, save_file

from .shards import open_checkpoint, read_metadata, save_sharded, with_checksums
from .replace_policy import check_target_folder, refuse_adapter_folder, replaced_by_a_save  # noqa: F401 (re-exported)
from ..core.targets import find_targets

logger = logging.getLogger(__name__)

Compressed = Union[bool, str]


def layout_of(compressed: Compressed) -> str:
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
        return {n: m.cpu() for n, m in masks_from_zeros({t.name: t.param for t in targets}).items()}
    check_masks_fit(dict(model.named_parameters()), masks)
    for name, mask in masks.items():
        if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"masks[{name!r}] must be a bool tensor (True = kept) or hold only 0 and 1")
    return {name: mask.detach().cpu().to(torch.bool) for name, mask in masks.items()}


def check_weights_follow_masks(weights: Mapping[str, torch.Tensor], masks: Mapping[str, torch.Tensor], where: str) -> None:
    """A nonzero weight where its mask says pruned means weights and masks disagree: name the tensor."""
    for name, mask in masks.items():
        weight = weights.get(name)
        if weight is None:
            continue
        bad = int((weight.detach().ne(0) & ~mask.to(device=weight.device, dtype=torch.bool)).sum())
        if bad:
            raise ValueError(
                f"{where}: {name} has {bad} nonzero weights where its mask is False: apply the masks first "
                "(e.g. trainer.sparsifier.apply_masks()) or pass masks=None to derive them from the weights"
            )


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


#: deprecated name of :func:`hf_sparse.io.weights_header.adding_weights_header`
header_metadata = adding_weights_header
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
    The save is a transaction: the new checkpoint is written and checked beside the old one, then
    replaces it (and any earlier save's files that would disagree); a failure keeps the old one.
    """
    fmt = layout_of(compressed)
    directory = os.fspath(save_directory)
    check_target_folder(directory)
    refuse_adapter_folder(directory)
    if fmt == COMPRESSED_TENSORS and _config_json(model) is None:
        raise ValueError(
            f"the compressed-tensors layout needs a transformers model (its config.json carries the layout's "
            f"quantization_config); {type(model).__name__} has no config: save with compressed=True or False"
        )
    config_dict = _config_dict(config)
    masks = resolve_masks(model, masks, config_dict)
    check_weights_follow_masks(dict(model.named_parameters()), masks, "save_sparse")
    save_id = new_save_id()
    with save_transaction(directory, replaced_by_a_save, verify=lambda staging: read_back(staging, model, masks, fmt)) as staging:
        if fmt == DENSE:
            write_dense_checkpoint(staging, lambda header: _write_dense_weights(model, staging, max_shard_size, header), masks,
                                   config_dict, save_id)
        else:
            write_sparsity_config(staging, config_dict)
            writer = _save_native if fmt == NATIVE else _save_compressed_tensors
            writer(model, staging, masks, config_dict, max_shard_size, save_id)
    logger.info("saved %s checkpoint to %s", fmt, directory)
    return fmt


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
