"""Seeded random corruption of saved folders: every case ends in a clear error or an exact load.

Mutations (flip a byte, truncate, drop a file or a tensor, retype, reshape, reorder) hit the
safetensors files and shard indexes of the three layouts (dense + masks, native, compressed-tensors)
and of the resume state. Folder mutations (issue 25) rebind a file to another save of the same
architecture, edit config.json or sparsity_config.json, replace a file by a symbolic link (to the
other save's file or to a copy of itself), or put a foreign file in the folder; after a foreign file,
saving the model again into the folder must keep it (or refuse, for a LoRA adapter) and load exactly. A clear error is a ValueError or FileNotFoundError; anything else (a raw
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
FOLDER_MUTATIONS = ("rebind", "config", "symlink", "foreign")
_CONFIG_EDITS = (
    ("dtype", "bfloat16"), ("dtype", "float16"), ("tie_word_embeddings", False), ("num_hidden_layers", 3),
    ("num_hidden_layers", 10000), ("architectures", ["BertModel"]), ("hidden_size", 64), ("vocab_size", 51),
    ("id2label", {"0": "no", "1": "yes"}),  # does not change what loads: must load exactly
)
_FOREIGN = ("notes.txt", "adapter_config.json", "adapter_model.safetensors", "pytorch_model.bin", "tokenizer.json")
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


def mutate_folder(folder, other, rng: random.Random) -> tuple[str, str]:
    """Apply one folder mutation to ``folder`` (``other``: a save of another model in the same layout);
    returns (kind, description)."""
    kind = rng.choice(FOLDER_MUTATIONS)
    names = [n for n in sorted(os.listdir(folder)) if n.endswith((".safetensors", ".json"))]
    if kind == "rebind":
        shared = [n for n in names if os.path.isfile(os.path.join(other, n))]
        name = rng.choice(shared)
        shutil.copy2(os.path.join(other, name), os.path.join(folder, name))
        return kind, f"copy {name} of another save"
    if kind == "config":
        if rng.random() < 0.2 and os.path.isfile(os.path.join(folder, "sparsity_config.json")):
            path = os.path.join(folder, "sparsity_config.json")
            data = json.load(open(path))
            data["sparsity"] = 0.5
            json.dump(data, open(path, "w"))
            return kind, "edit sparsity_config.json sparsity"
        field, value = rng.choice(_CONFIG_EDITS)
        path = os.path.join(folder, "config.json")
        data = json.load(open(path))
        data[field] = value
        json.dump(data, open(path, "w"))
        return kind, f"config.json {field} = {value!r}"
    if kind == "symlink":
        name = rng.choice(names)
        path = os.path.join(folder, name)
        if rng.random() < 0.5 and os.path.isfile(os.path.join(other, name)):
            target = os.path.join(other, name)
        else:
            target = str(folder) + "-" + name  # a copy of the same bytes elsewhere
            shutil.copy2(path, target)
        os.unlink(path)
        os.symlink(target, path)
        return kind, f"{name} -> link to {target}"
    name = rng.choice(_FOREIGN)
    with open(os.path.join(folder, name), "wb") as handle:
        handle.write(b"foreign bytes of another tool\n")
    return kind, f"foreign file {name}"


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
    other_model = tiny_bert(seed=9)
    other = tmp_path / "other"
    other_masks = prune(other_model, 0.5)
    other_expected = state(other_model)
    write(other_model, other_masks, other)
    rng = random.Random(seed + int(os.environ.get("HF_SPARSE_CORRUPTION_SEED", "0")))
    outcomes = {"error": 0, "exact": 0}
    for case in range(CASES_PER_TARGET * 2):  # half byte-level, half folder mutations
        folder = tmp_path / f"case{case}"
        shutil.copytree(template, folder)
        kind = None
        if case % 2:
            kind, what = mutate_folder(folder, other, rng)
        else:
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
            if kind in ("rebind", "symlink") and _exact(state(loaded), other_expected):
                # every file that loads came from the other save (e.g. a one-file native save): a whole save
                assert masks_equal(loaded_masks, other_masks), f"{what}: the other save's weights with other masks"
            else:
                assert _exact(state(loaded), expected), f"{what}: loaded different weights without an error"
                assert masks_equal(loaded_masks, masks), f"{what}: loaded different masks without an error"
            outcomes["exact"] += 1
        if kind == "foreign":
            _save_again_keeps_foreign_files(folder, write, model, masks, expected, what)
        shutil.rmtree(folder)
    assert outcomes["error"] >= CASES_PER_TARGET // 2, outcomes  # the mutations really corrupt
    return outcomes


def _save_again_keeps_foreign_files(folder, write, model, masks, expected, what: str) -> None:
    """A save into a folder with a foreign file keeps it, or refuses (a LoRA adapter) touching nothing."""
    from ckpt_helpers import files_of
    from hf_sparse.io.replace_policy import ADAPTER_FILES, replaced_by_a_save

    before = files_of(folder)
    foreign = {n: b for n, b in before.items() if n in _FOREIGN}
    try:
        write(model, masks, folder)
    except ValueError as err:
        assert any(n in ADAPTER_FILES for n in foreign), f"{what}: save refused: {err}"
        assert files_of(folder) == before, f"{what}: a refused save changed the folder"
        return
    after = files_of(folder)
    for name, data in foreign.items():
        if not replaced_by_a_save(name):
            assert after.get(name) == data, f"{what}: the save deleted or changed {name}"
    loaded, loaded_masks = hf_sparse.load_sparse(folder)
    assert _exact(state(loaded), expected) and masks_equal(loaded_masks, masks), f"{what}: save again did not load exactly"


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
    other = tmp_path / "other"  # another save of the same run: its files must never pair with ours
    save_sparsity_state(str(other), {**saved, "step": 16, "masks": {n: ~m for n, m in masks.items()}}, {"method": "gmp"})
    rng = random.Random(5 + int(os.environ.get("HF_SPARSE_CORRUPTION_SEED", "0")))
    errors = 0
    for case in range(CASES_PER_TARGET + CASES_PER_TARGET // 4):
        folder = tmp_path / f"case{case}"
        shutil.copytree(template, folder)
        if case >= CASES_PER_TARGET:
            name = rng.choice(sorted(os.listdir(other)))
            shutil.copy2(other / name, folder / name)
            what = f"copy {name} of another save"
        else:
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
