"""The header and file checks that bind an FSDP2 checkpoint's rank states to the Trainer's files
(``hf_sparse.io.binding.check_rank_states`` / ``check_file_digests``), on hand-made folders in one
process; tests/training/test_fsdp_binding.py runs them through the Trainer on 2 ranks."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from hf_sparse.__main__ import main
from hf_sparse.io import binding
from hf_sparse.io.training_state import save_sparsity_state

STATE = {"step": 4, "started": True, "pending_update": False, "method": {}, "update_count": 1}


def _checkpoint(folder, save_id="a" * 32, world=2, record=True):
    """A folder shaped like an FSDP2 SHARDED_STATE_DICT checkpoint of ``world`` ranks."""
    os.makedirs(folder / "pytorch_model_fsdp_0", exist_ok=True)
    for rank in range(world):
        (folder / "pytorch_model_fsdp_0" / f"__{rank}_0.distcp").write_bytes(bytes([rank]) * 100 + save_id.encode())
        (folder / f"rng_state_{rank}.pth").write_bytes(b"rng" + bytes([rank]))
    (folder / "pytorch_model_fsdp_0" / ".metadata").write_bytes(b"metadata")
    files = binding.trainer_resume_files(str(folder))
    for rank in range(world):
        mine = {n: binding.file_digest(str(folder / n)) for i, n in enumerate(files) if i % world == rank}
        masks = {"w": torch.ones(2, 3, dtype=torch.bool)}
        extra = {binding.KEY_FILES: json.dumps(mine)} if record else None
        save_sparsity_state(str(folder / binding.SHARDS_DIR / f"rank-{rank:05d}-of-{world:05d}"), {**STATE, "masks": masks},
                            {}, save_id, extra)
    return folder


def _check(folder):
    recorded = binding.check_rank_states(str(folder))
    for rank in range(2):
        binding.check_file_digests(str(folder), recorded, rank, 2)
    return recorded


def test_an_untouched_checkpoint_passes_and_every_file_is_recorded(tmp_path):
    folder = _checkpoint(tmp_path / "c")
    assert sorted(_check(folder)) == binding.trainer_resume_files(str(folder)) == [
        "pytorch_model_fsdp_0/.metadata", "pytorch_model_fsdp_0/__0_0.distcp", "pytorch_model_fsdp_0/__1_0.distcp",
        "rng_state_0.pth", "rng_state_1.pth"]


@pytest.mark.parametrize("copied, named", [
    ("pytorch_model_fsdp_0/__1_0.distcp", "__1_0.distcp"),
    ("rng_state_0.pth", "rng_state_0.pth"),
    ("hf_sparse_shards/rank-00001-of-00002", "rank-00001-of-00002"),
    ("hf_sparse_shards/rank-00000-of-00002/sparse_masks.safetensors", "rank-00000-of-00002/sparse_masks.safetensors"),
])
def test_a_file_of_another_save_is_refused_naming_it(tmp_path, copied, named):
    """Old: nothing bound the Trainer's sharded files, and rank states of two saves resumed together."""
    folder, other = _checkpoint(tmp_path / "c"), _checkpoint(tmp_path / "other", save_id="b" * 32)
    if copied == "rng_state_0.pth":
        (other / copied).write_bytes(b"rng of another save")
    if (other / copied).is_dir():
        shutil.rmtree(folder / copied)
        shutil.copytree(other / copied, folder / copied)
    else:
        shutil.copy2(other / copied, folder / copied)
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        _check(folder)


def test_missing_extra_incomplete_and_unrecorded_folders_are_refused(tmp_path):
    folder = _checkpoint(tmp_path / "missing")
    os.remove(folder / "rng_state_1.pth")
    with pytest.raises(ValueError, match=r"missing \['rng_state_1.pth'\]"):
        _check(folder)
    folder = _checkpoint(tmp_path / "extra")
    (folder / "optimizer.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"not of this save \['optimizer.bin'\]"):
        _check(folder)
    folder = _checkpoint(tmp_path / "incomplete")
    shutil.rmtree(folder / binding.SHARDS_DIR / "rank-00001-of-00002")
    with pytest.raises(ValueError, match="not one complete set"):
        _check(folder)
    folder = _checkpoint(tmp_path / "legacy", record=False)
    with pytest.raises(ValueError, match="older hf_sparse"):
        _check(folder)
    folder = _checkpoint(tmp_path / "stray")
    (folder / binding.SHARDS_DIR / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="not a rank folder"):
        _check(folder)


def test_inspect_runs_the_header_part_on_a_full_state_dict_checkpoint(tmp_path, capsys):
    """A FULL_STATE_DICT checkpoint holds the whole model too: ``inspect`` refuses rank states of another save."""
    from helpers import tiny_bert
    from export_helpers import prune
    from hf_sparse.training.checkpoint import save_checkpoint

    model = tiny_bert()
    masks = prune(model, 0.5)
    folder = tmp_path / "full"
    state = {**STATE, "masks": masks}
    save_checkpoint(str(folder), lambda staging: model.save_pretrained(staging), state, None, save_id="a" * 32)
    _checkpoint(folder)
    assert main(["inspect", str(folder)]) == 0
    shutil.rmtree(folder / binding.SHARDS_DIR)
    _checkpoint(folder, save_id="b" * 32)
    capsys.readouterr()
    assert main(["inspect", str(folder)]) == 2
    assert "not from the same save" in capsys.readouterr().err
