"""safetensors files and shard indexes: checked reads (headers first, data after), sharded writes.

Only safetensors, never pickle. Every read goes through :func:`open_checked`, so a truncated or
corrupt file gives a ``ValueError`` naming it instead of a crash deep inside a loader. A
:class:`Checkpoint` reads the headers of all files of one (possibly sharded) checkpoint without
touching tensor data, so names, dtypes and shapes can be checked before anything is allocated.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Optional, Union

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .files import atomic_path, atomic_write_text

# safetensors dtype names -> torch dtypes (the ones a checkpoint of ours or transformers' holds)
_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


#: header key: JSON {tensor name: crc32 of its dtype, shape and bytes}, written by every hf_sparse save
KEY_CHECKSUMS = "hf_sparse_crc32"


def tensor_checksum(tensor: torch.Tensor) -> int:
    """crc32 over a tensor's dtype, shape and bytes: catches flipped, retyped, reshaped and swapped data."""
    crc = zlib.crc32(f"{tensor.dtype}:{list(tensor.shape)}".encode())
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return zlib.crc32(flat.view(torch.uint8).numpy() if flat.numel() else b"", crc)


def with_checksums(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> dict[str, str]:
    """``metadata`` plus the checksums of ``tensors`` (the content of one file)."""
    sums = {name: tensor_checksum(t) for name, t in sorted(tensors.items())}
    return {**metadata, KEY_CHECKSUMS: json.dumps(sums, separators=(",", ":"))}


def _checksums(path: str, metadata: Mapping[str, str], keys: Iterable[str]) -> Optional[dict[str, int]]:
    """The checksums a file's header records (None when it records none), checked to cover exactly its tensors."""
    raw = metadata.get(KEY_CHECKSUMS)
    if raw is None:
        return None
    try:
        sums = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{path}: header {KEY_CHECKSUMS} is corrupt: {err}") from err
    if not isinstance(sums, dict) or not all(isinstance(v, int) and not isinstance(v, bool) for v in sums.values()):
        raise ValueError(f"{path}: header {KEY_CHECKSUMS} must map tensor names to integers")
    keys = set(keys)
    if set(sums) != keys:
        odd = sorted(set(sums) ^ keys)[:3]
        raise ValueError(f"{path}: tensors {odd} do not match the ones its header records (file corrupt or edited)")
    return sums


def index_name(pattern: str) -> str:
    return pattern.format(suffix="") + ".index.json"


def shard_regex(pattern: str) -> "re.Pattern[str]":
    return re.compile(re.escape(pattern).replace(re.escape("{suffix}"), r"-\d{5}-of-\d{5}") + "$")


def is_checkpoint_file(name: str, pattern: str) -> bool:
    """Whether ``name`` is the single file, a shard or the index of a checkpoint saved under ``pattern``."""
    return name in (pattern.format(suffix=""), index_name(pattern)) or bool(shard_regex(pattern).match(name))


def open_checked(path: str) -> "safe_open":
    """Open a safetensors file, turning any format error into a clear ``ValueError``."""
    try:
        return safe_open(path, framework="pt")
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise ValueError(f"{path} is not a readable safetensors file (corrupt or truncated?): {err}") from err


def read_metadata(path: str) -> dict[str, str]:
    with open_checked(path) as handle:
        return dict(handle.metadata() or {})


@dataclass(frozen=True)
class TensorInfo:
    """What a safetensors header says about one tensor (no data read)."""

    path: str
    dtype: Union[torch.dtype, str]
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


def read_header(path: str) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """(tensor infos by key, header metadata) of one file, reading only its header."""
    try:
        with open_checked(path) as handle:
            metadata = dict(handle.metadata() or {})
            infos = {}
            for key in handle.keys():
                piece = handle.get_slice(key)
                dtype = piece.get_dtype()
                infos[key] = TensorInfo(path, _DTYPES.get(dtype, dtype), tuple(int(s) for s in piece.get_shape()))
    except (SafetensorError, OSError, RuntimeError) as err:
        raise ValueError(f"{path} is corrupt or truncated: {err}") from err
    return infos, metadata


@dataclass
class Checkpoint:
    """The files of one checkpoint saved under a name pattern, with every header read and cross-checked.

    ``tensors`` maps each key to the file that holds it (for a sharded checkpoint: the shard its
    index names; a key found in another shard too is an error, not a silent override).
    """

    directory: str
    pattern: str
    files: list[str]
    tensors: dict[str, TensorInfo]
    metadata: list[dict[str, str]]  # per file, in ``files`` order

    def __post_init__(self) -> None:
        self._sums = {
            path: _checksums(path, metadata, [k for k, i in self.tensors.items() if i.path == path])
            for path, metadata in zip(self.files, self.metadata)
        }

    @property
    def first(self) -> str:
        return self.files[0]

    @property
    def has_checksums(self) -> bool:
        return all(sums is not None for sums in self._sums.values())

    def verify(self) -> None:
        """Check every tensor against its recorded checksum, one tensor in memory at a time."""
        for key, info in self.tensors.items():
            if self._sums.get(info.path) is not None:
                self.load([key])

    def load(self, keys: Optional[Iterable[str]] = None) -> dict[str, torch.Tensor]:
        """Tensor data of ``keys`` (default all), each read from the file the header check assigned it."""
        wanted = list(self.tensors) if keys is None else list(keys)
        by_file: dict[str, list[str]] = {}
        for key in wanted:
            by_file.setdefault(self.tensors[key].path, []).append(key)
        out: dict[str, torch.Tensor] = {}
        for path, names in by_file.items():
            try:
                with open_checked(path) as handle:
                    for key in names:
                        out[key] = handle.get_tensor(key)
            except (SafetensorError, OSError, RuntimeError) as err:
                raise ValueError(f"{path} is corrupt or truncated: {err}") from err
            sums = self._sums.get(path)
            for key in names if sums is not None else ():
                if tensor_checksum(out[key]) != sums[key]:
                    raise ValueError(f"{path}: tensor {key!r} fails its checksum (data, dtype or shape changed): file corrupt")
        return out


def _read_index(path: str, directory: str) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8") as handle:
            weight_map = json.load(handle)["weight_map"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is corrupt (expected a JSON object with a 'weight_map'): {err}") from err
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{path}: 'weight_map' must be a non-empty object of tensor name -> shard file")
    for key, name in weight_map.items():  # an index must not point outside its folder
        if not isinstance(name, str) or os.path.basename(name) != name or not name.endswith(".safetensors"):
            raise ValueError(f"{path} names an invalid shard file {name!r} for {key!r}")
        if not os.path.isfile(os.path.join(directory, name)):
            raise ValueError(f"{path} names {name}, which is missing from {directory}: incomplete checkpoint")
    return weight_map


def open_checkpoint(directory: str, pattern: str) -> Optional[Checkpoint]:
    """Headers of the checkpoint saved under ``pattern`` in ``directory``; None when it has no such files.

    Refuses folders whose files disagree: a single file beside an index, shards the index does not
    name (left by an earlier save), a key stored in a shard other than the one the index names.
    """
    single = os.path.join(directory, pattern.format(suffix=""))
    index = os.path.join(directory, index_name(pattern))
    shard_re = shard_regex(pattern)
    shards_on_disk = sorted(n for n in os.listdir(directory) if shard_re.match(n))
    if os.path.isfile(index):
        if os.path.isfile(single):
            raise ValueError(
                f"{directory} holds both {os.path.basename(single)} and {os.path.basename(index)} (two saves mixed): "
                "delete the one that is not current, or save the model again into an empty folder"
            )
        weight_map = _read_index(index, directory)
        names = sorted(set(weight_map.values()))
        stray = sorted(set(shards_on_disk) - set(names))
        if stray:
            raise ValueError(
                f"{directory}: shards {stray} are not named by {os.path.basename(index)} (left by an earlier save?): "
                "delete them, or save the model again into an empty folder"
            )
        files = [os.path.join(directory, n) for n in names]
        headers = [read_header(p) for p in files]
        tensors: dict[str, TensorInfo] = {}
        for path, (infos, _) in zip(files, headers):
            for key, info in infos.items():
                owner = weight_map.get(key)
                if owner != os.path.basename(path):
                    where = f"names {owner}" if owner else "does not name it"
                    raise ValueError(
                        f"{path} holds tensor {key!r} but {os.path.basename(index)} {where}: stale or corrupt shard"
                    )
                tensors[key] = info
        missing = sorted(set(weight_map) - set(tensors))
        if missing:
            raise ValueError(f"{index} lists tensors absent from their shards: {missing[:5]}: incomplete checkpoint")
        return Checkpoint(directory, pattern, files, tensors, [m for _, m in headers])
    if os.path.isfile(single):
        if shards_on_disk:
            raise ValueError(
                f"{directory} holds {os.path.basename(single)} and shards {shards_on_disk[:3]} without an index "
                "(two saves mixed): delete the shards, or save the model again into an empty folder"
            )
        infos, metadata = read_header(single)
        return Checkpoint(directory, pattern, [single], infos, [metadata])
    if shards_on_disk:
        raise ValueError(f"{directory} holds shards {shards_on_disk[:3]} but no {os.path.basename(index)}: incomplete checkpoint")
    return None


def weight_files(directory: str, pattern: str) -> Optional[list[str]]:
    """Files of a (possibly sharded) checkpoint named by ``pattern``, or None when absent."""
    checkpoint = open_checkpoint(directory, pattern)
    return None if checkpoint is None else checkpoint.files


def save_sharded(
    tensors: Mapping[str, torch.Tensor],
    directory: str,
    pattern: str,
    max_shard_size: Union[int, str],
    metadata_for: Callable[[list[str]], dict[str, str]],
) -> list[str]:
    """Write ``tensors`` like ``save_pretrained``: one file, or shards plus an index when too big.

    Meant for a fresh staging folder (see :func:`hf_sparse.io.files.save_transaction`): each file
    is still written under a temporary name and renamed, the index last.
    """
    split = split_torch_state_dict_into_shards(dict(tensors), filename_pattern=pattern, max_shard_size=max_shard_size)
    written = []
    for filename, keys in split.filename_to_tensors.items():
        path = os.path.join(directory, filename)
        with atomic_path(path) as tmp:
            part = {k: tensors[k].contiguous() for k in keys}
            save_file(part, tmp, metadata=with_checksums(part, metadata_for(keys)))
        written.append(path)
    if split.is_sharded:
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(split.tensor_to_filename.items()))}
        atomic_write_text(os.path.join(directory, index_name(pattern)), json.dumps(index, indent=2) + "\n")
    return written
