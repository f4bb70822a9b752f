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

import logging
import os
from typing import Any, Optional, Union

import torch
from torch import nn

from .binding import check_checkpoint_state, check_side_config
from .existing_masks import attach_masks, masks_from_zeros
from .folder import Folder, describe_header, inspect_folder, save_header
from .native_format import DENSE, KEY_CONFIG, KEY_SAVE_ID, MASKS_PATTERN, NATIVE_PATTERN, WEIGHTS_PATTERN, json_meta, read_masks_file
from .save import check_weights_follow_masks
from .shards import open_checkpoint
from .training_state import check_weights_binding
from .verify import (
    ModelLayout,
    aliases,
    check_against_model,
    check_dense_names,
    check_dtypes,
    class_and_layout,
    config_for,
    decode_weights,
    expected_layout,
    meta_model,
    resolve_model_class,
    stored_view,
)
from ..core.masks import check_masks_fit
from ..core.targets import find_targets

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
Masks = dict[str, torch.Tensor]
__all__ = ["describe", "detect_format", "load_masks", "load_sparse", "read_folder_masks", "resolve_model_class"]


def detect_format(directory: PathLike) -> str:
    """``"native"``, ``"compressed-tensors"`` or ``"dense"``; FileNotFoundError when no weights."""
    return inspect_folder(os.fspath(directory)).layout


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
    header = save_header(checkpoint)
    return read_masks_file(checkpoint), header.get(KEY_SAVE_ID)


def _masks_config(directory: str) -> Optional[str]:
    """The sparsity config recorded in the masks file's header (JSON text)."""
    return save_header(open_checkpoint(directory, MASKS_PATTERN)).get(KEY_CONFIG)


def _decode_checked(folder: Folder) -> tuple:
    """(state, implied masks, encodings) of the folder's weights, decoded after checking the stored
    tensors against the model (when one is known)."""
    layout = expected_layout(folder)
    infos, encodings = stored_view(folder)
    if layout is not None:
        check_against_model(folder, infos, layout, aliases(folder), cast_floats=True)
    else:
        layout = ModelLayout({k: (i.shape, i.dtype) for k, i in infos.items() if isinstance(i.dtype, torch.dtype)}, {})
    return (*decode_weights(folder, layout, encodings), encodings)


def _implied_masks(folder: Folder) -> Masks:
    """Masks the weights' encoding implies (native: exact; compressed-tensors: stored bitmasks), checked first."""
    return _decode_checked(folder)[1]


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
        masks, save_id = read_masks_checkpoint(directory)
        if masks is not None:  # an adapter beside them must be of the same save (issue 25)
            check_weights_binding(directory, save_id, MASKS_PATTERN.format(suffix=""))
            check_side_config(directory, MASKS_PATTERN.format(suffix=""), _masks_config(directory))
        return masks
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
    adapter = os.path.join(folder.directory, "adapter_config.json")
    if os.path.isfile(adapter):
        raise ValueError(
            f"{adapter}: transformers would load this LoRA adapter on top of the verified weights (or its base model "
            "from elsewhere): keep adapters in their own folder"
        )
    if folder.config is not None:
        layout = ModelLayout.of(meta_model(cls, folder.config, folder.directory, folder.weights.tensors))
        check_dense_names(folder, layout)
        infos = {k: v for k, v in folder.weights.tensors.items() if k in layout.tensors}  # transformers renames others
        for name, info in infos.items():  # shapes before transformers allocates anything
            if info.shape != layout.tensors[name][0]:
                raise ValueError(
                    f"{folder.weights.first}: {name} is {list(info.shape)} in the file but "
                    f"{list(layout.tensors[name][0])} in the model (config.json)"
                )
        check_dtypes(folder, infos, layout)
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


#: from_pretrained keywords that make transformers read another file than the one hf_sparse verified
_REDIRECTING = ("variant", "from_tf", "from_flax", "gguf_file", "state_dict", "key_mapping", "config", "quantization_config")


def _resolve_keywords(directory: str, kwargs: dict) -> tuple[str, dict]:
    """Apply ``subfolder`` here (so the folder verified is the one loaded) and refuse keywords that
    redirect transformers to a file hf_sparse did not verify."""
    subfolder = kwargs.pop("subfolder", None)
    if subfolder:
        if os.path.isabs(subfolder) or ".." in subfolder.replace("\\", "/").split("/"):
            raise ValueError(f"load_sparse: subfolder={subfolder!r} must be a relative path inside {directory}")
        directory = os.path.join(directory, subfolder)
    for key in _REDIRECTING:
        if kwargs.get(key) not in (None, False, ""):
            raise ValueError(
                f"load_sparse: {key}={kwargs[key]!r} would make transformers load another file or config than the "
                f"one hf_sparse verifies in {directory}: not supported (save that variant with hf_sparse.save_sparse "
                "into its own folder and load that)"
            )
        kwargs.pop(key, None)
    if kwargs.get("use_safetensors", True) is False:
        raise ValueError(
            f"load_sparse: use_safetensors=False would load pytorch_model.bin instead of the verified safetensors "
            f"weights in {directory}: not supported"
        )
    return directory, kwargs


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
    measured faster (``hf_sparse.to_sparse_inference`` on ``example_inputs``), or as the
    ``sparse_inference_plan.json`` saved in the folder says when it was measured on this kind of
    machine (else re-timed, with a warning saying what differs).
    """
    directory, from_pretrained_kwargs = _resolve_keywords(os.fspath(directory), dict(from_pretrained_kwargs))
    folder = inspect_folder(directory)
    implied: Masks = {}
    if folder.layout == DENSE and model is None:
        model = _from_pretrained(folder, model_class, from_pretrained_kwargs)
    else:
        if from_pretrained_kwargs:
            raise ValueError(
                f"load_sparse: {sorted(from_pretrained_kwargs)} go to transformers' from_pretrained, which loads only "
                f"dense folders without model=; {folder.directory} ({folder.layout}) is decoded by hf_sparse: drop them "
                "and cast or move the returned model instead"
            )
        infos, encodings = stored_view(folder)
        if model is None:
            cls, layout = class_and_layout(folder.directory, folder.config, model_class, folder.weights.tensors)
            check_against_model(folder, infos, layout, aliases(folder), cast_floats=False)
            model = cls._from_config(config_for(cls, folder.config, folder.directory))
        else:
            layout = ModelLayout.of(model)
            check_against_model(folder, infos, layout, aliases(folder), cast_floats=False)
        state, implied = decode_weights(folder, layout, encodings)
        model = _load_into(model, state)
    masks = read_masks_file(folder.masks) if folder.masks is not None else implied
    if not masks:
        saved = json_meta(folder.first_file_metadata, KEY_CONFIG, folder.weights.first) or {}
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
        from ..inference.loaded import convert_loaded

        convert_loaded(model, masks, folder.directory, example_inputs)
    return model, masks


# -- inspect ----------------------------------------------------------------------------------------
def describe(directory: PathLike) -> dict[str, Any]:
    """Layout, format version, files and per-tensor sparsity of a folder (for ``inspect``).

    A folder without stored masks (plain ``save_pretrained``) reports the exact zeros of the
    weights hf_sparse would target, and says so (``masks_source``).
    """
    folder = inspect_folder(os.fspath(directory))
    check_checkpoint_state(folder.directory, folder.weights.first, folder.header.get(KEY_SAVE_ID))  # as inspect does
    state, implied, encodings = _decode_checked(folder)
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
        "sparsity_config": json_meta(folder.first_file_metadata, KEY_CONFIG, folder.weights.first),
    }


def _zero_masks_of(folder: Folder, state: dict[str, torch.Tensor]) -> Masks:
    """``weight != 0`` over the weights hf_sparse would target (of the meta-built model; else every matrix)."""
    names: Optional[list[str]] = None
    try:
        cls = resolve_model_class(folder.config, folder.directory)
        if folder.config is not None:
            names = [t.name for t in find_targets(meta_model(cls, folder.config, folder.directory, folder.weights.tensors))]
    except ValueError:
        names = None
    if names is None:
        names = [k for k, v in state.items() if v.is_floating_point() and v.dim() >= 2]
    return masks_from_zeros({n: state[n] for n in names if n in state})
