"""Put hf_sparse's header into weights files that transformers (or peft) writes for us.

``save_pretrained`` and the Trainer write the weights of the dense layout themselves; their
safetensors writer is wrapped for the duration of one save, for files inside the staging folder
only, so the header (save id, config.json binding, checksums) is in the first and only write.
If a later transformers bypasses the wrapped names, :func:`hf_sparse.io.save.write_dense_checkpoint`
sees the header missing and adds it in a second write.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Callable, Iterator, Mapping

from .binding import model_config_header
from .shards import with_checksums


def _writers() -> list[tuple[object, str]]:
    import safetensors.torch
    import transformers.modeling_utils as modeling_utils

    names = [(modeling_utils, "safe_save_file"), (safetensors.torch, "save_file")]
    peft_model = sys.modules.get("peft.peft_model")  # peft writes adapters through its own imported name
    if peft_model is not None and hasattr(peft_model, "safe_save_file"):
        names.append((peft_model, "safe_save_file"))
    return names


@contextmanager
def adding_weights_header(staging: str, metadata: Mapping[str, str]) -> Iterator[None]:
    """While active, every safetensors file written into ``staging`` gets ``metadata``, the
    config.json binding of ``staging`` (written before the weights) and checksums."""
    root = os.path.abspath(staging) + os.sep
    to_add = dict(metadata)

    def wrap(original: Callable) -> Callable:
        def save_file(tensors, filename, metadata=None):
            if os.path.abspath(os.fspath(filename)).startswith(root):
                metadata = with_checksums(tensors, {**(metadata or {}), **to_add, **model_config_header(staging)})
            return original(tensors, filename, metadata=metadata)

        return save_file

    originals = {(module, name): getattr(module, name) for module, name in _writers()}
    try:
        for (module, name), original in originals.items():
            setattr(module, name, wrap(original))
        yield
    finally:
        for (module, name), original in originals.items():
            setattr(module, name, original)
