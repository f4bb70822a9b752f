"""SparseTrainer under FSDP2 on 2 CPU ranks (one launch of tests/scripts/fsdp_train.py; ~1-2 min here)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tests/
ROOT = os.path.dirname(HERE)
SCENARIOS = ["gmp_uniform", "gmp_global", "gmp_2of4", "rigl_global", "set_erk", "dst_ee_uniform"]


@pytest.fixture(scope="module")
def fsdp_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    # torch.distributed.run (accelerate launch cannot start FSDP2 on CPU ranks), own session so a timeout
    # kills both ranks, one thread per rank.
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        os.path.join(HERE, "scripts", "fsdp_train.py"), str(out),
    ]  # fmt: skip
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"FSDP2 launch timed out:\n{stdout[-2000:]}\n{stderr[-4000:]}")
    assert proc.returncode == 0, f"launch failed:\n{stdout[-3000:]}\n{stderr[-6000:]}"
    with open(out / "results.json", encoding="utf-8") as handle:
        return json.load(handle)


pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


def test_two_ranks_fsdp2_sharded(fsdp_results):
    assert fsdp_results["world_size"] == 2
    for name in SCENARIOS:
        result = fsdp_results[name]
        assert result["is_fsdp2"] and result["sharded_params"], name
        assert result["local_masks"], f"{name}: a rank keeps full-size masks"


@pytest.mark.parametrize("name", SCENARIOS)
def test_exact_zeros_and_clean_optimizer_state_after_every_step(fsdp_results, name):
    steps = fsdp_results[name]["steps"]
    assert [s["step"] for s in steps] == list(range(1, 9))
    assert all(s["zeros"] for s in steps), [s for s in steps if not s["zeros"]]
    assert all(s["moments"] for s in steps), [s for s in steps if not s["moments"]]


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_update_equals_the_unsharded_engine(fsdp_results, name):
    updates = fsdp_results[name]["updates"]
    assert len(updates) >= 5 and sum(u["changed"] for u in updates) >= 2, updates
    assert all(u["equal"] for u in updates), [u for u in updates if not u["equal"]]


def test_target_sparsity_reached(fsdp_results):
    for name in ("gmp_uniform", "gmp_global", "rigl_global", "set_erk", "dst_ee_uniform"):
        assert abs(fsdp_results[name]["sparsity"] - 0.8) < 1e-3, name
    assert abs(fsdp_results["gmp_2of4"]["sparsity"] - 0.5) < 1e-9


def test_full_state_dict_checkpoint_holds_whole_masks_and_rank_masks(fsdp_results):
    files = fsdp_results["full_checkpoint_files"]
    assert {"model.safetensors", "sparse_masks.safetensors", "sparsity_state.safetensors", "hf_sparse_shards"} <= set(files)


def test_resume_from_sharded_checkpoint_is_bitwise_equal(fsdp_results):
    resume = fsdp_results["resume"]
    assert resume["rank_files"] == ["rank-00000-of-00002", "rank-00001-of-00002"]
    assert resume["updates_after_checkpoint"] >= 1  # the resumed part really updated masks
    assert resume["masks_equal"] and resume["weights_equal"]


def test_save_model_with_sharded_state_dict_loads_plainly_and_with_load_sparse(fsdp_results):
    saved = fsdp_results["saved"]
    assert {"model.safetensors", "sparse_masks.safetensors", "sparsity_state.safetensors"} <= set(saved["files"])
    assert saved["plain_weights_equal"] and saved["plain_zeros"]
    assert saved["load_sparse_masks_equal"] and saved["load_sparse_weights_equal"]
