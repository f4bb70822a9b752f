"""load_sparse / load_masks: read any folder save_sparse writes, and compressed-tensors sparse folders.

``model, masks = hf_sparse.load_sparse(folder)`` gives the exact weights and the masks (bool
tensors by parameter name, True = kept) for every layout: dense + masks, hf_sparse native
compressed, compressed-tensors ``sparse-bitmask`` / ``sparse-24-bitmask`` (ours or theirs).
The model class comes from ``config.json``'s ``architectures``, looked up only among
``transformers``' own ``PreTrainedModel`` classes (an allow-list: nothing is imported by a
name from a file, no remote code); pass ``model_class=`` or ``model=`` for anything else.

Loads verify before they trust: the folder's files must belong to one save
(:func:`hf_sparse.io.folder.inspect_folder`); names, shapes and dtypes in the headers are compared
with the model (built on the meta device from config.json first, so nothing is allocated for a
checkpoint that does not fit); weights must be zero where their masks prune.
:func:`read_folder_masks` is the only reader of a folder's masks.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from torch import nn

from . import compressed_tensors as native
from . import ct_layout
from .existing_masks import attach_masks, masks_from_zeros
from .folder import Folder, describe_header, inspect_folder, read_config
from .native_format import (
    COMPRESSED_TENSORS,
    DENSE,
    KEY_ALIASES,
    KEY_CONFIG,
    KEY_ENCODINGS,
    KEY_SAVE_ID,
    MASKS_PATTERN,
    NATIVE,
    NATIVE_PATTERN,
    WEIGHTS_PATTERN,
    json_meta,
    read_masks_file,
)
from .save import check_weights_follow_masks
from .shards import TensorInfo, open_checkpoint
from ..core.masks import check_masks_fit
from ..core.targets import find_targets

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
Masks = dict[str, torch.Tensor]
_CLASS_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

__all__ = ["describe", "detect_format", "load_masks", "load_sparse", "read_folder_masks", "resolve_model_class"]


def detect_format(directory: PathLike) -> str:
    """``"native"``, ``"compressed-tensors"`` or ``"dense"``; FileNotFoundError when no weights."""
    return inspect_folder(os.fspath(directory)).layout


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
            f"architectures[0]={name!r} is not a transformers PreTrainedModel class; pass model_class= or model="
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


def _config_for(cls: type, config: dict, directory: str) -> Any:
    data = {k: v for k, v in config.items() if k != "quantization_config"}
    try:
        return cls.config_class.from_dict(data)
    except Exception as err:  # third-party validation of a user file: any failure means a bad config.json
        raise ValueError(f"{directory}/config.json does not make a valid {cls.config_class.__name__}: {err}") from err


def _meta_model(cls: type, config: dict, directory: str) -> nn.Module:
    """The model built on the meta device: its shapes cost no memory, whatever config.json asks for."""
    model_config = _config_for(cls, config, directory)
    try:
        with torch.device("meta"):
            return cls._from_config(model_config)
    except Exception as err:  # transformers' constructors raise many types for inconsistent configs
        raise ValueError(f"{directory}/config.json cannot build {cls.__name__}: {type(err).__name__}: {err}") from err


def _class_and_layout(directory: str, config: Optional[dict], model_class: Optional[type]) -> tuple[type, ModelLayout]:
    """The class to build and its meta-built layout (headers are checked against it before a real build)."""
    cls = model_class or resolve_model_class(config, directory)
    if config is None:
        raise ValueError(f"{directory} has no config.json: pass model= to load_sparse")
    return cls, ModelLayout.of(_meta_model(cls, config, directory))


# -- what the file holds, checked against the model -----------------------------------------------
def _stored_view(folder: Folder) -> tuple[dict[str, TensorInfo], dict]:
    """(tensor infos as the model will see them after decoding, native encodings); reads only headers + shape tensors."""
    infos = dict(folder.weights.tensors)
    encodings: dict = {}
    if folder.layout == NATIVE:
        encodings = json_meta(folder.header_metadata, KEY_ENCODINGS, folder.weights.first)
        if not isinstance(encodings, dict):
            raise ValueError(f"{folder.weights.first} lacks hf_sparse's encodings header: not an hf_sparse compressed file")
        for name, info in encodings.items():
            shape = info.get("shape") if isinstance(info, dict) else None
            if not isinstance(info.get("encoding") if isinstance(info, dict) else None, str):
                raise ValueError(f"{folder.weights.first}: {KEY_ENCODINGS}[{name!r}] has no valid 'encoding' ({info!r})")
            if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
                raise ValueError(f"{folder.weights.first}: {KEY_ENCODINGS}[{name!r}] has no valid shape ({info!r})")
            parts = {k for k in infos if k.startswith(f"{name}.sparse_")}
            values = infos.get(f"{name}.sparse_values")
            if values is None:
                raise ValueError(f"{folder.weights.first}: {name} is missing its 'values' part")
            for key in parts:
                del infos[key]
            infos[name] = TensorInfo(values.path, values.dtype, tuple(shape))
        stray = sorted(k for k in infos if ".sparse_" in k)
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


def _check_against_model(
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


def _check_dtypes(folder: Folder, infos: dict[str, TensorInfo], layout: ModelLayout) -> None:
    """Headers of a dense folder: a float tensor stored as integers (or the reverse) is corrupt."""
    for name, info in infos.items():
        dtype = layout.tensors[name][1]
        if not isinstance(info.dtype, torch.dtype) or info.dtype.is_floating_point != dtype.is_floating_point or (
            not dtype.is_floating_point and info.dtype != dtype
        ):
            raise ValueError(f"{folder.weights.first}: {name} is stored as {info.dtype} but the model expects {dtype}: file corrupt")


def _decode(folder: Folder, layout: ModelLayout, encodings: dict) -> tuple[dict[str, torch.Tensor], Masks]:
    """(dense state dict, masks the weights' encoding implies) after the header checks passed."""
    tensors = folder.weights.load()
    if folder.layout == COMPRESSED_TENSORS:
        return ct_layout.decode_state(tensors, {k: v[0] for k, v in layout.tensors.items()})
    if folder.layout == DENSE:
        return tensors, {}
    state: dict[str, torch.Tensor] = {}
    masks: Masks = {}
    parts_of: dict[str, dict[str, torch.Tensor]] = {name: {} for name in encodings}
    for key, value in tensors.items():
        base, _, part = key.rpartition(".sparse_")
        if base in parts_of:
            parts_of[base][part] = value
        else:
            state[key] = value
    for name, info in encodings.items():
        state[name], masks[name] = native.decode(info.get("encoding"), info["shape"], parts_of[name], name)
    return state, masks


def _load_into(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    float_dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    if len(float_dtypes) == 1:
        model.to(next(iter(float_dtypes)))
    model.load_state_dict(state, strict=False)  # completeness, shapes and dtypes were checked on the headers
    return model


# -- masks ------------------------------------------------------------------------------------------
def read_masks_checkpoint(directory: str) -> tuple[Optional[Masks], Optional[str]]:
    """(masks, save id) of the ``sparse_masks.safetensors`` file alone; (None, None) when there is none."""
    checkpoint = open_checkpoint(directory, MASKS_PATTERN)
    if checkpoint is None:
        return None, None
    from .folder import save_header

    header = save_header(checkpoint)
    return read_masks_file(checkpoint), header.get(KEY_SAVE_ID)


def _expected_layout(folder: Folder, model_class: Optional[type] = None) -> Optional[ModelLayout]:
    """The model's layout from config.json, or None when config.json names no buildable class."""
    try:
        cls = model_class or resolve_model_class(folder.config, folder.directory)
    except ValueError:
        return None
    if folder.config is None:
        return None
    return ModelLayout.of(_meta_model(cls, folder.config, folder.directory))


def _implied_masks(folder: Folder) -> Masks:
    """Masks the weights' encoding implies (native: exact; compressed-tensors: stored bitmasks), checked first."""
    layout = _expected_layout(folder)
    infos, encodings = _stored_view(folder)
    if layout is not None:
        _check_against_model(folder, infos, layout, _aliases(folder), cast_floats=True)
    else:
        layout = ModelLayout({k: (i.shape, i.dtype) for k, i in infos.items() if isinstance(i.dtype, torch.dtype)}, {})
    return _decode(folder, layout, encodings)[1]


def _aliases(folder: Folder) -> dict:
    return json_meta(folder.header_metadata, KEY_ALIASES, folder.weights.first) or {}


def read_folder_masks(directory: PathLike) -> Optional[Masks]:
    """The masks saved in a folder, any layout; None when it stores none (a plain dense folder).

    The one reader of a folder's masks: ``sparse_masks.safetensors`` when present (checked to
    belong to the same save as the weights), else the masks a compressed layout implies (native:
    exact; compressed-tensors: the stored bitmasks). A folder without weights (a PEFT adapter
    folder written by ``SparseTrainer``) is read for its masks file alone.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory!r} is not a folder")
    if open_checkpoint(directory, WEIGHTS_PATTERN) is None and open_checkpoint(directory, NATIVE_PATTERN) is None:
        return read_masks_checkpoint(directory)[0]
    folder = inspect_folder(directory)
    if folder.masks is not None:
        return read_masks_file(folder.masks)
    if folder.layout == DENSE:
        return None
    return _implied_masks(folder)


def load_masks(directory: PathLike) -> Masks:
    """Masks saved in ``directory`` (bool tensors by parameter name, True = kept), any layout.

    Raises FileNotFoundError for a plain dense folder without masks.
    """
    masks = read_folder_masks(directory)
    if masks is None:
        raise FileNotFoundError(f"{os.fspath(directory)} holds no hf_sparse masks ({MASKS_PATTERN.format(suffix='')})")
    return masks


# -- load_sparse ------------------------------------------------------------------------------------
def _from_pretrained(folder: Folder, model_class: Optional[type], kwargs: dict) -> nn.Module:
    """A dense folder through transformers (its key conversions, dtype and device options), checked first."""
    cls = model_class or resolve_model_class(folder.config, folder.directory)
    if folder.config is not None:
        layout = ModelLayout.of(_meta_model(cls, folder.config, folder.directory))
        infos = {k: v for k, v in folder.weights.tensors.items() if k in layout.tensors}  # transformers renames others
        for name, info in infos.items():  # shapes before transformers allocates anything
            if info.shape != layout.tensors[name][0]:
                raise ValueError(
                    f"{folder.weights.first}: {name} is {list(info.shape)} in the file but "
                    f"{list(layout.tensors[name][0])} in the model (config.json)"
                )
        _check_dtypes(folder, infos, layout)
    folder.weights.verify()  # transformers does not read our checksums: check the data first
    model, info = cls.from_pretrained(folder.directory, output_loading_info=True, **kwargs)
    if info.get("missing_keys"):
        raise ValueError(
            f"{folder.weights.first} lacks tensors the model needs: {sorted(info['missing_keys'])[:5]}: "
            "incomplete checkpoint (transformers would fill them with random values)"
        )
    if info.get("mismatched_keys"):
        raise ValueError(f"{folder.weights.first}: tensor shapes do not match the model: {info['mismatched_keys'][:5]}")
    return model


def load_sparse(
    directory: PathLike,
    model: Optional[nn.Module] = None,
    model_class: Optional[type] = None,
    *,
    sparse_inference: bool = False,
    example_inputs: Any = None,
    **from_pretrained_kwargs: Any,
) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Load ``(model, masks)`` from a folder in any layout save_sparse writes (or compressed-tensors').

    ``model``: load into this instance instead of building one from config.json. ``model_class``:
    the class to build (default: ``architectures[0]`` among transformers' classes). Extra keyword
    arguments go to ``from_pretrained`` for dense folders. Masks: stored ones, else ``weight != 0``
    over the saved sparsity config's targets (or hf_sparse's default targets). The masks are also
    attached to the model, so a ``SparseTrainer`` fine-tuning it starts from them.
    ``sparse_inference=True``: return the model in eval mode with CPU sparse kernels where they are
    measured faster (``hf_sparse.to_sparse_inference`` on ``example_inputs``).
    """
    folder = inspect_folder(os.fspath(directory))
    implied: Masks = {}
    if folder.layout == DENSE and model is None:
        model = _from_pretrained(folder, model_class, from_pretrained_kwargs)
    else:
        infos, encodings = _stored_view(folder)
        if model is None:
            cls, layout = _class_and_layout(folder.directory, folder.config, model_class)
            _check_against_model(folder, infos, layout, _aliases(folder), cast_floats=False)
            model = cls._from_config(_config_for(cls, folder.config, folder.directory))
        else:
            layout = ModelLayout.of(model)
            _check_against_model(folder, infos, layout, _aliases(folder), cast_floats=False)
        state, implied = _decode(folder, layout, encodings)
        model = _load_into(model, state)
    masks = read_masks_file(folder.masks) if folder.masks is not None else implied
    if not masks:
        saved = json_meta(folder.header_metadata, KEY_CONFIG, folder.weights.first) or {}
        if not isinstance(saved, dict):
            raise ValueError(f"{folder.weights.first}: header {KEY_CONFIG} must be a JSON object or null")
        targets = find_targets(model, saved.get("targets"), saved.get("ignore"))
        masks = {n: m.cpu() for n, m in masks_from_zeros({t.name: t.param for t in targets}).items()}
        logger.info("%s stores no masks: using weight != 0 over %d target weights", folder.directory, len(masks))
    params = dict(model.named_parameters())
    check_masks_fit(params, masks, where=folder.directory)
    check_weights_follow_masks(params, masks, folder.directory)
    attach_masks(model, masks)
    if sparse_inference:
        from ..inference.convert import to_sparse_inference

        model.eval()
        to_sparse_inference(model, example_inputs, targets=_module_patterns(masks) or None)
    return model, masks


def _module_patterns(masks: dict[str, torch.Tensor]) -> list[str]:
    """Exact module-name regexes for the masked weights (what to consider for sparse kernels)."""
    return [f"^{re.escape(name.rsplit('.', 1)[0])}$" for name in masks if name.endswith(".weight")]


# -- inspect ----------------------------------------------------------------------------------------
def describe(directory: PathLike) -> dict[str, Any]:
    """Layout, format version, files and per-tensor sparsity of a folder (for ``inspect``).

    A folder without stored masks (plain ``save_pretrained``) reports the exact zeros of the
    weights hf_sparse would target, and says so (``masks_source``).
    """
    folder = inspect_folder(os.fspath(directory))
    layout = _expected_layout(folder)
    infos, encodings = _stored_view(folder)
    if layout is not None:
        _check_against_model(folder, infos, layout, _aliases(folder), cast_floats=True)
    else:
        layout = ModelLayout({k: (i.shape, i.dtype) for k, i in infos.items() if isinstance(i.dtype, torch.dtype)}, {})
    state, implied = _decode(folder, layout, encodings)
    if folder.masks is not None:
        masks, source = read_masks_file(folder.masks), "masks file"
    elif implied:
        masks, source = implied, "encoding"
    else:
        masks, source = _zero_masks_of(folder, state), "zeros"
    layers = {}
    for name, mask in masks.items():
        weight = state.get(name)
        layers[name] = {
            "shape": list(mask.shape),
            "numel": mask.numel(),
            "kept": int(mask.sum()),
            "nonzero": int(weight.ne(0).sum()) if weight is not None else None,
            "sparsity": 1.0 - int(mask.sum()) / max(mask.numel(), 1),
            "encoding": (encodings.get(name) or {}).get("encoding", folder.layout),
        }
    numel = sum(r["numel"] for r in layers.values())
    kept = sum(r["kept"] for r in layers.values())
    return {
        "format": folder.layout,
        "subformat": folder.ct_format,
        "format_version": folder.header.get("hf_sparse_format_version"),
        "files": describe_header(folder),
        "layers": layers,
        "masks_source": source,
        "sparsity": 1.0 - kept / numel if numel else None,
        "sparsity_config": json_meta(folder.header_metadata, KEY_CONFIG, folder.weights.first),
    }


def _zero_masks_of(folder: Folder, state: dict[str, torch.Tensor]) -> Masks:
    """``weight != 0`` over the weights hf_sparse would target (of the meta-built model; else every matrix)."""
    names: Optional[list[str]] = None
    try:
        cls = resolve_model_class(folder.config, folder.directory)
        if folder.config is not None:
            names = [t.name for t in find_targets(_meta_model(cls, folder.config, folder.directory))]
    except ValueError:
        names = None
    if names is None:
        names = [k for k, v in state.items() if v.is_floating_point() and v.dim() >= 2]
    return masks_from_zeros({n: state[n] for n in names if n in state})
