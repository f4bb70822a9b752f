"""Sparse inference: CSR SparseLinear layers, the dense <-> sparse model conversion, 2:4 semi-structured kernels, and timing (the one definition of speedup, also used by reporting)."""
