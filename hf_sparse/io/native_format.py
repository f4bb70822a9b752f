"""Names, versions and header metadata shared by hf_sparse's writer and reader, and the masks file.

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
from .binding import KEY_MODEL_CONFIG
from .shards import Checkpoint, save_sharded

FORMAT_VERSION = 1
DENSE, NATIVE, COMPRESSED_TENSORS = "dense", "native", "compressed-tensors"
FORMATS = (DENSE, NATIVE, COMPRESSED_TENSORS)
WEIGHTS_PATTERN = "model{suffix}.safetensors"
NATIVE_PATTERN = "model.sparse{suffix}.safetensors"
MASKS_PATTERN = "sparse_masks{suffix}.safetensors"

KEY_VERSION = "hf_sparse_format_version"
KEY_FORMAT = "hf_sparse_format"
KEY_CONFIG = "hf_sparse_sparsity_config"
KEY_SPARSITY = "hf_sparse_tensor_sparsity"
KEY_ENCODINGS = "hf_sparse_encodings"
KEY_ALIASES = "hf_sparse_aliases"
KEY_SHAPES = "hf_sparse_mask_shapes"
KEY_SAVE_ID = "hf_sparse_save_id"
KEY_MASKS = "hf_sparse_masks"
MASKS_IN_FILE, MASKS_IN_WEIGHTS = "file", "weights"
#: header keys every file of one save must agree on
SAVE_KEYS = (KEY_VERSION, KEY_FORMAT, KEY_SAVE_ID, KEY_MASKS, KEY_CONFIG, KEY_MODEL_CONFIG)


def check_version(metadata: Mapping[str, str], where: str) -> None:
    """Refuse files from a newer, incompatible hf_sparse with a clear message."""
    raw = metadata.get(KEY_VERSION)
    if raw is None:
        return
    try:
        version = int(raw)
    except ValueError as err:
        raise ValueError(f"{where}: invalid {KEY_VERSION} {raw!r}") from err
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{where} was written by a newer hf_sparse (format version {version}); this hf_sparse reads "
            f"format versions <= {FORMAT_VERSION}: upgrade hf_sparse (pip install -U hf_sparse)"
        )


def json_meta(metadata: Mapping[str, str], key: str, where: str) -> Any:
    if key not in metadata:
        return None
    try:
        return json.loads(metadata[key])
    except (json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{where}: header metadata {key} is corrupt: {err}") from err


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
