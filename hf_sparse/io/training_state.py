"""Sparsity state in a Trainer checkpoint: tensors in safetensors, the rest in JSON, never pickle.

``sparsity_state.safetensors`` holds every tensor of the state (masks, counters, RNG state) under
"/"-joined key paths; ``sparsity_state.json`` holds everything else with ``{"__tensor__": key}``
placeholders, plus the config and a format version. The JSON is written last, so a folder whose
JSON exists holds a complete state.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .files import atomic_path, atomic_write_text

STATE_TENSORS = "sparsity_state.safetensors"
STATE_JSON = "sparsity_state.json"
FORMAT_VERSION = 1
_TENSOR_KEY = "__tensor__"


def _split(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        tensors[path] = value.detach().cpu().contiguous()
        return {_TENSOR_KEY: path}
    if isinstance(value, Mapping):
        return {str(k): _split(v, f"{path}/{k}", tensors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_split(v, f"{path}/{i}", tensors) for i, v in enumerate(value)]
    return value


def _join(value: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if set(value) == {_TENSOR_KEY}:
            key = value[_TENSOR_KEY]
            if key not in tensors:
                raise ValueError(f"sparsity state refers to tensor {key!r}, absent from {STATE_TENSORS}")
            return tensors[key]
        return {k: _join(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_join(v, tensors) for v in value]
    return value


def save_sparsity_state(directory: str, state: Mapping[str, Any], config_dict: Mapping[str, Any]) -> None:
    """Write the sparsifier's state into ``directory`` atomically."""
    os.makedirs(directory, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    body = _split(dict(state), "state", tensors)
    with atomic_path(os.path.join(directory, STATE_TENSORS)) as tmp:
        save_file(tensors, tmp, metadata={"format": "pt", "hf_sparse_format_version": str(FORMAT_VERSION)})
    document = {"format_version": FORMAT_VERSION, "config": dict(config_dict), "state": body}
    atomic_write_text(os.path.join(directory, STATE_JSON), json.dumps(document, indent=1, sort_keys=True))


def has_sparsity_state(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, STATE_JSON))


def load_sparsity_state(directory: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return (state, config dict) saved by :func:`save_sparsity_state`, with clear errors."""
    json_path = os.path.join(directory, STATE_JSON)
    tensor_path = os.path.join(directory, STATE_TENSORS)
    if not os.path.isfile(json_path) or not os.path.isfile(tensor_path):
        raise FileNotFoundError(f"{directory} holds no hf_sparse state ({STATE_JSON} + {STATE_TENSORS})")
    try:
        with open(json_path, encoding="utf-8") as handle:
            document = json.load(handle)
    except json.JSONDecodeError as err:
        raise ValueError(f"{json_path} is corrupt: {err}") from err
    version = document.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{json_path} has format version {version!r}; this hf_sparse reads versions <= {FORMAT_VERSION}: upgrade hf_sparse"
        )
    try:
        tensors = load_file(tensor_path)
    except (SafetensorError, OSError, RuntimeError) as err:
        raise ValueError(f"{tensor_path} is corrupt or truncated: {err}") from err
    return _join(document["state"], tensors), document.get("config", {})
