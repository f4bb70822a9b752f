"""Checks a folder's headers against the model before anything is read or allocated.

The model is first built on the meta device from config.json (its shapes cost no memory, whatever
the file asks for); every stored name, shape and dtype is compared with it, tied weights stored
once must be tied in the model, and only then are tensors read and decoded. Used by
:mod:`hf_sparse.io.load` (load_sparse, the masks reader, inspect).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import torch
from torch import nn

from . import native_codec as native
from . import ct_layout
from .folder import Folder
from .native_format import COMPRESSED_TENSORS, DENSE, KEY_ALIASES, KEY_ENCODINGS, KEY_SAVE_ID, NATIVE, json_meta
from .shards import TensorInfo

Masks = dict[str, torch.Tensor]
_CLASS_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def resolve_model_class(config: Optional[dict], directory: str) -> type:
    """The transformers class named by ``architectures``; only transformers' own PreTrainedModel classes."""
    import transformers

    names = (config or {}).get("architectures") or []
    if not isinstance(names, list) or not names:
        raise ValueError(f"{directory}/config.json names no architectures: pass model_class= or model= to load_sparse")
    name = names[0]
    if (config or {}).get("auto_map"):
        raise ValueError(
            f"{directory} uses custom code (auto_map); hf_sparse never runs remote code: pass model_class= or model="
        )
    cls = getattr(transformers, name, None) if isinstance(name, str) and _CLASS_NAME.match(name) else None
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise ValueError(
            f"{directory}/config.json: architectures[0]={name!r} is not a transformers PreTrainedModel class; "
            "pass model_class= or model="
        )
    if name.endswith("PreTrainedModel") or cls is transformers.PreTrainedModel:
        raise ValueError(
            f"{directory}/config.json: architectures[0]={name!r} is an abstract base class, not a model to build; "
            "pass model_class= or model="
        )
    return cls


# -- what the model expects ------------------------------------------------------------------------
@dataclass
class ModelLayout:
    """Names, shapes and dtypes a model's state dict has, and which names are tied (share a tensor)."""

    tensors: dict[str, tuple[tuple[int, ...], torch.dtype]]
    tied: dict[str, frozenset[str]]

    @classmethod
    def of(cls, model: nn.Module) -> "ModelLayout":
        state = model.state_dict(keep_vars=True)
        groups: dict[int, set[str]] = {}
        named = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
        for name, tensor in named:
            groups.setdefault(id(tensor), set()).add(name)
        tied = {n: frozenset(g) for g in groups.values() for n in g if len(g) > 1}
        return cls({k: (tuple(v.shape), v.dtype) for k, v in state.items()}, tied)


def config_for(cls: type, config: dict, directory: str) -> Any:
    data = {k: v for k, v in config.items() if k != "quantization_config"}
    try:
        return cls.config_class.from_dict(data)
    except Exception as err:  # third-party validation of a user file: any failure means a bad config.json
        raise ValueError(f"{directory}/config.json does not make a valid {cls.config_class.__name__}: {err}") from err


#: config.json fields that count repeated layers (the meta build costs time and memory per layer)
LAYER_COUNT_FIELDS = ("num_hidden_layers", "num_layers", "n_layer", "n_layers", "num_decoder_layers", "encoder_layers",
                      "decoder_layers")
#: slack for models that share layers (ALBERT: 12 layers, 1 stored): only a config far above the
#: stored layers is refused before building
_LAYER_SLACK, _LAYER_FACTOR = 16, 4


def stored_layers(keys: Iterable[str]) -> int:
    """The most distinct indices under one prefix (``encoder.layer.<i>``) among stored tensor names,
    counting the first index of each name."""
    groups: dict[str, set[str]] = {}
    for key in keys:
        parts = key.split(".")
        for i, part in enumerate(parts):
            if part.isdigit():
                groups.setdefault(".".join(parts[:i]), set()).add(part)
                break
    return max((len(v) for v in groups.values()), default=0)


def check_layer_counts(config: dict, keys: Optional[Iterable[str]], directory: str) -> None:
    """Refuse, in milliseconds, a config.json asking for far more layers than the file stores (before a build)."""
    if keys is None:
        return
    stored = stored_layers(keys)
    for field in LAYER_COUNT_FIELDS:
        value = config.get(field)
        if isinstance(value, int) and not isinstance(value, bool) and value > _LAYER_FACTOR * stored + _LAYER_SLACK:
            raise ValueError(
                f"{directory}/config.json: {field}={value} but the weights store {stored} layers: config.json of "
                "another model, or edited; restore it"
            )


def meta_model(cls: type, config: dict, directory: str, stored_keys: Optional[Iterable[str]] = None) -> nn.Module:
    """The model built on the meta device: its shapes cost no memory, whatever config.json asks for.

    ``stored_keys`` (the file's tensor names) bound the layer counts first: building costs time and
    Python memory per layer even on the meta device."""
    check_layer_counts(config, stored_keys, directory)
    model_config = config_for(cls, config, directory)
    try:
        with torch.device("meta"):
            return cls._from_config(model_config)
    except Exception as err:  # transformers' constructors raise many types for inconsistent configs
        raise ValueError(f"{directory}/config.json cannot build {cls.__name__}: {type(err).__name__}: {err}") from err


def class_and_layout(
    directory: str, config: Optional[dict], model_class: Optional[type], stored_keys: Optional[Iterable[str]] = None
) -> tuple[type, ModelLayout]:
    """The class to build and its meta-built layout (headers are checked against it before a real build)."""
    cls = model_class or resolve_model_class(config, directory)
    if config is None:
        raise ValueError(f"{directory} has no config.json: pass model= to load_sparse")
    return cls, ModelLayout.of(meta_model(cls, config, directory, stored_keys))


# -- what the file holds, checked against the model -----------------------------------------------
def stored_view(folder: Folder) -> tuple[dict[str, TensorInfo], dict]:
    """(tensor infos as the model will see them after decoding, native encodings); reads only headers + shape tensors."""
    infos = dict(folder.weights.tensors)
    encodings: dict = {}
    if folder.layout == NATIVE:
        encodings = json_meta(folder.first_file_metadata, KEY_ENCODINGS, folder.weights.first)
        if not isinstance(encodings, dict):
            raise ValueError(f"{folder.weights.first} lacks hf_sparse's encodings header: not an hf_sparse compressed file")
        for name, info in encodings.items():
            shape = info.get("shape") if isinstance(info, dict) else None
            if not isinstance(info.get("encoding") if isinstance(info, dict) else None, str):
                raise ValueError(f"{folder.weights.first}: {KEY_ENCODINGS}[{name!r}] has no valid 'encoding' ({info!r})")
            if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
                raise ValueError(f"{folder.weights.first}: {KEY_ENCODINGS}[{name!r}] has no valid shape ({info!r})")
            parts = {native.part_key(name, p) for p in native.PART_NAMES} & set(infos)
            values = infos.get(native.part_key(name, "values"))
            if values is None:
                raise ValueError(f"{folder.weights.first}: {name} is missing its 'values' part")
            for key in parts:
                del infos[key]
            infos[name] = TensorInfo(values.path, values.dtype, tuple(shape))
        stray = sorted(k for k in infos if native.split_part_key(k) is not None)
        if stray:
            raise ValueError(f"{folder.weights.first}: encoded parts {stray[:3]} belong to no entry of {KEY_ENCODINGS}: corrupt")
    elif folder.layout == COMPRESSED_TENSORS:
        for prefix in ct_layout.compressed_prefixes(infos):
            shape_key, values = f"{prefix}.shape", infos[f"{prefix}.compressed"]
            if shape_key not in infos:
                raise ValueError(f"{prefix}: compressed-tensors entry lacks its 'shape' tensor")
            raw = folder.weights.load([shape_key])[shape_key] if infos[shape_key].numel <= 8 else None
            if raw is None or raw.dtype not in (torch.int64, torch.int32):
                raise ValueError(f"{prefix}.shape must hold 1-8 integers: file corrupt")
            for part in ct_layout.PARTS[ct_layout.BITMASK]:
                infos.pop(f"{prefix}.{part}", None)
            infos[f"{prefix}.weight"] = TensorInfo(values.path, values.dtype, tuple(int(s) for s in raw.reshape(-1).tolist()))
    return infos, encodings


def check_against_model(
    folder: Folder, infos: dict[str, TensorInfo], layout: ModelLayout, aliases: dict, cast_floats: bool
) -> None:
    """Every expected tensor present (or a checked alias/tie), no stranger, shapes and dtypes equal."""
    where = folder.weights.first
    unexpected = sorted(set(infos) - set(layout.tensors))
    if unexpected:
        raise ValueError(f"{where} holds tensors the model does not have: {unexpected[:5]}: wrong model class or checkpoint")
    if not isinstance(aliases, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()):
        raise ValueError(f"{where}: header {KEY_ALIASES} must map tensor names to tensor names")
    for name, target in aliases.items():
        if target not in infos or target not in layout.tied.get(name, ()):
            raise ValueError(
                f"{where}: {KEY_ALIASES} says {name} is stored as {target}, but the model does not tie them "
                "(or the target is absent): loading would leave it random"
            )
    missing = sorted(k for k in layout.tensors if k not in infos and not (layout.tied.get(k, frozenset()) & set(infos)))
    if missing:
        raise ValueError(f"{where} lacks tensors the model needs: {missing[:5]}: incomplete checkpoint")
    for name, info in infos.items():
        shape, dtype = layout.tensors[name]
        if info.shape != shape:
            raise ValueError(f"{where}: {name} is {list(info.shape)} in the file but {list(shape)} in the model (config.json)")
    floats = {i.dtype for i in infos.values() if isinstance(i.dtype, torch.dtype) and i.dtype.is_floating_point}
    for name, info in infos.items():
        dtype = layout.tensors[name][1]
        same_kind = isinstance(info.dtype, torch.dtype) and info.dtype.is_floating_point == dtype.is_floating_point
        if not same_kind or (not dtype.is_floating_point and info.dtype != dtype):
            raise ValueError(f"{where}: {name} is stored as {info.dtype} but the model expects {dtype}: file corrupt")
        if dtype.is_floating_point and len(floats) > 1 and not cast_floats and info.dtype != dtype:
            raise ValueError(
                f"{where}: {name} is stored as {info.dtype} while other tensors are {sorted(map(str, floats))} "
                "(mixed precisions): pass model= already in the dtypes of the file"
            )


_LEGACY_SUFFIXES = {".gamma": ".weight", ".beta": ".bias"}  # names transformers renames on load


def check_dense_names(folder: Folder, layout: ModelLayout) -> None:
    """Before transformers reads a dense folder: no tensor the model lacks in a file hf_sparse wrote
    (its writer stores the model's own names), and never a legacy name that transformers would rename
    over a tensor stored under the new name; every tensor the model needs present (or tied to one)."""
    where, stored = folder.weights.first, folder.weights.tensors
    ours = KEY_SAVE_ID in folder.header
    unknown = sorted(k for k in stored if k not in layout.tensors)
    clashes = [k for k in unknown if any(k.endswith(old) and k[: -len(old)] + new in stored for old, new in _LEGACY_SUFFIXES.items())]
    if clashes or (ours and unknown):
        raise ValueError(f"{where} holds tensors the model does not have: {(clashes or unknown)[:5]}: file edited or of another model")
    if ours:
        missing = sorted(k for k in layout.tensors if k not in stored and not (layout.tied.get(k, frozenset()) & set(stored)))
        if missing:
            raise ValueError(f"{where} lacks tensors the model needs: {missing[:5]}: incomplete checkpoint")


def check_dtypes(folder: Folder, infos: dict[str, TensorInfo], layout: ModelLayout) -> None:
    """Headers of a dense folder: a float tensor stored as integers (or the reverse) is corrupt."""
    for name, info in infos.items():
        dtype = layout.tensors[name][1]
        if not isinstance(info.dtype, torch.dtype) or info.dtype.is_floating_point != dtype.is_floating_point or (
            not dtype.is_floating_point and info.dtype != dtype
        ):
            raise ValueError(f"{folder.weights.first}: {name} is stored as {info.dtype} but the model expects {dtype}: file corrupt")


def decode_weights(
    folder: Folder, layout: ModelLayout, encodings: dict, keys: Optional[list[str]] = None
) -> tuple[dict[str, torch.Tensor], Masks]:
    """(dense state dict, masks the weights' encoding implies) after the header checks passed.

    ``keys``: decode only these stored keys (all parts of each encoded weight among them)."""
    tensors = folder.weights.load(keys)
    if folder.layout == COMPRESSED_TENSORS:
        return ct_layout.decode_state(tensors, {k: v[0] for k, v in layout.tensors.items()})
    if folder.layout == DENSE:
        return tensors, {}
    state: dict[str, torch.Tensor] = {}
    masks: Masks = {}
    encodings = encodings if keys is None else {n: e for n, e in encodings.items() if native.part_key(n, "values") in tensors}
    parts_of: dict[str, dict[str, torch.Tensor]] = {name: {} for name in encodings}
    for key, value in tensors.items():
        split = native.split_part_key(key)
        if split is not None and split[0] in parts_of:
            parts_of[split[0]][split[1]] = value
        else:
            state[key] = value
    for name, info in encodings.items():
        state[name], masks[name] = native.decode(info.get("encoding"), info["shape"], parts_of[name], name)
    return state, masks


def expected_layout(folder: Folder, model_class: Optional[type] = None) -> Optional[ModelLayout]:
    """The model's layout from config.json, or None when config.json names no buildable class."""
    try:
        cls = model_class or resolve_model_class(folder.config, folder.directory)
    except ValueError:
        return None
    if folder.config is None:
        return None
    return ModelLayout.of(meta_model(cls, folder.config, folder.directory, folder.weights.tensors))


def aliases(folder: Folder) -> dict:
    return json_meta(folder.first_file_metadata, KEY_ALIASES, folder.weights.first) or {}
