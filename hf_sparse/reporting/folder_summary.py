"""What a saved folder holds, read in seconds: safetensors headers, config.json and the bit masks.

``python -m hf_sparse inspect DIR`` uses this. It imports neither torch nor transformers (both
take seconds to import, and building a model takes more): the safetensors header is an 8-byte
length and a JSON object, and the counts come from the files themselves, memory-mapped through
numpy: the popcount of a masks file's packed bits, of a compressed-tensors ``bitmask``, or the
number of stored values of hf_sparse's native encodings. A folder without stored masks (plain
``save_pretrained``) reports the exact zeros of the matrices hf_sparse would target, picked by
name with the default ignore list of :mod:`hf_sparse.core.targets` (read from its source, not
imported). ``inspect --verify`` runs the full check instead (:func:`hf_sparse.io.load.describe`).

File names and header keys come from :mod:`hf_sparse.io.layout_names`, which imports no torch.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import struct
from typing import Any, Optional

import numpy as np

from ..io import binding
from ..io.layout_names import (
    KEY_CONFIG, KEY_ENCODINGS, KEY_SAVE_ID, KEY_SHAPES, KEY_VERSION, MASKS_PATTERN, NATIVE_PATTERN,
    WEIGHTS_PATTERN, check_version, json_meta,
)

MAX_HEADER = 100 * 1024 * 1024

_NUMPY = {
    "F64": np.float64, "F32": np.float32, "F16": np.uint16, "BF16": np.uint16, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_FLOATS = ("F64", "F32", "F16", "BF16")


class SafetensorsFile:
    """One file's header (tensor dtypes, shapes, byte ranges; metadata) and lazy memory-mapped tensors."""

    def __init__(self, path: str):
        self.path = path
        try:
            with open(path, "rb") as handle:
                (size,) = struct.unpack("<Q", handle.read(8))
                if size > MAX_HEADER:
                    raise ValueError(f"header of {size} bytes")
                header = json.loads(handle.read(size))
        except (OSError, struct.error, ValueError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is corrupt or truncated: {err}") from err
        self.data_start = 8 + size
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self.tensors: dict[str, dict] = header
        self._map: Optional[np.memmap] = None

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.tensors[key]["shape"])

    def numel(self, key: str) -> int:
        n = 1
        for s in self.shape(key):
            n *= s
        return n

    def array(self, key: str) -> np.ndarray:
        """The tensor's raw elements as a flat numpy array (bf16/f16 as uint16 bit patterns)."""
        info = self.tensors[key]
        if info["dtype"] not in _NUMPY:
            raise ValueError(f"{self.path}: tensor {key!r} has dtype {info['dtype']}, which inspect cannot read")
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        start, end = info["data_offsets"]
        raw = self._map[self.data_start + start : self.data_start + end]
        return raw.view(_NUMPY[info["dtype"]])


def _checkpoint(directory: str, pattern: str) -> Optional[dict[str, SafetensorsFile]]:
    """Every file of a (possibly sharded) checkpoint, by tensor key; None when absent."""
    single = os.path.join(directory, pattern.format(suffix=""))
    index = single + ".index.json"
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as handle:
                weight_map = json.load(handle)["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{index} is corrupt: {err}") from err
        files = {name: SafetensorsFile(os.path.join(directory, name)) for name in sorted(set(weight_map.values()))}
        return {key: files[name] for key, name in weight_map.items()}
    if os.path.isfile(single):
        file = SafetensorsFile(single)
        return {key: file for key in file.tensors}
    return None


def _popcount(bits: np.ndarray) -> int:
    return int(np.bitwise_count(bits).sum(dtype=np.int64))


def _nonzero(file: SafetensorsFile, key: str) -> int:
    """Entries that are not +-0 (the sign bit is masked off for half-precision bit patterns)."""
    values = file.array(key)
    dtype = file.tensors[key]["dtype"]
    if dtype in ("F16", "BF16"):
        return int(np.count_nonzero(values & np.uint16(0x7FFF)))
    return int(np.count_nonzero(values))


def default_ignore() -> list[str]:
    """``DEFAULT_IGNORE`` of :mod:`hf_sparse.core.targets`, read from its source (no torch import)."""
    spec = importlib.util.find_spec("hf_sparse.core.targets")
    with open(spec.origin, encoding="utf-8") as handle:  # type: ignore[union-attr, arg-type]
        tree = ast.parse(handle.read())
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else (node.targets[0] if isinstance(node, ast.Assign) else None)
        if isinstance(target, ast.Name) and target.id == "DEFAULT_IGNORE" and node.value is not None:
            return list(ast.literal_eval(node.value))
    raise RuntimeError("hf_sparse.core.targets has no DEFAULT_IGNORE")  # pragma: no cover


def _row(shape: list[int], kept: int, nonzero: Optional[int], encoding: str) -> dict[str, Any]:
    numel = 1
    for s in shape:
        numel *= s
    return {
        "shape": list(shape),
        "numel": numel,
        "kept": kept,
        "nonzero": nonzero,
        "sparsity": 1.0 - kept / max(numel, 1),
        "encoding": encoding,
    }


def summarize_folder(directory: str) -> dict[str, Any]:
    """Layout, format version, files and per-tensor sparsity of a saved folder, from its files alone
    (the keys of :func:`hf_sparse.io.load.describe`, without its cross-checks against a model)."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory} is not a folder")
    config = None
    config_path = os.path.join(directory, "config.json")
    if os.path.isfile(config_path):
        try:
            with open(config_path, encoding="utf-8") as handle:
                config = json.load(handle)
        except ValueError as err:
            raise ValueError(f"{config_path} is corrupt: {err}") from err
    native = _checkpoint(directory, NATIVE_PATTERN)
    dense = _checkpoint(directory, WEIGHTS_PATTERN)
    if native is not None and dense is not None:
        raise ValueError(f"{directory} holds both model.sparse.safetensors (hf_sparse native) and model.safetensors: two saves mixed")
    weights = native or dense
    if weights is None:
        raise FileNotFoundError(f"{directory} holds no safetensors weights (model.safetensors or model.sparse.safetensors)")
    masks = _checkpoint(directory, MASKS_PATTERN)
    _check_one_save(directory, list(weights.values()) + list((masks or {}).values()))
    first = next(iter(weights.values()))
    metadata = first.metadata
    first_masks = next(iter(masks.values())) if masks else None
    binding.check_save_binding(directory, first.path, metadata, first_masks and first_masks.path,
                               first_masks.metadata if first_masks else {}, config)  # as a load checks
    binding.check_checkpoint_state(directory, first.path, metadata.get(KEY_SAVE_ID))
    block = (config or {}).get("quantization_config") or {}
    if not isinstance(block, dict):
        raise ValueError(f"{config_path}: quantization_config must be a JSON object, got {type(block).__name__}")
    sparsity_block = block.get("sparsity_config") or {}
    if not isinstance(sparsity_block, dict):
        raise ValueError(f"{config_path}: quantization_config.sparsity_config must be a JSON object, "
                         f"got {type(sparsity_block).__name__}")
    ct_format = sparsity_block.get("format") if block.get("quant_method") == "compressed-tensors" else None
    has_ct = any(k.endswith(".bitmask") and k[: -len(".bitmask")] + ".compressed" in weights for k in weights)
    if native is None and has_ct and ct_format is None:
        raise ValueError(
            f"{first.path} holds compressed-tensors sparse weights but config.json has no compressed-tensors "
            "quantization_config (lost?): loading it as dense would give random weights"
        )
    if native is None and ct_format is not None and not has_ct:
        raise ValueError(f"{directory}/config.json says compressed-tensors {ct_format} but {first.path} holds dense weights")
    if native is not None:
        layout, layers, source = "native", _native_layers(weights, metadata, first.path), "encoding"
    elif ct_format is not None:
        layout, layers, source = "compressed-tensors", _ct_layers(weights), "encoding"
    else:
        layout = "dense"
        if masks is not None:
            layers, source = _masks_file_layers(masks, weights), "masks file"
        else:
            layers, source = _zero_layers(weights), "zeros"
    files = sorted({f.path for f in list(weights.values()) + list((masks or {}).values())})
    numel = sum(r["numel"] for r in layers.values())
    kept = sum(r["kept"] for r in layers.values())
    return {
        "format": layout,
        "subformat": ct_format,
        "format_version": metadata.get(KEY_VERSION),
        "files": {os.path.basename(p): os.path.getsize(p) for p in files},
        "layers": layers,
        "masks_source": source,
        "sparsity": 1.0 - kept / numel if numel else None,
        "sparsity_config": json_meta(metadata, KEY_CONFIG, first.path),
    }


def _check_one_save(directory: str, files: list[SafetensorsFile]) -> None:
    """Every file readable by this hf_sparse and written by one save (the cheap header checks of a load)."""
    ids = {}
    for file in {f.path: f for f in files}.values():
        check_version(file.metadata, file.path)
        if KEY_SAVE_ID in file.metadata:
            ids[os.path.basename(file.path)] = file.metadata[KEY_SAVE_ID]
    if len(set(ids.values())) > 1:
        raise ValueError(f"{directory}: files of different saves mixed ({ids}); save the model again into an empty folder")


def _masks_file_layers(masks: dict[str, SafetensorsFile], weights: dict[str, SafetensorsFile]) -> dict[str, dict]:
    shapes: dict[str, list[int]] = {}
    for file in set(masks.values()):
        part = json_meta(file.metadata, KEY_SHAPES, file.path)
        if not isinstance(part, dict):
            raise ValueError(f"{file.path} lacks {KEY_SHAPES}: not an hf_sparse masks file")
        shapes.update(part)
    layers = {}
    for name, file in masks.items():
        if name not in shapes:
            raise ValueError(f"{file.path}: mask {name!r} has no recorded shape in {KEY_SHAPES}")
        nonzero = _nonzero(weights[name], name) if name in weights else None
        layers[name] = _row(shapes[name], _popcount(file.array(name)), nonzero, "dense")
    return layers


def _native_layers(weights: dict[str, SafetensorsFile], metadata: dict, where: str) -> dict[str, dict]:
    encodings = json_meta(metadata, KEY_ENCODINGS, where)
    if not isinstance(encodings, dict):
        raise ValueError(f"{where} lacks hf_sparse's encodings header: not an hf_sparse compressed file")
    layers = {}
    for name, info in encodings.items():
        values = f"{name}.sparse_values"
        if values not in weights or not isinstance(info, dict) or not isinstance(info.get("shape"), list):
            raise ValueError(f"{where}: {name} is missing its values or its recorded shape: corrupt")
        file = weights[values]
        layers[name] = _row(info["shape"], file.numel(values), _nonzero(file, values), str(info.get("encoding")))
    return layers


def _ct_layers(weights: dict[str, SafetensorsFile]) -> dict[str, dict]:
    layers = {}
    for key in sorted(weights):
        if not key.endswith(".bitmask") or key[: -len(".bitmask")] + ".compressed" not in weights:
            continue
        prefix = key[: -len(".bitmask")]
        shape_key = f"{prefix}.shape"
        if shape_key not in weights:
            raise ValueError(f"{weights[key].path}: {prefix} has no '.shape' tensor: corrupt")
        shape = [int(v) for v in weights[shape_key].array(shape_key)]
        compressed = f"{prefix}.compressed"
        layers[f"{prefix}.weight"] = _row(shape, _popcount(weights[key].array(key)), _nonzero(weights[compressed], compressed), "compressed-tensors")
    return layers


def _zero_layers(weights: dict[str, SafetensorsFile]) -> dict[str, dict]:
    """``weight != 0`` over the matrices hf_sparse's default selection would likely target (by name)."""
    ignore = [re.compile(p) for p in default_ignore()]
    layers = {}
    for name, file in weights.items():
        info = file.tensors[name]
        module = name.rsplit(".", 1)[0]
        if not name.endswith(".weight") or info["dtype"] not in _FLOATS or len(info["shape"]) < 2:
            continue
        if any(r.search(module) for r in ignore):
            continue
        nonzero = _nonzero(file, name)
        layers[name] = _row(info["shape"], nonzero, nonzero, "dense")
    return layers


__all__ = ["SafetensorsFile", "default_ignore", "summarize_folder"]
