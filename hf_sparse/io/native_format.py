"""Header metadata written by hf_sparse's writers, and the masks file (names and keys: :mod:`.layout_names`).

Folder layouts (``save_sparse``):

- ``dense`` (default): ``model.safetensors`` (or shards + ``model.safetensors.index.json``), loadable
  by plain ``from_pretrained``; masks in ``sparse_masks.safetensors``.
- ``native`` (``compressed=True``): ``model.sparse.safetensors`` (or shards + index); no file under a
  standard weights name, so plain ``from_pretrained`` raises instead of loading random weights.
- ``compressed-tensors``: ``model.safetensors`` in the compressed-tensors 0.14 sparse layout plus
  ``quantization_config`` in config.json.

Every file hf_sparse writes carries header metadata (strings): ``hf_sparse_format_version``,
``hf_sparse_format``, ``hf_sparse_sparsity_config`` (JSON), ``hf_sparse_tensor_sparsity``
(JSON ``{name: sparsity}``), ``hf_sparse_save_id`` (the same in every file of one save, so files
of different saves are told apart; not a signature: see :mod:`hf_sparse.io.binding`),
``hf_sparse_model_config`` (the config.json fields that change what loads, as saved), ``hf_sparse_masks`` (``"file"``: the masks are in
``sparse_masks.safetensors`` of the same save; ``"weights"``: the weights' encoding implies them),
and for ``native`` ``hf_sparse_encodings`` / ``hf_sparse_aliases``.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping, Optional

import torch

from ..core.bitpack import pack_bits, unpack_bits
from .native_codec import as_2d
from .layout_names import (  # noqa: F401  (public here too: the names predate layout_names)
    COMPRESSED_TENSORS, DENSE, FORMAT_VERSION, FORMATS, KEY_ALIASES, KEY_CONFIG, KEY_ENCODINGS, KEY_FORMAT, KEY_MASKS,
    KEY_MODEL_CONFIG, KEY_SAVE_ID, KEY_SHAPES, KEY_SPARSITY, KEY_VERSION, MASKS_IN_FILE, MASKS_IN_WEIGHTS, MASKS_PATTERN,
    NATIVE, NATIVE_PATTERN, SAVE_KEYS, WEIGHTS_PATTERN, check_version, json_meta,
)
from .shards import Checkpoint, save_sharded


def base_metadata(
    fmt: str,
    config: Optional[Mapping[str, Any]],
    masks: Mapping[str, torch.Tensor],
    save_id: str,
    masks_where: str,
) -> dict[str, str]:
    return {
        "format": "pt",
        KEY_VERSION: str(FORMAT_VERSION),
        KEY_FORMAT: fmt,
        KEY_SAVE_ID: save_id,
        KEY_MASKS: masks_where,
        KEY_CONFIG: json.dumps(dict(config) if config else None, sort_keys=True),
        KEY_SPARSITY: json.dumps({n: round(1.0 - int(m.sum()) / max(m.numel(), 1), 8) for n, m in masks.items()}),
    }


def save_masks(directory: str, masks: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """Write masks as packed bits (1 bit per weight) under their parameter names."""
    packed = {name: pack_bits(m.detach().cpu().to(torch.bool).reshape(as_2d(m.shape))) for name, m in masks.items()}
    shapes = json.dumps({name: list(m.shape) for name, m in masks.items()})
    save_sharded(packed, directory, MASKS_PATTERN, "5GB", lambda keys: {**metadata, KEY_SHAPES: shapes})


def read_masks_file(checkpoint: Checkpoint) -> dict[str, torch.Tensor]:
    """Decode a ``sparse_masks.safetensors`` checkpoint (headers already read), checking every shape first."""
    where = checkpoint.first
    shapes: dict = {}
    for path, metadata in zip(checkpoint.files, checkpoint.metadata):
        check_version(metadata, path)
        part = json_meta(metadata, KEY_SHAPES, path)
        if not isinstance(part, dict):
            raise ValueError(f"{path} lacks {KEY_SHAPES}: not an hf_sparse masks file")
        shapes.update(part)
    for name, info in checkpoint.tensors.items():
        shape = shapes.get(name)
        if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
            raise ValueError(f"{where}: mask {name!r} has no valid recorded shape in {KEY_SHAPES} ({shape!r})")
        rows, cols = as_2d(shape)
        if info.shape != (rows, math.ceil(cols / 8)) or info.dtype != torch.uint8:
            raise ValueError(
                f"{where}: mask {name!r} bits {info.shape} {info.dtype} do not fit its recorded shape {shape}: corrupt"
            )
    return {
        name: unpack_bits(bits, as_2d(shapes[name])[1]).reshape(shapes[name])
        for name, bits in checkpoint.load().items()
    }
