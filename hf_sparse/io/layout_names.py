"""File names, header keys and the format version of hf_sparse's saved folders, with the two
header readers that need nothing else.

It imports no torch, so the writer and loader (:mod:`hf_sparse.io.native_format`) and the
header-only ``inspect`` (:mod:`hf_sparse.reporting.folder_summary`) share one copy.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from .binding import KEY_MODEL_CONFIG

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
    """The JSON value of header key ``key`` (None when absent); a ValueError naming ``where`` when corrupt."""
    if key not in metadata:
        return None
    try:
        return json.loads(metadata[key])
    except (ValueError, RecursionError) as err:
        raise ValueError(f"{where}: header metadata {key} is corrupt: {err}") from err
