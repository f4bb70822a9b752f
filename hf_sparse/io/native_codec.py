"""hf_sparse's native compressed encodings of one sparse weight (pure tensor code, no I/O).

Each weight is viewed as a 2-D ``[rows, cols]`` matrix (``rows = shape[0]``) and stored by its
*mask* (True = kept), so masks come back exactly, kept zeros included. Three encodings; the
writer picks the smallest that applies, per tensor:

- ``bitmask``: ``bitmask`` uint8 ``[rows, ceil(cols/8)]`` (bit ``j % 8`` of byte ``j // 8`` is
  column ``j``, numpy ``bitorder="little"``) + ``values`` ``[nnz]`` in row-major order.
  Bytes: ``rows*ceil(cols/8) + nnz*b``; best from ~50% to ~95% sparsity.
- ``index``: ``row_counts`` ``[rows]`` + ``col_indices`` ``[nnz]`` (both in the narrowest integer
  type that holds them: uint8, int16 or int32) + ``values`` ``[nnz]``.
  Bytes: ``rows*c + nnz*(i + b)``; best at very high sparsity, where a bitmask alone costs 1/(8b).
- ``2:4``: exactly two kept entries per group of four consecutive columns: ``values``
  ``[rows, cols/2]`` + ``bitmask`` as above.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

import torch

from ..core.bitpack import pack_bits, unpack_bits

Components = dict[str, torch.Tensor]
ENCODINGS = ("bitmask", "index", "2:4")
#: every part an encoding stores; in a file, the part of weight ``<name>`` is ``<name>.sparse_<part>``
PART_NAMES = ("bitmask", "col_indices", "row_counts", "values")
_PART_MARK = ".sparse_"


def part_key(name: str, part: str) -> str:
    """The file key of ``part`` of the encoded weight ``name``."""
    return f"{name}{_PART_MARK}{part}"


def split_part_key(key: str) -> tuple[str, str] | None:
    """``(weight name, part)`` when ``key`` names an encoded part (``<name>.sparse_<known part>``), else None.

    Only the known part names count, so a module called ``sparse_proj`` is an ordinary tensor.
    """
    base, mark, part = key.rpartition(_PART_MARK)
    return (base, part) if mark and base and part in PART_NAMES else None


def as_2d(shape: torch.Size | list[int]) -> tuple[int, int]:
    shape = list(shape)
    rows = shape[0] if shape else 1
    numel = math.prod(shape)
    return rows, (numel // rows if rows else 0)


def narrow_int(max_value: int) -> torch.dtype:
    """The smallest safetensors-friendly integer type that holds values in ``[0, max_value]``."""
    if max_value <= 255:
        return torch.uint8
    if max_value <= 32767:
        return torch.int16
    if max_value <= 2**31 - 1:
        return torch.int32
    return torch.int64


def _bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def is_2_4(mask2d: torch.Tensor, nnz: int | None = None) -> bool:
    rows, cols = as_2d(mask2d.shape)
    nnz = int(mask2d.sum()) if nnz is None else nnz
    if cols % 4 or cols == 0 or 2 * nnz != rows * cols:  # cheap rejections first
        return False
    return bool((mask2d.reshape(-1, 4).sum(1) == 2).all())


def encoded_sizes(mask2d: torch.Tensor, value_bytes: int, row_counts: torch.Tensor | None = None) -> dict[str, int]:
    """Bytes each applicable encoding would take (the writer keeps the smallest)."""
    rows, cols = mask2d.shape
    counts = mask2d.sum(1) if row_counts is None else row_counts
    nnz = int(counts.sum())
    counts_max = int(counts.max()) if rows else 0
    sizes = {
        "bitmask": rows * math.ceil(cols / 8) + nnz * value_bytes,
        "index": rows * _bytes(narrow_int(counts_max)) + nnz * (_bytes(narrow_int(max(cols - 1, 0))) + value_bytes),
    }
    if is_2_4(mask2d, nnz):
        sizes["2:4"] = sizes["bitmask"]  # same bytes; kept as 2:4 so readers can see the structure
    return sizes


def choose_encoding(mask2d: torch.Tensor, value_bytes: int, row_counts: torch.Tensor | None = None) -> str:
    sizes = encoded_sizes(mask2d, value_bytes, row_counts)
    if "2:4" in sizes:
        return "2:4"
    return min(sizes, key=lambda k: (sizes[k], k))


def encode(weight: torch.Tensor, mask: torch.Tensor, encoding: str | None = None) -> tuple[str, Components]:
    """Encode ``weight`` by ``mask``; ``encoding=None`` picks the smallest. Weights outside the mask must be 0."""
    if weight.shape != mask.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match weight shape {tuple(weight.shape)}")
    w = weight.detach().cpu().contiguous()
    m = mask.detach().cpu().to(torch.bool)
    if bool((w.ne(0) & ~m).any()):
        raise ValueError(
            f"weight {tuple(w.shape)} has nonzero entries where its mask is False; apply the masks "
            "first (e.g. trainer.sparsifier.apply_masks()) or pass masks=None to derive them from the weights"
        )
    rows, cols = as_2d(w.shape)
    w2, m2 = w.reshape(rows, cols), m.reshape(rows, cols)
    counts = m2.sum(1)
    encoding = encoding or choose_encoding(m2, w.element_size(), counts)
    if encoding not in _ENCODERS:
        raise ValueError(f"unknown encoding {encoding!r}; valid: {ENCODINGS}")
    return encoding, _ENCODERS[encoding](w2, m2, counts)


def _encode_bitmask(w2: torch.Tensor, m2: torch.Tensor, counts: torch.Tensor) -> Components:
    return {"bitmask": pack_bits(m2), "values": w2[m2].contiguous()}


def _encode_index(w2: torch.Tensor, m2: torch.Tensor, counts: torch.Tensor) -> Components:
    cols_idx = m2.nonzero()[:, 1]  # row-major order, same as w2[m2]
    return {
        "row_counts": counts.to(narrow_int(int(counts.max()) if counts.numel() else 0)),
        "col_indices": cols_idx.to(narrow_int(max(m2.shape[1] - 1, 0))),
        "values": w2[m2].contiguous(),
    }


def _encode_24(w2: torch.Tensor, m2: torch.Tensor, counts: torch.Tensor) -> Components:
    if not is_2_4(m2):
        raise ValueError("encoding '2:4' needs exactly 2 kept entries in every group of 4 columns")
    rows, cols = m2.shape
    return {"bitmask": pack_bits(m2), "values": w2[m2].reshape(rows, cols // 2).contiguous()}


_ENCODERS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Components]] = {
    "bitmask": _encode_bitmask,
    "index": _encode_index,
    "2:4": _encode_24,
}


def decode(encoding: str, shape: list[int], parts: Mapping[str, torch.Tensor], name: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """Return (weight, mask) from :func:`encode`'s components, checking every size (corrupt files fail here).

    ``shape`` must already be checked against the model: the weight is allocated from it.
    """
    rows, cols = as_2d(shape)
    unknown = sorted(set(parts) - set(_PARTS.get(encoding, ())))
    if encoding not in _PARTS:
        raise ValueError(f"{name}: unknown encoding {encoding!r}; this hf_sparse reads {ENCODINGS}")
    if unknown:
        raise ValueError(f"{name}: unexpected parts {unknown} for encoding {encoding!r}: file corrupt")
    try:
        values = parts["values"]
        if encoding in ("bitmask", "2:4"):
            bitmask = parts["bitmask"]
            _expect(name, "bitmask", bitmask, (rows, math.ceil(cols / 8)), torch.uint8)
            m2 = unpack_bits(bitmask, cols)
        else:
            m2 = _index_mask(name, rows, cols, parts["row_counts"], parts["col_indices"])
    except KeyError as err:
        raise ValueError(f"{name}: compressed tensor is missing its {err.args[0]!r} part") from err
    nnz = int(m2.sum())
    expected_values = (rows, cols // 2) if encoding == "2:4" else (nnz,)
    if encoding == "2:4" and not is_2_4(m2, nnz):
        raise ValueError(f"{name}: encoding '2:4' but its bitmask does not keep 2 of every 4 columns: file corrupt")
    if tuple(values.shape) != expected_values:
        raise ValueError(f"{name}: values have shape {tuple(values.shape)}, the mask needs {expected_values}: file corrupt")
    weight = torch.zeros(rows, cols, dtype=values.dtype)
    weight[m2] = values.reshape(-1)
    return weight.reshape(shape), m2.reshape(shape)


_PARTS = {"bitmask": ("bitmask", "values"), "2:4": ("bitmask", "values"), "index": ("row_counts", "col_indices", "values")}
_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _index_mask(name: str, rows: int, cols: int, counts: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The mask of an ``index`` encoding; column indices must rise strictly within each row."""
    if counts.dtype not in _INT_DTYPES or idx.dtype not in _INT_DTYPES:
        raise ValueError(f"{name}: index encoding needs integer row_counts/col_indices, got {counts.dtype}/{idx.dtype}")
    _expect(name, "row_counts", counts, (rows,), None)
    counts, idx = counts.to(torch.int64), idx.to(torch.int64)
    if idx.dim() != 1 or (counts.numel() and int(counts.min()) < 0) or int(counts.sum()) != idx.numel():
        raise ValueError(f"{name}: corrupt index encoding (row counts / column indices disagree)")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= cols):
        raise ValueError(f"{name}: corrupt index encoding (column index outside 0..{cols - 1})")
    row_of = torch.repeat_interleave(torch.arange(rows), counts)
    rises = idx[1:] > idx[:-1]
    if not bool((rises | (row_of[1:] != row_of[:-1])).all()):
        raise ValueError(f"{name}: corrupt index encoding (column indices not strictly increasing within a row)")
    m2 = torch.zeros(rows, cols, dtype=torch.bool)
    m2[row_of, idx] = True
    return m2


def _expect(name: str, part: str, tensor: torch.Tensor, shape: tuple, dtype: torch.dtype | None) -> None:
    if tuple(tensor.shape) != shape or (dtype is not None and tensor.dtype != dtype):
        raise ValueError(
            f"{name}: {part} has shape {tuple(tensor.shape)} {tensor.dtype}, expected {shape}"
            f"{' ' + str(dtype) if dtype else ''}: file corrupt or shape mismatch"
        )
