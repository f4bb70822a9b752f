"""safetensors files and shard indexes: checked reads, atomic (sharded) writes, header metadata edits.

Only safetensors, never pickle. Every read goes through :func:`open_checked`, so a truncated or
corrupt file gives a ``ValueError`` naming it instead of a crash deep inside a loader.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import struct
from typing import Callable, Mapping, Optional, Union

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .files import atomic_path, atomic_write_text

_HEADER_LIMIT = 100 * 1024 * 1024  # safetensors' own cap on the JSON header


def index_name(pattern: str) -> str:
    return pattern.format(suffix="") + ".index.json"


def open_checked(path: str) -> "safe_open":
    """Open a safetensors file, turning any format error into a clear ``ValueError``."""
    try:
        return safe_open(path, framework="pt")
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise ValueError(f"{path} is not a readable safetensors file (corrupt or truncated?): {err}") from err


def read_metadata(path: str) -> dict[str, str]:
    with open_checked(path) as handle:
        return dict(handle.metadata() or {})


def weight_files(directory: str, pattern: str) -> Optional[list[str]]:
    """Files of a (possibly sharded) checkpoint named by ``pattern``, or None when absent."""
    single = os.path.join(directory, pattern.format(suffix=""))
    index = os.path.join(directory, index_name(pattern))
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as handle:
                weight_map = json.load(handle)["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{index} is corrupt: {err}") from err
        names = sorted(set(weight_map.values()))
        for name in names:  # an index must not point outside its folder
            if not isinstance(name, str) or os.path.basename(name) != name or not name.endswith(".safetensors"):
                raise ValueError(f"{index} names an invalid shard file {name!r}")
            if not os.path.isfile(os.path.join(directory, name)):
                raise ValueError(f"{index} names {name}, which is missing from {directory}")
        return [os.path.join(directory, n) for n in names]
    if os.path.isfile(single):
        return [single]
    return None


def load_tensors(files: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of ``files`` and their merged header metadata (later shards win on equal keys)."""
    tensors: dict[str, torch.Tensor] = {}
    metadata: dict[str, str] = {}
    for path in files:
        with open_checked(path) as handle:
            metadata.update(handle.metadata() or {})
            try:
                for key in handle.keys():
                    tensors[key] = handle.get_tensor(key)
            except (SafetensorError, OSError, RuntimeError) as err:
                raise ValueError(f"{path} is corrupt or truncated: {err}") from err
    return tensors, metadata


def remove_checkpoint_files(directory: str, pattern: str) -> None:
    """Delete a previous checkpoint saved under ``pattern`` (single file, shards and index)."""
    single = pattern.format(suffix="")
    shard_re = re.compile(re.escape(pattern).replace(re.escape("{suffix}"), r"-\d{5}-of-\d{5}") + "$")
    for path in glob.glob(os.path.join(directory, "*.safetensors*")):
        name = os.path.basename(path)
        if name in (single, index_name(pattern)) or shard_re.match(name):
            os.unlink(path)


def save_sharded(
    tensors: Mapping[str, torch.Tensor],
    directory: str,
    pattern: str,
    max_shard_size: Union[int, str],
    metadata_for: Callable[[list[str]], dict[str, str]],
) -> list[str]:
    """Write ``tensors`` like ``save_pretrained``: one file, or shards plus an index when too big.

    ``metadata_for(keys)`` gives each file's header metadata (str -> str). Files are written to a
    temporary name and renamed; the index is written last.
    """
    split = split_torch_state_dict_into_shards(dict(tensors), filename_pattern=pattern, max_shard_size=max_shard_size)
    remove_checkpoint_files(directory, pattern)
    written = []
    for filename, keys in split.filename_to_tensors.items():
        path = os.path.join(directory, filename)
        with atomic_path(path) as tmp:
            save_file({k: tensors[k].contiguous() for k in keys}, tmp, metadata=metadata_for(keys))
        written.append(path)
    if split.is_sharded:
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(split.tensor_to_filename.items()))}
        atomic_write_text(os.path.join(directory, index_name(pattern)), json.dumps(index, indent=2) + "\n")
    return written


def rewrite_metadata(path: str, extra: Mapping[str, str]) -> None:
    """Add ``extra`` to a safetensors file's ``__metadata__`` without decoding its tensors.

    Tensor offsets are relative to the end of the header, so only the header changes; the data
    bytes are streamed into a temporary file that replaces ``path`` atomically.
    """
    with open_checked(path):  # validate first
        pass
    with open(path, "rb") as src:
        (length,) = struct.unpack("<Q", src.read(8))
        if length > _HEADER_LIMIT:
            raise ValueError(f"{path}: header too large")
        header = json.loads(src.read(length))
        meta = dict(header.get("__metadata__") or {})
        meta.update({str(k): str(v) for k, v in extra.items()})
        header["__metadata__"] = meta
        encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
        encoded += b" " * (-len(encoded) % 8)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as dst:
                dst.write(struct.pack("<Q", len(encoded)))
                dst.write(encoded)
                shutil.copyfileobj(src, dst, 16 * 1024 * 1024)
                dst.flush()
                os.fsync(dst.fileno())
