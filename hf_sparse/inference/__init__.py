"""Sparse inference: CSR SparseLinear layers, the dense <-> sparse model conversion, 2:4 semi-structured kernels, and timing (the one definition of speedup, also used by reporting).

``hf_sparse.inference.serving.sparse_pipeline(task, folder)`` serves a saved sparse folder in one
call (it loads folders, so it sits in the layer above ``hf_sparse.io``)."""
