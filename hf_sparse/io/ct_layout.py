"""The compressed-tensors <= 0.14 ``sparse-bitmask`` / ``sparse-24-bitmask`` layout (pure tensor code).

Written so that compressed-tensors 0.14 (and transformers <= 4.55 with it) read our folders and
we read theirs. Per compressed module ``<m>`` the key ``<m>.weight`` is replaced by:

- sparse-bitmask: ``<m>.shape`` int64 = weight shape; ``<m>.compressed`` = ``W[W != 0]``
  (row-major); ``<m>.bitmask`` uint8 = ``packbits(W != 0, axis=-1, bitorder="little")``;
  ``<m>.row_offsets`` int64 = ``cumsum(row_counts, 0) - row_counts`` with
  ``row_counts = (W != 0).sum(-1)`` (exactly compressed-tensors' formula, also for conv weights).
- sparse-24-bitmask (2-D, numel % 4 == 0): ``<m>.shape`` int64 ``[2, 1]``; the kept entries are
  the top-2 ``|w|`` of each group of 4 (``topk``, as compressed-tensors does, even if one is zero);
  ``<m>.compressed`` ``[rows, cols/2]``; ``<m>.bitmask`` as above; no row_offsets.

Masks are not stored: a reader sees ``W != 0`` (or the 2:4 pattern). -0.0 is normalised to +0.0
before writing, so the round trip is bitwise.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional, Sequence

import torch

from ..core.bitpack import pack_bits, unpack_bits

BITMASK = "sparse-bitmask"
BITMASK_24 = "sparse-24-bitmask"
FORMATS = (BITMASK, BITMASK_24)
CT_VERSION = "0.14.0.1"  # the last compressed-tensors release with sparsity compressors
PARTS = {BITMASK: ("shape", "compressed", "bitmask", "row_offsets"), BITMASK_24: ("shape", "compressed", "bitmask")}


def normalise_zeros(weight: torch.Tensor) -> torch.Tensor:
    """Turn -0.0 into +0.0 (compressed-tensors decodes every dropped entry as +0.0)."""
    return torch.where(weight == 0, torch.zeros_like(weight), weight)


def mask_24(weight: torch.Tensor) -> torch.Tensor:
    """compressed-tensors' 2:4 selection: top-2 |w| per group of 4 consecutive entries."""
    groups = weight.reshape(-1, 4).abs()
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, groups.topk(2, dim=1).indices, True)
    return keep.view(weight.shape)


def encode(prefix: str, weight: torch.Tensor, fmt: str) -> dict[str, torch.Tensor]:
    """Tensors that replace ``<prefix>.weight`` in the compressed-tensors layout."""
    w = normalise_zeros(weight.detach().cpu().contiguous())
    if fmt == BITMASK:
        if w.dim() < 1:
            raise ValueError(f"{prefix}: sparse-bitmask needs a tensor with at least one dimension")
        mask = w != 0
        counts = mask.sum(dim=-1)
        return {
            f"{prefix}.shape": torch.tensor(list(w.shape), dtype=torch.int64),
            f"{prefix}.compressed": w[mask].contiguous(),
            f"{prefix}.bitmask": pack_bits(mask).contiguous(),
            f"{prefix}.row_offsets": (torch.cumsum(counts, 0) - counts).to(torch.int64).contiguous(),
        }
    if fmt == BITMASK_24:
        if w.dim() != 2 or w.numel() % 4:
            raise ValueError(f"{prefix}: sparse-24-bitmask needs a 2-D weight with numel % 4 == 0, got {tuple(w.shape)}")
        mask = mask_24(w)
        rows, cols = w.shape
        return {
            f"{prefix}.shape": torch.tensor([rows, cols], dtype=torch.int64).reshape(-1, 1),
            f"{prefix}.compressed": w[mask].reshape(rows, cols // 2).contiguous(),
            f"{prefix}.bitmask": pack_bits(mask).contiguous(),
        }
    raise ValueError(f"compressed-tensors format must be one of {FORMATS}, got {fmt!r}")


def decode(
    prefix: str, parts: Mapping[str, torch.Tensor], expected_shape: Optional[Sequence[int]] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, stored bitmask as bool) from a module's ``shape``/``compressed``/``bitmask`` tensors, with size checks.

    ``expected_shape`` (the model's) is compared with the stored shape before anything is allocated.
    """
    try:
        raw_shape, values, bitmask = parts["shape"], parts["compressed"], parts["bitmask"]
    except KeyError as err:
        raise ValueError(f"{prefix}: compressed-tensors entry lacks its {err.args[0]!r} tensor") from err
    if raw_shape.dtype not in (torch.int64, torch.int32) or not 1 <= raw_shape.numel() <= 8:
        raise ValueError(f"{prefix}.shape must hold 1-8 integers, got {raw_shape.dtype} {tuple(raw_shape.shape)}")
    shape = [int(s) for s in raw_shape.reshape(-1).tolist()]
    if any(s < 0 for s in shape):
        raise ValueError(f"{prefix}: invalid stored shape {shape}")
    if expected_shape is not None and tuple(shape) != tuple(expected_shape):
        raise ValueError(f"{prefix}.shape says {shape} but the model's {prefix}.weight is {list(expected_shape)}")
    expected_mask = (*shape[:-1], -(-shape[-1] // 8))
    if tuple(bitmask.shape) != expected_mask or bitmask.dtype != torch.uint8:
        raise ValueError(f"{prefix}: bitmask {tuple(bitmask.shape)} {bitmask.dtype} does not fit shape {shape}")
    cols = shape[-1]
    mask = unpack_bits(bitmask.reshape(-1, bitmask.shape[-1]), cols).reshape(shape)
    if values.numel() != int(mask.sum()):
        raise ValueError(f"{prefix}: {values.numel()} values for {int(mask.sum())} set bits: file corrupt")
    weight = torch.zeros(shape, dtype=values.dtype)
    weight[mask] = values.reshape(-1)
    return weight, mask


def config_block(fmt: str, targets: list[str], ignore: list[str], global_sparsity: float) -> dict[str, Any]:
    """The ``quantization_config`` entry compressed-tensors 0.14.0.1 writes into config.json."""
    if fmt not in FORMATS:
        raise ValueError(f"compressed-tensors format must be one of {FORMATS}, got {fmt!r}")
    return {
        "quant_method": "compressed-tensors",
        "sparsity_config": {
            "format": fmt,
            "global_sparsity": global_sparsity,
            "ignore": sorted(ignore),
            "registry_requires_subclass": False,
            "sparsity_structure": "2:4" if fmt == BITMASK_24 else "unstructured",
            "targets": sorted(targets),
        },
        "transform_config": {},
        "version": CT_VERSION,
    }


def sparsity_format(config: Mapping[str, Any]) -> str | None:
    """The sparse format named by a config.json dict, None when it has no compressed-tensors sparsity.

    Raises for compressed-tensors folders hf_sparse cannot decode (quantized, unknown formats).
    """
    block = config.get("quantization_config")
    if not isinstance(block, Mapping) or block.get("quant_method") != "compressed-tensors":
        if isinstance(block, Mapping):
            raise ValueError(
                f"config.json has quantization_config with quant_method={block.get('quant_method')!r}; "
                "hf_sparse reads only compressed-tensors sparse-bitmask / sparse-24-bitmask folders"
            )
        return None
    if block.get("config_groups") or block.get("format") not in (None, "dense"):
        raise ValueError("this compressed-tensors folder is quantized; hf_sparse reads sparsity-only folders")
    sparsity = block.get("sparsity_config") or {}
    if not isinstance(sparsity, Mapping):
        raise ValueError(
            f"config.json: quantization_config.sparsity_config must be an object, got {type(sparsity).__name__} "
            f"{sparsity!r}: config.json corrupt or edited"
        )
    fmt = sparsity.get("format", "dense")
    if not isinstance(fmt, str):
        raise ValueError(f"config.json: quantization_config.sparsity_config.format must be a string, got {fmt!r}")
    if fmt == "dense":
        return None
    if fmt not in FORMATS:
        raise ValueError(f"compressed-tensors sparsity format {fmt!r} is not supported; hf_sparse reads {FORMATS}")
    return fmt


def compressed_prefixes(keys: Iterable[str]) -> list[str]:
    """Module prefixes stored in the compressed-tensors layout (a ``<m>.bitmask`` beside ``<m>.compressed``)."""
    keys = set(keys)
    return sorted(k[: -len(".bitmask")] for k in keys if k.endswith(".bitmask") and k[: -len(".bitmask")] + ".compressed" in keys)


def decode_state(
    tensors: Mapping[str, torch.Tensor], expected_shapes: Optional[Mapping[str, Sequence[int]]] = None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Whole state dict in the compressed-tensors layout -> (dense state dict, masks of decoded weights).

    The masks are the stored bitmasks: ``W != 0``, or the 2:4 pattern (which may keep a zero).
    ``expected_shapes``: the model's shapes by state-dict key, checked before decoding.
    """
    prefixes = compressed_prefixes(tensors)
    parts_of: dict[str, dict[str, torch.Tensor]] = {p: {} for p in prefixes}
    dense: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        prefix, _, part = key.rpartition(".")
        if prefix in parts_of and part in PARTS[BITMASK]:
            parts_of[prefix][part] = value
        else:
            dense[key] = value
    masks: dict[str, torch.Tensor] = {}
    for prefix, parts in parts_of.items():
        name = f"{prefix}.weight"
        if name in dense:
            raise ValueError(f"{prefix}: both a dense {name} and its compressed tensors are stored: file corrupt")
        if expected_shapes is not None and name not in expected_shapes:
            raise ValueError(f"{prefix}: compressed tensors for {name}, which the model does not have")
        shape = None if expected_shapes is None else expected_shapes[name]
        dense[name], masks[name] = decode(prefix, parts, shape)
    return dense, masks
