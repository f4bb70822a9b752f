"""The command line stays light: ``--help`` imports no torch/transformers, ``inspect DIR`` neither the
Trainer nor peft; ``hf_sparse``'s public names load lazily but behave as eager imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import hf_sparse
from hf_sparse import save_sparse

from helpers import tiny_bert

# Runs ``python -m hf_sparse ARGS`` in-process (runpy, as -m does) and records which heavy modules
# each command left in sys.modules.
SCRIPT = r"""
import json, runpy, sys
heavy = ("torch", "transformers", "transformers.trainer", "peft")
seen = {}
for label, argv in (("help", ["--help"]), ("inspect", ["inspect", sys.argv[1]])):
    sys.argv = ["hf_sparse"] + argv
    try:
        runpy.run_module("hf_sparse", run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        assert stop.code in (0, None), (label, stop.code)
    seen[label] = sorted(m for m in heavy if m in sys.modules)
print("IMPORTED " + json.dumps(seen))
"""


def test_help_and_inspect_do_not_import_the_trainer_or_peft(tmp_path):
    save_sparse(tiny_bert(), str(tmp_path / "model"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(hf_sparse.__file__)), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "model")], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage: python -m hf_sparse" in done.stdout and "inspect" in done.stdout
    assert "total" in done.stdout  # inspect printed its table
    seen = json.loads(done.stdout.split("IMPORTED ", 1)[1])
    assert seen["help"] == []  # --help reads the command list without importing any command
    assert "transformers.trainer" not in seen["inspect"] and "peft" not in seen["inspect"]


def test_lazy_public_api_behaves_like_eager_imports():
    from hf_sparse import SparsityConfig, report
    from hf_sparse.reporting import size_speed

    assert hf_sparse.report is report is size_speed.report and callable(report)  # the function, not a module
    assert SparsityConfig is hf_sparse.config.SparsityConfig
    assert hf_sparse.__all__ == sorted(hf_sparse.__all__) and set(hf_sparse.__all__) <= set(dir(hf_sparse))
    for name in hf_sparse.__all__:
        assert getattr(hf_sparse, name) is not None, name
    try:
        hf_sparse.no_such_name
    except AttributeError as err:
        assert "no_such_name" in str(err)
    else:
        raise AssertionError("unknown names must raise AttributeError")
