"""examples/causal_lm/run.py end to end on a tiny Llama saved to a folder (the Hub path, offline)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "examples", "causal_lm", "run.py")
TEXT = os.path.join(ROOT, "examples", "causal_lm", "data", "hamlet_train.txt")


def load_script():
    spec = importlib.util.spec_from_file_location("causal_lm_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_llama_folder(tmp_path_factory):
    """A tiny Llama and a byte-level BPE tokenizer trained here on the bundled text."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_llama")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    with open(TEXT, encoding="utf-8") as f:
        lines = f.read().splitlines()[:2000]
    tok.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                 eos_token_id=0, bos_token_id=0, pad_token_id=0)).save_pretrained(folder)
    return str(folder)


def test_prunes_recovers_and_reports_three_perplexities(tiny_llama_folder, tmp_path):
    out = tmp_path / "out"
    results = load_script().main([
        "--model_name_or_path", tiny_llama_folder, "--output_dir", str(out), "--block_size", "32",
        "--max_train_samples", "64", "--max_eval_samples", "16", "--calibration_samples", "8",
        "--max_steps", "4", "--per_device_train_batch_size", "4", "--pattern", "2:4", "--oneshot_method", "wanda",
        "--use_cpu", "true", "--distillation_args", '{"temperature": 1.0, "hidden_states_weight": 0.1}',
    ])
    for key in ("dense_perplexity", "oneshot_perplexity", "recovered_perplexity"):
        assert math.isfinite(results[key]) and results[key] > 1, results
    assert results["oneshot_perplexity"] != results["dense_perplexity"]
    assert results["recovered_perplexity"] != results["oneshot_perplexity"]
    assert abs(results["final_sparsity"] - 0.5) < 1e-6
    assert {"perplexity.json", "perplexity.png", "README.md", "sparsity_config.json"} <= set(os.listdir(out))
    assert json.loads((out / "perplexity.json").read_text())["pattern"] == "2:4"

    import hf_sparse
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(out)
    report = hf_sparse.sparsity_report(reloaded)
    assert abs(report["sparsity"] - 0.5) < 1e-6
    weight = reloaded.model.layers[0].self_attn.q_proj.weight
    assert torch.equal((weight.view(-1, 4) != 0).sum(1), torch.full((weight.numel() // 4,), 2))


def test_one_shot_only_and_no_teacher(tiny_llama_folder, tmp_path):
    results = load_script().main([
        "--model_name_or_path", tiny_llama_folder, "--output_dir", str(tmp_path), "--block_size", "32",
        "--max_train_samples", "16", "--max_eval_samples", "8", "--calibration_samples", "4", "--max_steps", "0",
        "--oneshot_method", "sparsegpt", "--teacher_model_name_or_path", "none", "--use_cpu", "true",
    ])
    assert "recovered_perplexity" not in results and results["teacher"] is None
    assert math.isfinite(results["oneshot_perplexity"])


@pytest.mark.slow
@pytest.mark.multiprocess
def test_accelerate_launch_with_two_processes(tiny_llama_folder, tmp_path):
    import socket
    import subprocess

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), CUDA_VISIBLE_DEVICES="",
               OMP_NUM_THREADS="1")
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port), SCRIPT,
        "--model_name_or_path", tiny_llama_folder, "--output_dir", str(tmp_path), "--block_size", "32",
        "--max_train_samples", "32", "--max_eval_samples", "8", "--calibration_samples", "8", "--max_steps", "2",
        "--use_cpu", "true", "--ddp_find_unused_parameters", "false",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "perplexity.json").read_text())
    assert results["world_size"] == 2
    assert math.isfinite(results["recovered_perplexity"]) and abs(results["final_sparsity"] - 0.5) < 1e-6
