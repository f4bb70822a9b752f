"""examples/vision/run.py end to end on a slice of the offline digits data, then the pipeline."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load_example():
    spec = importlib.util.spec_from_file_location("vision_run", os.path.join(ROOT, "examples", "vision", "run.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def test_sparsity_flags_map_to_the_config():
    run = _load_example()
    model_args, data_args, training_args, sparsity_args = run.parse_args(
        ["--output_dir", "x", "--method", "cyclic", "--sparsity", "0.95", "--sparsity_seed", "3",
         "--method_args", '{"cycles": 1}', "--seed", "7"]
    )
    config = sparsity_args.to_sparsity_config()
    assert (config.method, config.sparsity, config.seed, config.method_args) == ("cyclic", 0.95, 3, {"cycles": 1})
    assert training_args.seed == 7 and model_args.model_name_or_path == "resnet_tiny"
    with pytest.raises(ValueError, match="method_args"):
        run.parse_args(["--output_dir", "x", "--method_args", "{bad"])[3].to_sparsity_config()


def test_offline_only_for_the_offline_default(tmp_path, monkeypatch):
    """A Hub model id or dataset name must not be blocked by offline switches; importing the example
    changes neither the environment nor sys.path (the package is installed)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    path_before = list(sys.path)
    run = _load_example()
    assert "HF_HUB_OFFLINE" not in os.environ and "HF_DATASETS_OFFLINE" not in os.environ
    assert sys.path == path_before
    both = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    assert run.offline_flags([]) == both
    assert run.offline_flags(["--model_name_or_path", "timm:resnet18", "--train_dir", str(tmp_path)]) == both
    assert run.offline_flags(["--model_name_or_path", str(tmp_path)]) == both  # a local folder
    assert run.offline_flags(["--model_name_or_path", "microsoft/resnet-18"]) == {"HF_DATASETS_OFFLINE": "1"}
    assert run.offline_flags(["--dataset_name", "cifar10"]) == {}
    assert run.offline_flags(["--dataset_name=uoft-cs/cifar10", "--output_dir", "x"]) == {}


@pytest.mark.slow
def test_example_trains_saves_and_serves(tmp_path):
    """transformers ResNet; timm is covered by tests/vision/test_vision_training.py (resnet18 is slow here)."""
    from transformers import pipeline

    run = _load_example()
    out = str(tmp_path / "out")
    extra = ["--method", "gmp", "--sparsity", "0.8", "--end", "0.5", "--update_every", "1"]
    metrics = run.main(
        ["--output_dir", out, "--model_name_or_path", "resnet_tiny", "--image_size", "16", "--max_train_samples", "48", "--max_eval_samples", "16",
         "--num_train_epochs", "1", "--per_device_train_batch_size", "16", "--disable_tqdm", "true",
         "--use_cpu", "true", *extra]
    )
    assert abs(metrics["mask_sparsity"] - 0.8) < 0.01 and "eval_accuracy" in metrics
    saved = json.load(open(os.path.join(out, "vision_results.json")))
    assert saved["world_size"] == 1
    run_digits = run.digits_dataset(0)
    classify = pipeline("image-classification", model=out, device="cpu")
    result = classify(run_digits[0]["image"])
    assert result[0]["label"] in [str(i) for i in range(10)]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_example_under_accelerate_launch_two_ranks(tmp_path):
    """Two CPU ranks (gloo) with EAST on: DyReLU at beta 0 and shared convs must not break DDP."""
    import subprocess

    out = str(tmp_path / "out")
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29467",
        os.path.join(ROOT, "examples", "vision", "run.py"), "--output_dir", out, "--use_cpu", "true",
        "--ddp_find_unused_parameters", "false", "--max_train_samples", "64", "--max_eval_samples", "16",
        "--num_train_epochs", "1", "--per_device_train_batch_size", "8", "--update_every", "2",
        "--disable_tqdm", "true", "--eval_strategy", "no",
    ]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.load(open(os.path.join(out, "vision_results.json")))
    assert metrics["world_size"] == 2
    assert abs(metrics["mask_sparsity"] - metrics["target_sparsity"]) < 1e-3
