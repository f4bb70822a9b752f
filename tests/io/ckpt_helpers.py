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
