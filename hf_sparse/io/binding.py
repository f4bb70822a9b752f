"""What ties the files of one save together beyond the save id: config.json and the side files.

The weights carry, in their header, the save id and the fields of ``config.json`` that change
what loads (:data:`BOUND_FIELDS`: class, dtype, ties, layer counts and sizes), as they were at
save time. A load compares them with ``config.json`` and refuses a folder whose config was edited
or copied from another save, naming the field. ``sparsity_config.json`` must equal the sparsity
config recorded in the same header. The resume state, the masks and an adapter carry the same
save id as the weights they were saved with.

It imports no torch, so a header-only reader (``inspect`` without ``--verify``) runs the same
checks as a load (:func:`check_save_binding`, :func:`check_state_binding`).

None of this is a signature: ids and fields sit in plain JSON headers and anyone can rewrite
them. They catch accidents (files copied between saves, edited configs), not tampering.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any, Mapping, Optional

KEY_MODEL_CONFIG = "hf_sparse_model_config"
CONFIG_NAME = "sparsity_config.json"  # hf_sparse.config.CONFIG_NAME; this module imports neither torch nor config
# header keys and values of hf_sparse.io.native_format (which imports torch); a test keeps them equal
KEY_SAVE_ID = "hf_sparse_save_id"
KEY_MASKS = "hf_sparse_masks"
KEY_CONFIG = "hf_sparse_sparsity_config"
MASKS_IN_FILE, MASKS_IN_WEIGHTS = "file", "weights"
STATE_FILE = "sparsity_state.safetensors"  # hf_sparse.io.training_state.STATE_FILE
_MAX_HEADER = 100 * 1024 * 1024
#: config.json fields whose change alters the loaded weights (dtype, ties) or the model built
BOUND_FIELDS = (
    "architectures", "model_type", "dtype", "torch_dtype", "tie_word_embeddings", "tie_encoder_decoder",
    "num_hidden_layers", "num_layers", "n_layer", "num_decoder_layers", "encoder_layers", "decoder_layers",
    "hidden_size", "intermediate_size", "num_attention_heads", "vocab_size",
)
_RESAVE = "save the model again with hf_sparse.save_sparse into an empty folder"


def bound_fields(config: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    """The bound fields of a config.json dict (absent ones as None, so adding them is seen too)."""
    config = config or {}
    return {field: config.get(field) for field in BOUND_FIELDS}


def model_config_header(directory: str) -> dict[str, str]:
    """The header entry that binds the weights about to be written to ``directory/config.json`` ({} without one)."""
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        return {KEY_MODEL_CONFIG: json.dumps(bound_fields(json.load(handle)), sort_keys=True)}


def check_model_config(directory: str, weights_file: str, header: Mapping[str, str], config: Optional[dict]) -> None:
    """Refuse a config.json whose bound fields differ from the ones recorded with the weights."""
    raw = header.get(KEY_MODEL_CONFIG)
    if raw is None:
        return
    try:
        recorded = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{weights_file}: header {KEY_MODEL_CONFIG} is corrupt: {err}") from err
    if not isinstance(recorded, dict):
        raise ValueError(f"{weights_file}: header {KEY_MODEL_CONFIG} must be a JSON object")
    if config is None:
        raise ValueError(
            f"{directory} has no config.json, but {os.path.basename(weights_file)} was saved with one: restore it, or {_RESAVE}"
        )
    current = bound_fields(config)
    for field, value in sorted(recorded.items()):
        if current.get(field) != value:
            raise ValueError(
                f"{directory}/config.json field {field!r} is {current.get(field)!r} but {os.path.basename(weights_file)} "
                f"was saved with {value!r} (config.json edited or copied from another save; loading would change the "
                f"weights or the model): restore the field, or {_RESAVE}"
            )


def read_side_config(directory: str) -> Optional[dict]:
    """``sparsity_config.json`` of a folder as a JSON object (None when absent); ValueError when malformed."""
    path = os.path.join(directory, CONFIG_NAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{path} is corrupt: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object (the sparsity config), not {type(data).__name__}")
    return data


def check_side_config(directory: str, where: str, recorded: Optional[str]) -> None:
    """``sparsity_config.json`` must be the sparsity config recorded in the header of ``where`` (same save)."""
    side = read_side_config(directory)
    if side is None:
        return
    try:
        saved = json.loads(recorded) if recorded is not None else None
    except (json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{where}: its recorded sparsity config is corrupt: {err}") from err
    if side != saved:
        raise ValueError(
            f"{directory}/{CONFIG_NAME} differs from the sparsity config recorded in {os.path.basename(where)} "
            f"(a stale file from another save or run): delete {CONFIG_NAME}, or {_RESAVE}"
        )


def read_header_metadata(path: str) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file, from its header alone (no torch, no tensor read)."""
    try:
        with open(path, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            if size > _MAX_HEADER:
                raise ValueError(f"header of {size} bytes")
            header = json.loads(handle.read(size))
    except (OSError, struct.error, ValueError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"{path} is corrupt or truncated: {err}") from err
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return dict(metadata) if isinstance(metadata, dict) else {}


def check_save_binding(
    directory: str,
    weights_file: str,
    header: Mapping[str, str],
    masks_file: Optional[str],
    masks_header: Mapping[str, str],
    config: Optional[dict],
) -> None:
    """The header-level binding of a saved folder, the same for a load and for ``inspect``: the masks
    file is of the weights' save (or absent where the weights say so), and config.json and
    sparsity_config.json are the ones the weights were saved with."""
    where = header.get(KEY_MASKS)
    if masks_file is None:
        if where == MASKS_IN_FILE:
            raise ValueError(
                f"{weights_file} was saved with its masks in sparse_masks.safetensors, which is missing "
                f"(interrupted save or deleted file): without it kept zeros would be lost; {_RESAVE}"
            )
    else:
        weights_id, masks_id = header.get(KEY_SAVE_ID), masks_header.get(KEY_SAVE_ID)
        name = os.path.basename(masks_file)
        if weights_id is None or masks_id != weights_id or where == MASKS_IN_WEIGHTS:
            written_by = "hf_sparse" if weights_id is not None else "another tool (e.g. save_pretrained)"
            raise ValueError(
                f"{directory}: {name} belongs to another save than {os.path.basename(weights_file)} (written by "
                f"{written_by}): the masks would not match the weights. Delete {name} to take the masks from the "
                f"weights' zeros, or {_RESAVE}"
            )
    if KEY_SAVE_ID in header:  # files hf_sparse wrote: config.json and sparsity_config.json must be of this save
        check_model_config(directory, weights_file, header, config)
        check_side_config(directory, weights_file, header.get(KEY_CONFIG))


def check_state_binding(directory: str, weights_file: str, weights_id: Optional[str], state_file: str, state_id: Optional[str]) -> None:
    """A resume state (or masks saved with it) must be of the save that wrote the weights beside it."""
    if weights_id is None or state_id != weights_id:
        written_by = "another save" if weights_id is not None else "another tool (no hf_sparse save id)"
        raise ValueError(
            f"{directory}: {os.path.basename(weights_file)} and {state_file} are not from the same save "
            f"({os.path.basename(weights_file)} was written by {written_by}; files copied between checkpoints?): "
            "resuming would pair the weights of one save with the masks and state of another. Resume from an "
            "untouched checkpoint"
        )


def check_checkpoint_state(directory: str, weights_file: str, weights_id: Optional[str]) -> None:
    """Header-only: a Trainer checkpoint's resume state beside ``weights_file`` is of the same save."""
    path = os.path.join(directory, STATE_FILE)
    if os.path.isfile(path):
        check_state_binding(directory, weights_file, weights_id, STATE_FILE, read_header_metadata(path).get(KEY_SAVE_ID))
