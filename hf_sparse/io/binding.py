"""What ties the files of one save together beyond the save id: config.json and the side files.

The weights carry, in their header, the save id and the fields of ``config.json`` that change
what loads (:data:`BOUND_FIELDS`: class, dtype, ties, layer counts and sizes), as they were at
save time. A load compares them with ``config.json`` and refuses a folder whose config was edited
or copied from another save, naming the field. ``sparsity_config.json`` must equal the sparsity
config recorded in the same header. The resume state, the masks and an adapter carry the same
save id as the weights they were saved with.

It imports no torch, so a header-only reader (``inspect``) can run the same checks.

None of this is a signature: ids and fields sit in plain JSON headers and anyone can rewrite
them. They catch accidents (files copied between saves, edited configs), not tampering.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional

KEY_MODEL_CONFIG = "hf_sparse_model_config"
CONFIG_NAME = "sparsity_config.json"  # hf_sparse.config.CONFIG_NAME; this module imports neither torch nor config
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
