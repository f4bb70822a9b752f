"""Golden tests: hf_sparse's native on-disk format must not drift.

Exact bytes of the three encodings of tiny tensors (bit order, integer widths, value order), and a
committed folder (tests/fixtures/native_tiny/folder, written by its generate.py) that must load to
known weights. Changing the bit order in both encoder and decoder keeps round trips green but
fails here, as it would fail every checkpoint already on disk.
"""

from __future__ import annotations

import json
import os
import shutil
import struct

import torch

import hf_sparse
from hf_sparse.io import native_codec as native

from ckpt_helpers import golden_model, masks_equal, metadata_of
from export_helpers import assert_bitwise_equal, state

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "native_tiny", "folder")
W = torch.tensor([[0.5, 0, 0, -1.25, 0, 0, 0, 0, 0, 2.0], [0, 0, 0, 0, 0, 0, 0, 0, -0.125, 0]])
W24 = torch.tensor([[1.5, 0, 0, -2.0, 0, 0.25, 3.0, 0], [0, -1.0, 0.5, 0, 4.0, 0, 0, -0.75]])


def raw(t: torch.Tensor) -> bytes:
    return t.contiguous().numpy().tobytes()


def f32(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def test_bitmask_bytes():
    encoding, parts = native.encode(W, W != 0, "bitmask")
    assert encoding == "bitmask" and sorted(parts) == ["bitmask", "values"]
    # row 0 keeps columns 0, 3, 9: byte 0 = bit0 + bit3 = 0x09, byte 1 = bit1 (column 9) = 0x02
    assert parts["bitmask"].dtype == torch.uint8 and tuple(parts["bitmask"].shape) == (2, 2)
    assert raw(parts["bitmask"]) == bytes([0x09, 0x02, 0x00, 0x01])
    assert raw(parts["values"]) == f32(0.5, -1.25, 2.0, -0.125)  # row-major order


def test_index_bytes():
    encoding, parts = native.encode(W, W != 0, "index")
    assert encoding == "index" and sorted(parts) == ["col_indices", "row_counts", "values"]
    assert parts["row_counts"].dtype == torch.uint8 and raw(parts["row_counts"]) == bytes([3, 1])
    assert parts["col_indices"].dtype == torch.uint8 and raw(parts["col_indices"]) == bytes([0, 3, 9, 8])
    assert raw(parts["values"]) == f32(0.5, -1.25, 2.0, -0.125)
    wide = torch.zeros(1, 300)
    wide[0, 299] = 1.0
    _, parts = native.encode(wide, wide != 0, "index")
    assert parts["col_indices"].dtype == torch.int16 and raw(parts["col_indices"]) == struct.pack("<h", 299)


def test_2_4_bytes():
    encoding, parts = native.encode(W24, W24 != 0)
    assert encoding == "2:4"
    # row 0 keeps columns 0, 3, 5, 6 -> 1 + 8 + 32 + 64; row 1 keeps 1, 2, 4, 7 -> 2 + 4 + 16 + 128
    assert raw(parts["bitmask"]) == bytes([105, 150])
    assert tuple(parts["values"].shape) == (2, 4)
    assert raw(parts["values"]) == f32(1.5, -2.0, 0.25, 3.0, -1.0, 0.5, 4.0, -0.75)


def test_committed_native_folder_loads_to_known_weights(tmp_path):
    folder = tmp_path / "fixture"
    shutil.copytree(FIXTURE, folder)  # loading never writes, but keep the committed copy untouchable
    metadata = metadata_of(folder / "model.sparse.safetensors")
    assert metadata["hf_sparse_format_version"] == "1" and metadata["hf_sparse_format"] == "native"
    encodings = {n: e["encoding"] for n, e in json.loads(metadata["hf_sparse_encodings"]).items()}
    assert sorted(encodings.values()) == ["2:4", "bitmask", "index"]
    expected, expected_masks = golden_model()
    loaded, masks = hf_sparse.load_sparse(folder)
    assert_bitwise_equal(state(loaded), state(expected))
    assert masks_equal(masks, expected_masks)
    assert masks_equal(hf_sparse.load_masks(folder), expected_masks)


def test_dense_header_is_in_the_first_write_or_added_once(tmp_path, monkeypatch):
    import contextlib

    import hf_sparse.io.writers as save_module  # the writers of save_sparse
    from export_helpers import prune
    from helpers import tiny_bert

    warnings: list[str] = []
    monkeypatch.setattr(save_module.logger, "warning", lambda message, *args: warnings.append(message % args))
    model = tiny_bert()
    masks = prune(model, 0.5)
    hf_sparse.save_sparse(model, tmp_path / "first", masks=masks)
    assert "hf_sparse_save_id" in metadata_of(tmp_path / "first" / "model.safetensors")
    assert not warnings
    # a transformers that bypasses the wrapped writer: the header is still there, in a second write
    monkeypatch.setattr(save_module, "adding_weights_header", lambda staging, metadata: contextlib.nullcontext())
    hf_sparse.save_sparse(model, tmp_path / "second", masks=masks)
    assert any("without hf_sparse's header" in w for w in warnings)
    assert "hf_sparse_save_id" in metadata_of(tmp_path / "second" / "model.safetensors")
    loaded, loaded_masks = hf_sparse.load_sparse(tmp_path / "second")
    assert_bitwise_equal(state(loaded), state(model))
    assert masks_equal(loaded_masks, masks)
