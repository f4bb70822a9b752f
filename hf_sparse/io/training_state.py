"""The sparsifier's resume state in a Trainer checkpoint: one safetensors file, never pickle.

``sparsity_state.safetensors`` holds every tensor of the state except the masks (counters, RNG
state) under "/"-joined key paths, and in its header the rest as JSON (``{"__tensor__": key}``
placeholders), the sparsity config and a format version. It is one file, so it is written (and
replaced) in one atomic step. The masks are not copied into it: they are the checkpoint's
``sparse_masks.safetensors`` (one masks file per save), and the header records the save id that
file must carry, so a state is never combined with masks of another save. The weights beside it
(``model.safetensors`` or a peft ``adapter_model.safetensors``) must carry that save id too: a
resume never pairs the state and masks of one checkpoint with the weights of another.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, Optional

import torch
from safetensors.torch import save_file

from .binding import check_state_binding
from .files import new_save_id, save_transaction
from .native_format import KEY_SAVE_ID, MASKS_PATTERN, WEIGHTS_PATTERN, base_metadata, save_masks
from .shards import open_checkpoint, read_metadata, with_checksums

STATE_FILE = "sparsity_state.safetensors"
LEGACY_STATE_JSON = "sparsity_state.json"  # hf_sparse <= format 1 wrote the state as two files
STATE_FILES = (STATE_FILE, LEGACY_STATE_JSON)
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_UNBINDABLE = ("pytorch_model.bin", "pytorch_model.bin.index.json", "adapter_model.bin")
FORMAT_VERSION = 2
KEY_STATE = "hf_sparse_state"
_TENSOR_KEY = "__tensor__"
_MASKS = "masks"


def _split(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach().cpu().contiguous()
        return {_TENSOR_KEY: path}
    if isinstance(value, Mapping):
        return {str(k): _split(v, f"{path}/{k}", tensors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_split(v, f"{path}/{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"sparsity state {path} is {value}: refusing to save a non-finite number")
    return value


def _join(value: Any, tensors: Mapping[str, torch.Tensor], where: str, depth: int = 0) -> Any:
    if depth > 32:
        raise ValueError(f"{where}: state nested deeper than 32 levels: corrupt")
    if isinstance(value, dict):
        if set(value) == {_TENSOR_KEY}:
            key = value[_TENSOR_KEY]
            if not isinstance(key, str) or key not in tensors:
                raise ValueError(f"{where}: the state refers to tensor {key!r}, absent from the file")
            return tensors[key]
        return {k: _join(v, tensors, where, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_join(v, tensors, where, depth + 1) for v in value]
    return value


def write_state(
    directory: str, state: Mapping[str, Any], config_dict: Mapping[str, Any], save_id: str,
    extra: Optional[Mapping[str, str]] = None,
) -> None:
    """Write ``state`` minus its masks as ``sparsity_state.safetensors`` (into a staging folder); ``extra``:
    more header entries (an FSDP2 rank records the Trainer files of its save there)."""
    tensors: dict[str, torch.Tensor] = {}
    body = _split({k: v for k, v in state.items() if k != _MASKS}, "state", tensors)
    document = {
        "format_version": FORMAT_VERSION,
        "config": dict(config_dict),
        "state": body,
        "masks_file": MASKS_PATTERN.format(suffix="") if state.get(_MASKS) is not None else None,
    }
    metadata = {**(extra or {}), "format": "pt", KEY_STATE: json.dumps(document, sort_keys=True), KEY_SAVE_ID: save_id}
    save_file(tensors, os.path.join(directory, STATE_FILE), metadata=with_checksums(tensors, metadata))


def save_sparsity_state(
    directory: str, state: Mapping[str, Any], config_dict: Mapping[str, Any], save_id: Optional[str] = None,
    extra: Optional[Mapping[str, str]] = None,
) -> None:
    """Write a state (its masks as ``sparse_masks.safetensors``) into ``directory`` as one transaction;
    ``save_id``: the id of the save it belongs to (a new one by default), ``extra``: see :func:`write_state`."""
    save_id = save_id or new_save_id()
    masks = state.get(_MASKS)
    with save_transaction(directory, lambda name: name in STATE_FILES or name.startswith("sparse_masks")) as staging:
        if masks is not None:
            save_masks(staging, masks, base_metadata("state", None, masks, save_id, "file"))
        write_state(staging, state, config_dict, save_id, extra)


def has_sparsity_state(directory: str) -> bool:
    return any(os.path.isfile(os.path.join(directory, name)) for name in STATE_FILES)


def load_sparsity_state(directory: str, expected_masks: Optional[Mapping[str, torch.Size]] = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return (state, config dict) saved by :func:`save_sparsity_state` or ``SparseTrainer``, validated.

    ``expected_masks``: the shapes the masks must have (the sparsifier's targets).
    """
    from .load import read_masks_checkpoint  # load reads folders; this module is below it

    path = os.path.join(directory, STATE_FILE)
    if not os.path.isfile(path):
        if os.path.isfile(os.path.join(directory, LEGACY_STATE_JSON)):
            raise ValueError(
                f"{directory} holds a resume state of an older hf_sparse ({LEGACY_STATE_JSON}, format 1), which this "
                "version does not resume: load the model from the folder and start a new run instead"
            )
        raise FileNotFoundError(f"{directory} holds no hf_sparse state ({STATE_FILE})")
    checkpoint = open_checkpoint(directory, STATE_FILE.replace(".safetensors", "{suffix}.safetensors"))
    header = checkpoint.metadata[0]
    try:
        document = json.loads(header.get(KEY_STATE, ""))
    except (json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{path}: header {KEY_STATE} is missing or corrupt: {err}") from err
    if not isinstance(document, dict) or not isinstance(document.get("state"), dict):
        raise ValueError(f"{path}: header {KEY_STATE} is not a state document")
    version = document.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION:
        raise ValueError(
            f"{path} has format version {version!r}; this hf_sparse reads versions <= {FORMAT_VERSION}: upgrade hf_sparse"
        )
    state = _join(document["state"], checkpoint.load(), path)
    check_weights_binding(directory, header.get(KEY_SAVE_ID), STATE_FILE)
    if document.get("masks_file") is None and expected_masks is not None:
        raise ValueError(
            f"{path}: 'masks_file' in {KEY_STATE} is null, but resuming needs the masks of "
            f"{len(expected_masks)} target weights: the state is incomplete or edited; resume from another checkpoint"
        )
    if document.get("masks_file") is not None:
        masks, masks_id = read_masks_checkpoint(directory)
        if masks is None or masks_id != header.get(KEY_SAVE_ID):
            raise ValueError(
                f"{path} and {MASKS_PATTERN.format(suffix='')} in {directory} are not from the same save "
                "(interrupted save or files copied between checkpoints): resume from another checkpoint"
            )
        state[_MASKS] = masks
    config = document.get("config", {})
    if not isinstance(config, dict):
        raise ValueError(f"{path}: 'config' in {KEY_STATE} must be an object")
    validate_state(state, path, expected_masks)
    return state, config


def weights_save_id(directory: str) -> tuple[Optional[str], Optional[str]]:
    """(weights file name, its save id) of a checkpoint folder: ``model.safetensors`` (or shards) or a peft
    ``adapter_model.safetensors``; (None, None) when it holds no weights (an FSDP2 rank folder)."""
    from .folder import save_header  # folder reads whole folders; this module is below it

    checkpoint = open_checkpoint(directory, WEIGHTS_PATTERN)
    if checkpoint is not None:
        return os.path.basename(checkpoint.first), save_header(checkpoint).get(KEY_SAVE_ID)
    adapter = os.path.join(directory, ADAPTER_WEIGHTS)
    if os.path.isfile(adapter):
        return ADAPTER_WEIGHTS, read_metadata(adapter).get(KEY_SAVE_ID)
    for name in _UNBINDABLE:
        if os.path.isfile(os.path.join(directory, name)):
            return name, None
    return None, None


def check_weights_binding(directory: str, save_id: Optional[str], what: str) -> None:
    """The weights in ``directory`` must be of the save that wrote ``what`` (same save id), or be absent."""
    name, weights_id = weights_save_id(directory)
    if name is not None:
        check_state_binding(directory, name, weights_id, what, save_id)


def read_back_checkpoint(staging: str) -> None:
    """What a resume will read, read from a staged Trainer checkpoint before it replaces the old one."""
    from .folder import inspect_folder

    if open_checkpoint(staging, WEIGHTS_PATTERN) is not None:
        inspect_folder(staging)
    if has_sparsity_state(staging):
        load_sparsity_state(staging)


#: what a Sparsifier's state must hold to be resumed (a renamed or dropped key would reset it silently)
RESUME_KEYS = ("step", "started", "pending_update", "method")
_OPTIONAL_KEYS = ("update_count", _MASKS)  # update_count: states of older hf_sparse lack it (0)


def validate_state(state: Mapping[str, Any], where: str, expected_masks: Optional[Mapping[str, torch.Size]] = None) -> None:
    """Refuse a resume state that would silently change training: wrong types, shapes or ranges.

    With ``expected_masks`` (a resume) the state must also hold every key of :data:`RESUME_KEYS` and no other."""
    if expected_masks is not None:
        missing = [key for key in RESUME_KEYS if key not in state]
        unknown = sorted(key for key in state if key not in RESUME_KEYS + _OPTIONAL_KEYS)
        if missing or unknown:
            raise ValueError(
                f"{where}: the resume state lacks {missing} or holds unknown keys {unknown} (file edited or corrupt): "
                "resume from another checkpoint"
            )
    for key in ("step", "update_count"):
        if key in state and (not isinstance(state[key], int) or isinstance(state[key], bool) or state[key] < 0):
            raise ValueError(f"{where}: '{key}' must be an integer >= 0, got {state[key]!r}")
    for key in ("started", "pending_update"):
        if key in state and not isinstance(state[key], bool):
            raise ValueError(f"{where}: '{key}' must be true or false, got {state[key]!r}")
    masks = state.get(_MASKS)
    if masks is not None:
        if not isinstance(masks, Mapping):
            raise ValueError(f"{where}: 'masks' must map parameter names to bool tensors")
        for name, mask in masks.items():
            if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
                kind = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
                raise ValueError(f"{where}: mask {name!r} must be a bool tensor, got {kind}")
        if expected_masks is not None:
            missing, extra = sorted(set(expected_masks) - set(masks)), sorted(set(masks) - set(expected_masks))
            if missing or extra:
                raise ValueError(f"{where}: masks do not match the model's targets: missing {missing}, unexpected {extra}")
            bad = [f"{n}: {tuple(masks[n].shape)} vs {tuple(s)}" for n, s in expected_masks.items() if masks[n].shape != s]
            if bad:
                raise ValueError(f"{where}: mask shapes do not match the model: {bad}")
    method = state.get("method", {})
    if not isinstance(method, Mapping):
        raise ValueError(f"{where}: 'method' must be an object")
    _validate_method_state(method, where)


def _validate_method_state(method: Mapping[str, Any], where: str) -> None:
    for key, value in method.items():
        if key.endswith("sparsity") and value is not None:
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value < 1.0:
                raise ValueError(f"{where}: method state '{key}' must be a sparsity in [0, 1), got {value!r}")
        elif key in ("rounds",) and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise ValueError(f"{where}: method state '{key}' must be an integer >= 0, got {value!r}")
        elif key == "generator":
            if not isinstance(value, torch.Tensor) or value.dtype != torch.uint8 or value.dim() != 1:
                raise ValueError(f"{where}: method state 'generator' must be a uint8 RNG state tensor")
            expected = torch.Generator().get_state().numel()
            if value.numel() != expected:
                raise ValueError(f"{where}: method state 'generator' has {value.numel()} bytes, expected {expected}")
        elif key == "active_counts":
            if not isinstance(value, Mapping) or not all(
                isinstance(c, torch.Tensor) and not c.is_floating_point() and (c.numel() == 0 or int(c.min()) >= 0)
                for c in value.values()
            ):
                raise ValueError(f"{where}: method state 'active_counts' must map names to integer tensors >= 0")
