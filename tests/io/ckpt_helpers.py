"""Helpers for the checkpoint tests: edit safetensors headers and files as a corrupting tool would."""

from __future__ import annotations

import json
import os
import struct
import warnings
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import hf_sparse


def save(model, path, **kw) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return hf_sparse.save_sparse(model, path, **kw)


def read_raw(path) -> tuple[dict, bytes]:
    """(JSON header, data bytes) of a safetensors file."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        return header, f.read()


def write_raw(path, header: dict, data: bytes) -> None:
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)) + encoded + data)


def edit_header(path, change: Callable[[dict], None]) -> None:
    header, data = read_raw(path)
    change(header)
    write_raw(path, header, data)


def unbind_config(folder) -> None:
    """Drop the config.json binding from the weights' headers, as a file of another tool would lack it,
    so a test can reach the checks behind it (class allow-list, shapes against the model)."""
    for name in os.listdir(folder):
        if name.startswith("model") and name.endswith(".safetensors"):
            edit_header(os.path.join(folder, name), lambda h: h.get("__metadata__", {}).pop("hf_sparse_model_config", None))


def rewrite(path, change: Callable[[dict, dict], None]) -> None:
    """Re-save a file after ``change(tensors, metadata)`` (metadata kept unless changed)."""
    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        metadata = dict(f.metadata() or {})
    change(tensors, metadata)
    save_file(tensors, str(path), metadata=metadata)


def metadata_of(path) -> dict:
    with safe_open(str(path), "pt") as f:
        return dict(f.metadata() or {})


def files_of(path) -> dict[str, bytes]:
    return {n: open(os.path.join(path, n), "rb").read() for n in sorted(os.listdir(path))
            if os.path.isfile(os.path.join(path, n))}


def masks_equal(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def golden_model():
    """A tiny BERT with weights from a fixed formula (no RNG: the same on every torch) and masks that
    make the native writer use all three encodings: ``2:4`` (query), ``bitmask`` (key), ``index``
    (the FFN output, 2 kept of 64). Returns (model, masks)."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=8, hidden_size=4, num_hidden_layers=1, num_attention_heads=1,
                        intermediate_size=16, max_position_embeddings=4, type_vocab_size=1, num_labels=2)
    model = BertForSequenceClassification(config)
    with torch.no_grad():
        for i, (name, param) in enumerate(sorted(model.named_parameters())):
            values = (torch.arange(param.numel(), dtype=torch.float64) * 7 + i * 13) % 23 - 11
            param.copy_((values / 8).reshape(param.shape))  # multiples of 1/8: exact in fp32
    layer = "bert.encoder.layer.0."
    query = torch.tensor([[1, 1, 0, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)
    key = torch.tensor([[1, 1, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0], [0, 1, 1, 1]], dtype=torch.bool)
    output = torch.zeros(4, 16, dtype=torch.bool)
    output[1, 3] = output[2, 14] = True
    masks = {f"{layer}attention.self.query.weight": query, f"{layer}attention.self.key.weight": key,
             f"{layer}output.dense.weight": output}
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].masked_fill_(~mask, 0.0)
    return model.eval(), masks
