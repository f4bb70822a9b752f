"""Masks are bitwise identical on every rank (2 CPU ranks over gloo, one accelerate launch)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tests/
ROOT = os.path.dirname(HERE)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_masks")
    # accelerate 1.16: `--cpu --num_processes 2` starts ONE process; --multi_gpu on a machine
    # without GPUs starts 2 CPU ranks over gloo. CUDA is hidden so a GPU machine does the same.
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()),
        os.path.join(HERE, "scripts", "ddp_masks.py"), str(out),
    ]  # fmt: skip
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"launch failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    with open(out / "results.json", encoding="utf-8") as handle:
        return json.load(handle)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_ranks(ddp_results):
    assert ddp_results["world_size"] == 2


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("method", ["gmp", "set", "rigl", "dst_ee"])
def test_masks_equal_on_every_rank_after_every_update(ddp_results, method):
    result = ddp_results[method]
    assert result["checks"] and result["all_equal"], [c for c in result["checks"] if not c["equal"]]
    assert result["updates"] >= 3
    assert len(result["masks_changed_at"]) >= 2  # several real mask changes were compared


@pytest.mark.slow
@pytest.mark.multiprocess
def test_check_detects_rank_divergence_and_broadcast_repairs_it(ddp_results):
    assert not ddp_results["set_rank_seeds_unsynced"]["all_equal"]
    assert ddp_results["set_rank_seeds_synced"]["all_equal"]
