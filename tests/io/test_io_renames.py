"""Names the checkpoint code renamed (issue 24) keep working where they used to live, as the same objects."""

from __future__ import annotations

import importlib
import sys

import pytest
import torch


def test_compressed_tensors_module_is_the_native_codec():
    from hf_sparse.core import bitpack
    from hf_sparse.io import native_codec

    sys.modules.pop("hf_sparse.io.compressed_tensors", None)
    with pytest.warns(DeprecationWarning, match="hf_sparse.io.native_codec"):
        old = importlib.import_module("hf_sparse.io.compressed_tensors")
    for name in ("encode", "decode", "choose_encoding", "encoded_sizes", "is_2_4", "as_2d", "narrow_int", "ENCODINGS"):
        assert getattr(old, name) is getattr(native_codec, name), name
    assert old.pack_bits is bitpack.pack_bits and old.unpack_bits is bitpack.unpack_bits


def test_header_metadata_names():
    import hf_sparse.io.save as save
    from hf_sparse.io.folder import Folder
    from hf_sparse.io.weights_header import adding_weights_header

    assert save.header_metadata is adding_weights_header
    assert Folder.header_metadata is Folder.first_file_metadata


def test_one_bit_packer_matches_numpy_little_order_on_every_path():
    import numpy as np

    from hf_sparse.core.bitpack import pack_bits, pack_flat, unpack_bits, unpack_flat

    generator = torch.Generator().manual_seed(0)
    for shape in [(3, 13), (5, 8), (4, 2, 9), (7,)]:
        mask = torch.rand(shape, generator=generator) > 0.5
        packed = pack_bits(mask)
        assert torch.equal(packed, torch.from_numpy(np.packbits(mask.numpy(), axis=-1, bitorder="little")))
        assert torch.equal(unpack_bits(packed, shape[-1]), mask)
        assert torch.equal(unpack_flat(pack_flat(mask), mask.numel()).view_as(mask), mask)
    from hf_sparse.core.bitpack import _pack_torch, _unpack_torch  # the path for tensors on other devices

    for shape in [(6, 11), (2, 3, 16), (1, 1)]:
        mask = torch.rand(shape, generator=generator) > 0.5
        assert torch.equal(_pack_torch(mask), pack_bits(mask))
        assert torch.equal(_unpack_torch(pack_bits(mask), shape[-1]), mask)
