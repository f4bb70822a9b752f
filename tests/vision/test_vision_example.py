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
    config = run.sparsity_config_from(sparsity_args)
    assert (config.method, config.sparsity, config.seed, config.method_args) == ("cyclic", 0.95, 3, {"cycles": 1})
    assert training_args.seed == 7 and model_args.model_name_or_path == "resnet_tiny"
    with pytest.raises(ValueError, match="method_args"):
        run.sparsity_config_from(run.parse_args(["--output_dir", "x", "--method_args", "{bad"])[3])


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
