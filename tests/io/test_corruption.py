"""Seeded random corruption of saved folders: every case ends in a clear error or an exact load.

Mutations (flip a byte, truncate, drop a file or a tensor, retype, reshape, reorder) hit the
safetensors files and shard indexes of the three layouts (dense + masks, native, compressed-tensors)
and of the resume state. A clear error is a ValueError or FileNotFoundError; anything else (a raw
KeyError, TypeError, RuntimeError, ...) or a load that differs from what was saved fails the test.
"""

from __future__ import annotations

import json
import os
import random
import shutil

import pytest
import torch

import hf_sparse
from hf_sparse.io.training_state import load_sparsity_state, save_sparsity_state

from ckpt_helpers import masks_equal, read_raw, rewrite, save, write_raw
from helpers import tiny_bert
from export_helpers import bits, prune, state

CASES_PER_TARGET = int(os.environ.get("HF_SPARSE_CORRUPTION_CASES", "24"))  # raise it for a deeper local run
MUTATIONS = ("flip", "truncate", "drop", "retype", "reshape", "reorder")
_DTYPES = ["F32", "F16", "BF16", "I32", "I64", "I16", "U8", "I8", "BOOL", "F64"]


def _files(folder) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.endswith(".safetensors") or n.endswith(".index.json"))


def mutate(folder, rng: random.Random) -> str:
    """Apply one random mutation to one random checkpoint file of ``folder``; describe it."""
    kind = rng.choice(MUTATIONS)
    name = rng.choice(_files(folder))
    path = os.path.join(folder, name)
    size = os.path.getsize(path)
    if kind == "flip" or (name.endswith(".json") and kind not in ("truncate", "drop")):
        data = bytearray(open(path, "rb").read())
        at = rng.randrange(len(data))
        data[at] ^= rng.randrange(1, 256)
        open(path, "wb").write(bytes(data))
        return f"flip byte {at} of {name}"
    if kind == "truncate":
        length = rng.randrange(size)
        with open(path, "r+b") as f:
            f.truncate(length)
        return f"truncate {name} to {length}"
    if kind == "drop":
        if name.endswith(".json") or rng.random() < 0.4:
            os.unlink(path)
            return f"delete {name}"
        header, _ = read_raw(path)
        keys = [k for k in header if k != "__metadata__"]
        if not keys:
            os.unlink(path)
            return f"delete {name}"
        key = rng.choice(keys)
        rewrite(path, lambda tensors, metadata: tensors.pop(key))
        return f"drop tensor {key} from {name}"
    header, data = read_raw(path)
    keys = sorted(k for k in header if k != "__metadata__")
    if not keys:
        return "no-op"
    key = rng.choice(keys)
    if kind == "retype":
        header[key]["dtype"] = rng.choice([d for d in _DTYPES if d != header[key]["dtype"]])
        description = f"retype {key} in {name} to {header[key]['dtype']}"
    elif kind == "reshape":
        shape = header[key]["shape"]
        numel = 1
        for s in shape:
            numel *= s
        options = [[numel], list(reversed(shape)), shape + [1], [max(numel // 2, 1), 2] if numel % 2 == 0 else [numel, 1]]
        header[key]["shape"] = rng.choice([o for o in options if o != shape] or [[numel + 1]])
        description = f"reshape {key} in {name} to {header[key]['shape']}"
    else:
        other = rng.choice(keys)
        header[key]["data_offsets"], header[other]["data_offsets"] = header[other]["data_offsets"], header[key]["data_offsets"]
        header[key]["shape"], header[other]["shape"] = header[other]["shape"], header[key]["shape"]
        header[key]["dtype"], header[other]["dtype"] = header[other]["dtype"], header[key]["dtype"]
        description = f"swap {key} and {other} in {name}"
    write_raw(path, header, data)
    return description


def _exact(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(a[k].dtype == b[k].dtype and torch.equal(bits(a[k]), bits(b[k])) for k in a)


def _model_and_masks():
    model = tiny_bert(seed=4)
    masks = prune(model, 0.9)
    name = next(iter(masks))
    with torch.no_grad():  # a kept zero, so the masks file matters in every layout
        dict(model.named_parameters())[name].view(-1)[masks[name].view(-1).nonzero()[0, 0]] = 0.0
    return model, masks


def _check_folder_cases(tmp_path, write, seed: int) -> dict[str, int]:
    model, masks = _model_and_masks()
    expected = state(model)
    template = tmp_path / "template"
    write(model, masks, template)
    rng = random.Random(seed + int(os.environ.get("HF_SPARSE_CORRUPTION_SEED", "0")))
    outcomes = {"error": 0, "exact": 0}
    for case in range(CASES_PER_TARGET):
        folder = tmp_path / f"case{case}"
        shutil.copytree(template, folder)
        what = mutate(folder, rng)
        for reader in (hf_sparse.load_masks, hf_sparse.io.load.describe):  # inspect and the masks reader too
            try:
                reader(folder)
            except (ValueError, FileNotFoundError):
                pass
            except Exception as err:  # noqa: BLE001 - the point: no other exception type may escape
                pytest.fail(f"{what}: {reader.__name__} raised a raw {type(err).__name__}: {err}")
        try:
            loaded, loaded_masks = hf_sparse.load_sparse(folder)
        except (ValueError, FileNotFoundError) as err:
            assert str(err), what
            outcomes["error"] += 1
        except Exception as err:  # noqa: BLE001 - the point: no other exception type may escape
            pytest.fail(f"{what}: raw {type(err).__name__}: {err}")
        else:
            assert _exact(state(loaded), expected), f"{what}: loaded different weights without an error"
            assert masks_equal(loaded_masks, masks), f"{what}: loaded different masks without an error"
            outcomes["exact"] += 1
        shutil.rmtree(folder)
    assert outcomes["error"] >= CASES_PER_TARGET // 2, outcomes  # the mutations really corrupt
    return outcomes


@pytest.mark.parametrize("compressed", [False, True, "compressed-tensors"], ids=["dense", "native", "ct"])
def test_random_corruption_of_saved_folders(tmp_path, compressed):
    def write(model, masks, folder):
        save(model, folder, masks=masks, compressed=compressed, max_shard_size="60KB" if compressed is True else "5GB")

    _check_folder_cases(tmp_path, write, seed={False: 1, True: 2, "compressed-tensors": 3}[compressed])


def test_random_corruption_of_resume_state(tmp_path):
    generator = torch.Generator().manual_seed(0)
    masks = {"a.weight": torch.rand(8, 16, generator=generator) > 0.5, "b.weight": torch.rand(4, 4, generator=generator) > 0.3}
    saved = {"step": 12, "started": True, "pending_update": False, "update_count": 3, "masks": masks,
             "method": {"generator": generator.get_state(), "initial_sparsity": 0.25,
                        "active_counts": {"a.weight": torch.arange(128, dtype=torch.int32).reshape(8, 16)}}}
    expected_shapes = {n: m.shape for n, m in masks.items()}
    template = tmp_path / "template"
    save_sparsity_state(str(template), saved, {"method": "gmp"})
    rng = random.Random(5 + int(os.environ.get("HF_SPARSE_CORRUPTION_SEED", "0")))
    errors = 0
    for case in range(CASES_PER_TARGET):
        folder = tmp_path / f"case{case}"
        shutil.copytree(template, folder)
        what = mutate(folder, rng)
        try:
            loaded, config = load_sparsity_state(str(folder), expected_masks=expected_shapes)
        except (ValueError, FileNotFoundError) as err:
            assert str(err), what
            errors += 1
        except Exception as err:  # noqa: BLE001
            pytest.fail(f"{what}: raw {type(err).__name__}: {err}")
        else:
            assert config == {"method": "gmp"}, what
            assert masks_equal(loaded["masks"], masks), what
            assert loaded["step"] == 12 and loaded["update_count"] == 3, what
            assert torch.equal(loaded["method"]["generator"], saved["method"]["generator"]), what
            assert json.dumps(loaded["method"]["initial_sparsity"]) == "0.25", what
            assert torch.equal(loaded["method"]["active_counts"]["a.weight"], saved["method"]["active_counts"]["a.weight"]), what
        shutil.rmtree(folder)
    assert errors >= CASES_PER_TARGET // 2
