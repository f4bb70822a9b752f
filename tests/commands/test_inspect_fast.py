"""``inspect`` answers from headers and masks: the same table as the full verification, for every
layout, without importing transformers' modeling code or torch (checked in a fresh process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.filterwarnings("ignore:compressed-tensors layout")

import hf_sparse
from hf_sparse.__main__ import main
from hf_sparse.io.load import describe
from hf_sparse.reporting import folder_summary
from hf_sparse.reporting.folder_summary import summarize_folder

from helpers import tiny_bert

ROW_KEYS = ("shape", "numel", "kept", "nonzero", "sparsity", "encoding")


def _folder(tmp_path, layout: str, pattern: str = "unstructured"):
    model = tiny_bert()
    hf_sparse.prune(model, 0.9 if pattern == "unstructured" else None, pattern=pattern)
    path = tmp_path / layout.replace(":", "")
    if layout == "plain":
        model.save_pretrained(path)
    elif layout == "sharded":
        hf_sparse.save_sparse(model, path, max_shard_size="100KB")
    else:
        compressed = {"dense": False, "native": True, "ct": "compressed-tensors", "ct24": "compressed-tensors"}[layout]
        hf_sparse.save_sparse(model, path, compressed=compressed)
    return str(path)


@pytest.mark.parametrize("layout, pattern", [
    ("dense", "unstructured"), ("native", "unstructured"), ("ct", "unstructured"), ("plain", "unstructured"),
    ("sharded", "unstructured"), ("native", "2:4"),
])
def test_fast_summary_equals_the_verified_description(tmp_path, layout, pattern):
    path = _folder(tmp_path, layout, pattern)
    fast, full = summarize_folder(path), describe(path)
    for key in ("format", "subformat", "format_version", "files", "masks_source", "sparsity_config"):
        assert fast[key] == full[key], key
    assert fast["sparsity"] == pytest.approx(full["sparsity"])
    assert list(fast["layers"]) == list(full["layers"]) or set(fast["layers"]) == set(full["layers"])
    for name, row in full["layers"].items():
        assert {k: fast["layers"][name][k] for k in ROW_KEYS} == {k: row[k] for k in ROW_KEYS}, name
    assert 0.85 < fast["sparsity"] < 0.95 or pattern == "2:4"


def test_the_ignore_list_read_from_source_matches_the_targets_module():
    from hf_sparse.core.targets import DEFAULT_IGNORE

    assert folder_summary.default_ignore() == list(DEFAULT_IGNORE)


def test_mixed_saves_and_lost_config_are_refused(tmp_path):
    path = _folder(tmp_path, "ct")
    config = json.loads(open(os.path.join(path, "config.json")).read())
    config.pop("quantization_config")
    open(os.path.join(path, "config.json"), "w").write(json.dumps(config))
    with pytest.raises(ValueError, match="quantization_config"):
        summarize_folder(path)
    other = _folder(tmp_path, "dense")
    os.replace(os.path.join(_folder(tmp_path / "b", "dense"), "sparse_masks.safetensors"), os.path.join(other, "sparse_masks.safetensors"))
    with pytest.raises(ValueError, match="different saves"):
        summarize_folder(other)
    assert main(["inspect", other]) == 2


def test_verify_flag_runs_the_full_check(tmp_path, capsys):
    path = _folder(tmp_path, "native")
    assert main(["inspect", "--json", "--verify", path]) == 0
    assert json.loads(capsys.readouterr().out)["verified"] is True
    assert main(["inspect", path]) == 0
    assert "--verify" in capsys.readouterr().out


# Runs ``python -m hf_sparse inspect DIR`` in a fresh process (runpy, as -m does) and reports which
# heavy modules it loaded and how long it took.
SCRIPT = r"""
import json, runpy, sys, time
start = time.perf_counter()
sys.argv = ["hf_sparse", "inspect", sys.argv[1]]
try:
    runpy.run_module("hf_sparse", run_name="__main__", alter_sys=True)
except SystemExit as stop:
    assert stop.code in (0, None), stop.code
seconds = time.perf_counter() - start
heavy = sorted(m for m in sys.modules if m == "torch" or m.startswith("transformers.models.") or m == "transformers.modeling_utils")
print("RESULT " + json.dumps({"heavy": heavy, "seconds": seconds}))
"""


@pytest.mark.parametrize("layout", ["dense", "native", "ct", "plain"])
def test_inspect_needs_neither_torch_nor_transformers_modeling(tmp_path, layout):
    path = _folder(tmp_path, layout)
    root = os.path.dirname(os.path.dirname(hf_sparse.__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", SCRIPT, path], capture_output=True, text=True, env=env, timeout=300)
    wall = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-2000:]
    assert "total" in done.stdout
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert result["heavy"] == [], result["heavy"]
    print(f"inspect {layout}: {result['seconds']:.2f} s in process, {wall:.2f} s with interpreter start (not asserted)")


@pytest.mark.parametrize("block", ['"sparse-bitmask"', "[1, 2]"])
def test_a_sparsity_config_that_is_not_an_object_is_a_clear_error(tmp_path, block, capsys):
    """inspect names the file and the field, as load_sparse does, instead of an AttributeError."""
    path = _folder(tmp_path, "ct")
    config_path = os.path.join(path, "config.json")
    text = json.dumps({**json.load(open(config_path)), "quantization_config": {"quant_method": "compressed-tensors",
                                                                               "sparsity_config": json.loads(block)}})
    open(config_path, "w").write(text)
    with pytest.raises(ValueError, match=r"config\.json: quantization_config\.sparsity_config must be a JSON object"):
        summarize_folder(path)
    assert main(["inspect", path]) == 2
