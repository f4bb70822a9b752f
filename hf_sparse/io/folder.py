"""What a saved folder holds, read from headers only, and whether its files belong together.

:func:`inspect_folder` is the first step of every load (and the check a save runs on its staged
files before swapping them in). It reads the headers of the weights, the masks file and
config.json, and refuses a folder whose files come from different saves, with a message that
says what to do: weights of one save beside masks or config of another, two layouts at once,
compressed-tensors weights without their config block, shards an index does not name.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Optional

from . import ct_layout
from .binding import check_save_binding
from .files import leftover_backups
from .native_format import (
    COMPRESSED_TENSORS,
    DENSE,
    KEY_FORMAT,
    MASKS_PATTERN,
    NATIVE,
    NATIVE_PATTERN,
    SAVE_KEYS,
    WEIGHTS_PATTERN,
    check_version,
)
from .shards import Checkpoint, open_checkpoint

_RESAVE = "save the model again with hf_sparse.save_sparse into an empty folder"


@dataclass
class Folder:
    """A checked folder: its layout, weights and masks checkpoints (headers read), config.json."""

    directory: str
    layout: str
    weights: Checkpoint
    masks: Optional[Checkpoint]
    config: Optional[dict]
    header: dict[str, str]  # hf_sparse header keys of the weights, equal in every file ({} when foreign)
    ct_format: Optional[str] = None

    @property
    def first_file_metadata(self) -> dict[str, str]:
        """All header metadata of the first weights file (encodings, aliases, sparsity config);
        ``header`` holds only the keys every file of the save shares."""
        return self.weights.metadata[0]

    header_metadata = first_file_metadata  # deprecated name (it also named a context manager in io.save)


def read_config(directory: str) -> Optional[dict]:
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"{path} is corrupt: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object")
    return data


def save_header(checkpoint: Checkpoint) -> dict[str, str]:
    """The hf_sparse header keys of a checkpoint, checked equal across its files (and versions readable)."""
    for path, metadata in zip(checkpoint.files, checkpoint.metadata):
        check_version(metadata, path)
    first = checkpoint.metadata[0]
    for path, metadata in zip(checkpoint.files[1:], checkpoint.metadata[1:]):
        for key in SAVE_KEYS:
            if metadata.get(key) != first.get(key):
                raise ValueError(
                    f"{path} and {checkpoint.first} disagree on {key} ({metadata.get(key)!r} vs {first.get(key)!r}): "
                    f"files of different saves mixed; {_RESAVE}"
                )
    return {k: first[k] for k in SAVE_KEYS if k in first}


def inspect_folder(directory: str) -> Folder:
    """Headers of every checkpoint file in ``directory``, checked to belong to one save (see module doc)."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory} is not a folder")
    try:
        return _inspect(directory)
    except (ValueError, FileNotFoundError) as err:
        backups = leftover_backups(directory)
        if backups:
            note = f" (an interrupted save left the previous checkpoint in {backups[0]}: move its files back to restore it)"
            raise type(err)(f"{err}{note}") from err
        raise


def _inspect(directory: str) -> Folder:
    config = read_config(directory)
    native = open_checkpoint(directory, NATIVE_PATTERN)
    dense = open_checkpoint(directory, WEIGHTS_PATTERN)
    masks = open_checkpoint(directory, MASKS_PATTERN)
    if native is not None and dense is not None:
        raise ValueError(
            f"{directory} holds both {os.path.basename(native.first)} (hf_sparse native) and "
            f"{os.path.basename(dense.first)}: two saves mixed (e.g. save_pretrained over a save_sparse folder); "
            f"delete the stale one, or {_RESAVE}"
        )
    weights = native or dense
    if weights is None:
        raise FileNotFoundError(
            f"{directory} holds no safetensors weights (model.safetensors or model.sparse.safetensors)"
        )
    header = save_header(weights)
    masks_header = save_header(masks) if masks is not None else {}
    if native is not None:
        layout, ct_format = NATIVE, None
        if header.get(KEY_FORMAT) != NATIVE:
            raise ValueError(f"{native.first} lacks hf_sparse's native header: not an hf_sparse compressed file")
        if masks is not None:
            raise ValueError(
                f"{directory}: a stray {os.path.basename(masks.first)} beside native weights (whose encoding holds "
                "the exact masks): delete it"
            )
    else:
        layout, ct_format = _dense_or_ct(directory, dense, header, config)
    check_save_binding(directory, weights.first, header, masks.first if masks is not None else None, masks_header, config)
    return Folder(directory, layout, weights, masks, config, header, ct_format)


def _dense_or_ct(directory: str, dense: Checkpoint, header: dict, config: Optional[dict]) -> tuple[str, Optional[str]]:
    ct_format = ct_layout.sparsity_format(config or {})
    prefixes = ct_layout.compressed_prefixes(dense.tensors)
    written_as = header.get(KEY_FORMAT)
    if ct_format is None and (prefixes or written_as == COMPRESSED_TENSORS):
        example = f"{prefixes[0]}.bitmask" if prefixes else "its header"
        raise ValueError(
            f"{dense.first} holds compressed-tensors sparse weights ({example}) but config.json has no "
            "compressed-tensors quantization_config (lost, e.g. by config.save_pretrained?): loading it as dense "
            f"would give random weights. Restore config.json from the original save, or {_RESAVE}"
        )
    if ct_format is not None and (written_as == DENSE or (not prefixes and written_as != COMPRESSED_TENSORS)):
        raise ValueError(
            f"{directory}/config.json says compressed-tensors {ct_format} but {os.path.basename(dense.first)} holds "
            "dense weights (config.json of another save): remove quantization_config from config.json, or "
            f"{_RESAVE}"
        )
    return (COMPRESSED_TENSORS, ct_format) if ct_format is not None else (DENSE, None)


def describe_header(folder: Folder) -> dict[str, Any]:
    """Header-level facts of a folder (file sizes), for ``inspect``."""
    files = folder.weights.files + (folder.masks.files if folder.masks else [])
    return {os.path.basename(p): os.path.getsize(p) for p in files}
