"""An FSDP2 checkpoint is one save: the Trainer's per-rank files (sharded model and optimizer, RNG
states), every rank's masks and state and the whole-model save carry or record one save id, and a
resume from a checkpoint with any of them copied from another checkpoint is refused on every rank,
naming the file (one launch of tests/scripts/fsdp_binding.py on 2 CPU ranks; ~2 min here)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tests/
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(HERE, "scripts"))

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp_binding")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               os.path.join(HERE, "scripts", "fsdp_binding.py"), str(out)]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"launch timed out:\n{stdout[-2000:]}\n{stderr[-4000:]}")
    assert proc.returncode == 0, f"launch failed:\n{stdout[-3000:]}\n{stderr[-6000:]}"
    with open(out / "results.json", encoding="utf-8") as handle:
        return json.load(handle)


def test_checkpoints_hold_the_trainer_files_and_rank_states(results):
    assert results["world_size"] == 2
    assert {"pytorch_model_fsdp_0", "optimizer_0", "hf_sparse_shards"} <= set(results["files SHARDED_STATE_DICT"])
    assert {"pytorch_model_fsdp.bin", "model.safetensors", "hf_sparse_shards"} <= set(results["files FULL_STATE_DICT"])


@pytest.mark.parametrize("name", [
    "model shard of rank 1", "model shard metadata", "optimizer shard of rank 0", "masks and state of rank 1",
    "masks of rank 1", "rng state of rank 1", "full model file", "masks and state of rank 1 (full)",
])
def test_a_file_of_another_checkpoint_is_refused_on_every_rank(results, name):
    """Old: only the rank's own masks were checked against its state; a model or optimizer shard, a rank's
    whole state folder or the rank-0 model file of checkpoint-8 copied into checkpoint-4 resumed silently."""
    result = results[name]
    assert result["refused"], result
    assert result["same_error_on_every_rank"], result
    named = os.path.basename(result["copied"]) if "." in os.path.basename(result["copied"]) else "rank-00001-of-00002"
    assert named in result["error"], result


@pytest.mark.parametrize("kind", ["SHARDED_STATE_DICT", "FULL_STATE_DICT"])
def test_the_untouched_checkpoint_resumes(results, kind):
    assert results[f"untouched {kind}"] == {"refused": False, "error": None, "step": 8}
