"""Deprecated name of :mod:`hf_sparse.io.native_codec` (hf_sparse's native encodings, not the
compressed-tensors layout, which is :mod:`hf_sparse.io.ct_layout`). Kept so old imports work."""

from __future__ import annotations

import warnings

from .native_codec import *  # noqa: F401,F403
from .native_codec import ENCODINGS, as_2d, choose_encoding, decode, encode, encoded_sizes, is_2_4, narrow_int  # noqa: F401
from ..core.bitpack import pack_bits, unpack_bits  # noqa: F401

warnings.warn(
    "hf_sparse.io.compressed_tensors is renamed hf_sparse.io.native_codec (it holds hf_sparse's native "
    "format; the compressed-tensors layout is hf_sparse.io.ct_layout)",
    DeprecationWarning,
    stacklevel=2,
)
