"""examples/glue: offline GLUE metrics, argument parsing, tiny end-to-end runs, 2-rank launch."""

from __future__ import annotations

import csv
import functools
import importlib.util
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

import hf_sparse
from hf_sparse import SparsityConfig, apply_recipe, recommend_schedule_scale

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GLUE_DIR = os.path.join(ROOT, "examples", "glue")
RUN_PY = os.path.join(GLUE_DIR, "run.py")


def _load(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


sys.path.insert(0, GLUE_DIR)
glue_tasks = _load("glue_tasks", os.path.join(GLUE_DIR, "glue_tasks.py"))
run = _load("glue_run", RUN_PY)


# -- metrics: the standard GLUE definitions, checked against hand-computed values -------------------
def test_matthews_hand_computed():
    # labels [0,1,1,0], preds [0,1,0,0]: TP=1 TN=2 FP=0 FN=1 -> (1*2-0*1)/sqrt(1*2*3*2) = 2/sqrt(12)
    out = glue_tasks.matthews(np.array([0, 1, 0, 0]), np.array([0, 1, 1, 0]))
    assert out["matthews_correlation"] == pytest.approx(2 / np.sqrt(12))
    assert out["matthews_correlation"] == pytest.approx(0.5774, abs=1e-4)


def test_pearson_spearman_hand_computed():
    preds, labels = np.array([0.1, 1.2, 2.9, 4.0]), np.array([0.0, 1.0, 3.0, 5.0])
    out = glue_tasks.pearson_and_spearman(preds, labels)
    p, l = preds - preds.mean(), labels - labels.mean()
    assert out["pearson"] == pytest.approx((p * l).sum() / np.sqrt((p * p).sum() * (l * l).sum()))
    assert out["pearson"] == pytest.approx(0.99103, abs=1e-5)
    assert out["spearmanr"] == pytest.approx(1.0)  # same ranking
    swapped = glue_tasks.pearson_and_spearman(np.array([0.1, 2.9, 1.2, 4.0]), labels)
    assert swapped["spearmanr"] == pytest.approx(1 - 6 * 2 / (4 * 15))  # one adjacent swap: d^2 sum 2


def test_accuracy_f1_hand_computed():
    preds, labels = np.array([1, 1, 0, 0, 1]), np.array([1, 0, 0, 1, 1])
    out = glue_tasks.accuracy_and_f1(preds, labels)
    # TP=2 FP=1 FN=1: precision 2/3, recall 2/3 -> F1 2/3; 3 of 5 right
    assert out == pytest.approx({"accuracy": 0.6, "f1": 2 / 3})
    # F1 is of the positive class 1, not class 0 (class 0 here: TP=1 FP=1 FN=1 -> 1/2)
    assert out["f1"] != pytest.approx(0.5)


def test_compute_metrics_from_logits_and_regression():
    class Pred:
        def __init__(self, predictions, label_ids):
            self.predictions, self.label_ids = predictions, label_ids

    logits = np.array([[2.0, 0.1], [0.0, 3.0], [1.0, 0.5], [0.2, 0.1]])
    out = glue_tasks.make_compute_metrics(glue_tasks.get_task("mrpc"))(Pred(logits, np.array([0, 1, 1, 0])))
    assert out["accuracy"] == pytest.approx(0.75)  # argmax -> [0,1,0,0]
    assert out["f1"] == pytest.approx(2 / 3)  # TP=1 FN=1 FP=0
    assert out["combined_score"] == pytest.approx((0.75 + 2 / 3) / 2)
    scores = np.array([[0.1], [1.2], [2.9], [4.0]])
    out = glue_tasks.make_compute_metrics(glue_tasks.get_task("stsb"))(Pred(scores, np.array([0.0, 1, 3, 5])))
    assert out["pearson"] == pytest.approx(0.99103, abs=1e-5)


def test_all_nine_tasks():
    expected = {"cola": 2, "sst2": 2, "mrpc": 2, "qqp": 2, "stsb": 1, "mnli": 3, "qnli": 2, "rte": 2, "wnli": 2}
    assert {k: t.num_labels for k, t in glue_tasks.GLUE_TASKS.items()} == expected
    assert glue_tasks.get_task("MNLI").eval_splits == ("validation_matched", "validation_mismatched")
    assert glue_tasks.get_task("stsb").is_regression and not glue_tasks.get_task("cola").is_regression
    with pytest.raises(ValueError, match="unknown task_name 'glu'.*cola"):
        glue_tasks.get_task("glu")


# -- argument parsing --------------------------------------------------------------------------------
def test_flags_become_sparsity_config(tmp_path):
    model_args, data_args, training_args, _, sparsity_args = run.parse_args(
        ["--output_dir", str(tmp_path), "--sparsity", "0.8", "--method", "oneshot", "--allocation", "erk",
         "--sparsity_seed", "7", "--seed", "3", "--targets", "query", "key", "--start", "20", "--task_name", "rte"]
    )
    config = sparsity_args.to_sparsity_config()
    assert (config.sparsity, config.method, config.allocation, config.seed) == (0.8, "oneshot", "erk", 7)
    assert config.targets == ["query", "key"] and config.start == 20 and isinstance(config.start, int)
    assert training_args.seed == 3 and data_args.task_name == "rte"
    assert training_args.do_train and training_args.per_device_train_batch_size == 32  # script defaults
    # not given -> SparsityConfig defaults: the sparse-aware recipe
    assert sparsity_args.teacher() == "auto"  # the script's default: a dense teacher trained first
    default = run.SparsityArguments().to_sparsity_config()
    assert default.to_dict() == apply_recipe(SparsityConfig()).to_dict()
    assert default.recipe == "auto" and default.allocation == "global" and default.update_every is None


def test_the_dense_run_keeps_the_scripts_epochs(tmp_path):
    """--sparsity 0 is the dense run the teacher auto trains: no recipe, no longer schedule (a bug once doubled it)."""
    def scale(*flags):
        sparsity_args = run.parse_args(["--output_dir", str(tmp_path), *flags])[-1]
        return sparsity_args.to_sparsity_config().schedule_scale

    assert scale("--sparsity", "0") == 1.0 and scale("--sparsity", "0.0") == 1.0
    assert scale() == recommend_schedule_scale(0.9) == scale("--sparsity", "0.9") == 3.0
    assert scale("--sparsity", "0.9", "--schedule_scale", "2") == 2.0


def test_json_args_file_and_sparsity_config_file(tmp_path):
    sc = tmp_path / "sc.json"
    SparsityConfig(method="gmp", sparsity=0.7, allocation="global", update_every=3).to_json_file(sc)
    args = tmp_path / "args.json"
    args.write_text(json.dumps({
        "output_dir": str(tmp_path / "out"), "learning_rate": 1e-3, "sparsity_config": str(sc),
        "allocation": "erk", "method_args": {}, "max_train_samples": 5, "do_eval": False,
    }))
    _, data_args, training_args, _, sparsity_args = run.parse_args([str(args)])
    config = sparsity_args.to_sparsity_config()
    # the file's fields, with the JSON's explicit 'allocation' on top
    assert (config.sparsity, config.update_every, config.allocation) == (0.7, 3, "erk")
    assert training_args.learning_rate == 1e-3 and not training_args.do_eval and data_args.max_train_samples == 5
    args.write_text(json.dumps({"output_dir": str(tmp_path), "sparsty": 0.5}))
    with pytest.raises(ValueError, match="sparsty"):
        run.parse_args([str(args)])


def test_preset(tmp_path, monkeypatch):
    sparsity_args = run.parse_args(["--output_dir", str(tmp_path), "--preset", "p", "--sparsity", "0.6"])[-1]
    calls = []

    def fake_from_preset(name, **overrides):
        calls.append((name, overrides))
        return SparsityConfig(**overrides)

    monkeypatch.setattr(SparsityConfig, "from_preset", staticmethod(fake_from_preset), raising=False)
    assert sparsity_args.to_sparsity_config().sparsity == 0.6
    assert calls == [("p", {"sparsity": 0.6})]
    sparsity_args.sparsity_config = "x.json"
    with pytest.raises(ValueError, match="either --preset or --sparsity_config"):
        sparsity_args.to_sparsity_config()


# -- tiny end-to-end runs ----------------------------------------------------------------------------
def _tiny_model_dir(root, num_labels=2, words=()):
    """A tiny BERT + a word-level tokenizer saved to a local folder (no downloads)."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    path = os.path.join(root, f"tiny-bert-{num_labels}")
    os.makedirs(path, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(words))
    with open(os.path.join(path, "vocab.txt"), "w") as handle:
        handle.write("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=os.path.join(path, "vocab.txt")).save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=num_labels)
    BertForSequenceClassification(config).save_pretrained(path)
    return path


WORDS = "good bad great awful fine dull fun boring film plot actors story".split()


def _write_rows(path, header, rows, delimiter=","):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("glue"))
    rng = random.Random(0)
    rows = [[" ".join(rng.choice(WORDS) for _ in range(6)), rng.randint(0, 1)] for _ in range(48)]
    _write_rows(os.path.join(root, "train.csv"), ["sentence", "label"], rows[:32])
    _write_rows(os.path.join(root, "dev.csv"), ["sentence", "label"], rows[32:])
    _write_rows(os.path.join(root, "ones.csv"), ["sentence1", "sentence2", "label"], [[r[0], r[0], 1] for r in rows[:8]])
    pairs = [[" ".join(rng.choice(WORDS) for _ in range(4)), " ".join(rng.choice(WORDS) for _ in range(4)),
              round(rng.uniform(0, 5), 2)] for _ in range(24)]
    _write_rows(os.path.join(root, "sts.tsv"), ["sentence1", "sentence2", "label"], pairs, delimiter="\t")
    return {"root": root, "model": _tiny_model_dir(root, 2, WORDS), "model3": _tiny_model_dir(root, 3, WORDS)}


def base_args(tiny, out):
    return [
        "--model_name_or_path", tiny["model"], "--train_file", os.path.join(tiny["root"], "train.csv"),
        "--validation_file", os.path.join(tiny["root"], "dev.csv"), "--output_dir", str(out),
        "--max_steps", "10", "--per_device_train_batch_size", "4", "--learning_rate", "1e-3",
        "--logging_steps", "5", "--use_cpu", "--disable_tqdm", "True", "--max_seq_length", "16",
        "--dataloader_num_workers", "0",
    ]


# The script's defaults (recipe auto, a dense teacher trained first) are tested on their own below; the
# other tests check the script's mechanics on exactly the steps they ask for.
MECHANICS = ("--recipe", "none", "--teacher_model_name_or_path", "none")


def tiny_args(tiny, out, *extra):
    mechanics = MECHANICS if not any(a in extra for a in ("--recipe", "--teacher_model_name_or_path")) else ()
    return [*base_args(tiny, out), "--sparsity", "0.75", "--update_every", "2", "--end", "0.6", *mechanics, *extra]


def test_end_to_end_tiny(tiny, tmp_path):
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "run"
    results = run.main(tiny_args(tiny, out))
    assert results["final_sparsity"] == pytest.approx(0.75, abs=0.01)
    assert 0.0 <= results["eval_accuracy"] <= 1.0 and results["train_samples"] == 32
    for name in ("sparsity_config.json", "sparsity_state.safetensors", "sparse_masks.safetensors", "model.safetensors",
                 "README.md", "eval_results.json", "sparsity_report.json", "tokenizer.json"):
        assert (out / name).is_file(), name
    assert SparsityConfig.from_pretrained(str(out)).sparsity == 0.75
    report = json.loads((out / "sparsity_report.json").read_text())
    assert report["layers"] and all(abs(r["sparsity"] - 0.75) < 0.02 for r in report["layers"].values())
    reloaded = AutoModelForSequenceClassification.from_pretrained(str(out))
    assert hf_sparse.sparsity_report(reloaded)["sparsity"] == pytest.approx(results["final_sparsity"])
    assert "accuracy" in (out / "README.md").read_text().lower()


@pytest.mark.filterwarnings("ignore:An input array is constant")  # a 4-step tiny regressor
def test_regression_task_with_local_tsv(tiny, tmp_path):
    sts = os.path.join(tiny["root"], "sts.tsv")
    results = run.main(tiny_args(tiny, tmp_path, "--task_name", "stsb", "--train_file", sts, "--validation_file", sts,
                                 "--max_steps", "4", "--sparsity", "0.5", "--ignore_mismatched_sizes"))
    assert {"eval_pearson", "eval_spearmanr", "eval_combined_score"} <= set(results)
    assert results["final_sparsity"] == pytest.approx(0.5, abs=0.01)


def test_glue_task_in_local_file_keeps_label_ids(tiny, tmp_path):
    """rte from a file holding only label 1: ids stay GLUE's (0, 1), not remapped to a single class."""
    ones = os.path.join(tiny["root"], "ones.csv")
    run.main(tiny_args(tiny, tmp_path, "--task_name", "rte", "--train_file", ones, "--validation_file", ones,
                       "--max_steps", "2"))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["label2id"] == {"0": 0, "1": 1} and config["id2label"] == {"0": "0", "1": "1"}


def test_clear_errors(tiny, tmp_path):
    with pytest.raises(ValueError, match="unknown task_name 'sst3'"):
        run.main(tiny_args(tiny, tmp_path, "--task_name", "sst3"))
    with pytest.raises(ValueError, match=r"column\(s\) \['question'\] not in"):
        run.main(tiny_args(tiny, tmp_path, "--text_columns", "question"))
    with pytest.raises(ValueError, match="label column 'gold' not in"):
        run.main(tiny_args(tiny, tmp_path, "--label_column", "gold"))
    with pytest.raises(ValueError, match="does not fit this task's 2 label"):
        run.main(tiny_args(tiny, tmp_path, "--model_name_or_path", tiny["model3"]))


def test_teacher(tiny, tmp_path):
    """A teacher folder: trains with it; a teacher with the wrong head: a clear error before training."""
    args = tiny_args(tiny, tmp_path, "--teacher_model_name_or_path", tiny["model"], "--max_steps", "2",
                     "--distillation_args", '{"temperature": 3.0}', "--recipe", "none")
    captured = {}
    original = hf_sparse.SparseTrainer.__init__

    @functools.wraps(original)  # keeps the signature run.py inspects
    def spy(self, *a, **kw):
        captured.update(kw)
        original(self, *a, **kw)

    import unittest.mock

    with unittest.mock.patch.object(hf_sparse.SparseTrainer, "__init__", spy):
        results = run.main(args)
    assert captured["distillation"].temperature == 3.0 and captured["teacher_model"] is not None
    assert results["final_sparsity"] > 0
    with pytest.raises(ValueError, match="teacher .* has 3 outputs, the task needs 2"):
        run.main(tiny_args(tiny, tmp_path, "--teacher_model_name_or_path", tiny["model3"]))


def test_defaults_train_a_dense_teacher_then_prune_a_copy_of_it(tiny, tmp_path, capsys):
    """No recipe/teacher flags: the dense run first (saved, evaluated), then its pruned copy distils from it."""
    out = tmp_path / "run"
    results = run.main([*base_args(tiny, out), "--sparsity", "0.75"])
    dense_dir = out / "dense_teacher"
    assert (dense_dir / "model.safetensors").is_file() and "dense_eval_accuracy" in results
    assert results["final_sparsity"] == pytest.approx(0.75, abs=0.01)
    printed = capsys.readouterr().out
    assert f"dense {results['dense_eval_accuracy']:.4f}" in printed and "points" in printed
    state = json.loads((out / "trainer_state.json").read_text())
    recipe = next(e for e in state["log_history"] if "recipe" in e)
    assert recipe["recipe"] == "auto" and any("max_steps 10 -> 20" in line for line in recipe["recipe_changes"])
    assert SparsityConfig.from_pretrained(str(out)).allocation == "global"
    # the student started from the fine-tuned dense weights: its kept weights stay close to the teacher's
    from transformers import AutoModelForSequenceClassification

    teacher = dict(AutoModelForSequenceClassification.from_pretrained(str(dense_dir)).named_parameters())
    student = dict(AutoModelForSequenceClassification.from_pretrained(str(out)).named_parameters())
    start = dict(AutoModelForSequenceClassification.from_pretrained(tiny["model"]).named_parameters())
    name = "classifier.weight"  # never pruned; trained by both runs
    assert (student[name] - teacher[name]).norm() < (student[name] - start[name]).norm()


def test_sparse_trainer_refuses_fsdp1(monkeypatch, bert, tmp_path):
    import transformers

    original = transformers.Trainer.__init__

    def fsdp_init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.is_fsdp_enabled = True  # what Trainer sets when accelerate has an FSDP plugin (here not FSDP2)

    monkeypatch.setattr(transformers.Trainer, "__init__", fsdp_init)
    from helpers import training_args

    with pytest.raises(ValueError, match="supports FSDP2 only"):
        hf_sparse.SparseTrainer(model=bert, args=training_args(tmp_path), sparsity_config=SparsityConfig())


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_ranks_identical_masks(tiny, tmp_path):
    """accelerate launch, 2 CPU ranks over gloo: same masks on both ranks, same sparsity as 1 process."""
    digest = str(tmp_path / "digest-{rank}.json")
    args = tiny_args(tiny, tmp_path / "ddp", "--mask_digest_file", digest, "--per_device_train_batch_size", "2",
                     "--ddp_find_unused_parameters", "False", "--max_steps", "6", "--update_every", "1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", "29517", RUN_PY, *args]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"digest-{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["rank"] for r in ranks] == [0, 1]
    assert ranks[0]["digest"] == ranks[1]["digest"] and all(r["masks_equal_across_ranks"] for r in ranks)
    single_args = tiny_args(tiny, tmp_path / "single", "--per_device_train_batch_size", "4",
                            "--max_steps", "6", "--update_every", "1")
    single = run.main(single_args)
    assert ranks[0]["final_sparsity"] == pytest.approx(single["final_sparsity"], abs=1e-9)
    assert single["final_sparsity"] == pytest.approx(0.75, abs=0.01)


@pytest.mark.slow
def test_offline_default_truncated(tmp_path):
    """No data/model flags: packaged all-MiniLM-L6-v2 on the bundled Rotten Tomatoes sample (2 steps only)."""
    results = run.main(["--output_dir", str(tmp_path), "--max_steps", "2", "--per_device_train_batch_size", "4",
                        "--max_eval_samples", "16", "--use_cpu", "--disable_tqdm", "True", "--start", "1",
                        "--end", "2", "--update_every", "1"])
    assert results["train_samples"] == run.OFFLINE_DEFAULT_MAX_TRAIN_SAMPLES and results["eval_samples"] == 16
    assert "dense_eval_accuracy" in results  # the dense teacher trained first
    assert results["final_sparsity"] == pytest.approx(0.9, abs=0.005)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["hidden_size"] == 384 and config["num_hidden_layers"] == 6  # the real MiniLM
    assert "Rotten Tomatoes" in (tmp_path / "README.md").read_text()
