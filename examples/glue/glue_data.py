"""Data for run.py: local files or GLUE from the Hub, their text/label columns, labels and tokenization.

Every check raises a ValueError naming the column, file or flag to change.
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

import datasets

from glue_tasks import GLUE_TASKS, GlueTask, get_task

DATA_EXTENSIONS = {"csv": "csv", "tsv": "csv", "json": "json", "jsonl": "json", "parquet": "parquet"}


def _file_format(path: str) -> tuple[str, dict]:
    extension = path.rsplit(".", 1)[-1].lower()
    if extension not in DATA_EXTENSIONS:
        raise ValueError(f"{path}: unsupported file type {extension!r}; use one of {sorted(DATA_EXTENSIONS)}")
    return DATA_EXTENSIONS[extension], ({"delimiter": "\t"} if extension == "tsv" else {})


def load_raw_datasets(files: dict[str, str], task_name: Optional[str], cache_dir: Optional[str] = None,
                      token: Optional[str] = None) -> datasets.DatasetDict:
    """Local files (``{"train": path, "validation": path}``) when given, else GLUE ``task_name`` from the Hub."""
    if files:
        formats = {(builder, tuple(options.items())) for builder, options in map(_file_format, files.values())}
        if len(formats) > 1:
            raise ValueError(f"train and validation files must have the same format, got {sorted(files.values())}")
        builder, options = _file_format(next(iter(files.values())))
        for path in files.values():
            if not os.path.isfile(path):
                raise FileNotFoundError(f"data file not found: {path}")
        return datasets.load_dataset(builder, data_files=files, cache_dir=cache_dir, **options)
    task = get_task(task_name)
    try:
        return datasets.load_dataset("nyu-mll/glue", task.name, cache_dir=cache_dir, token=token)
    except Exception as err:  # offline, or the Hub is unreachable
        raise RuntimeError(
            f"could not load GLUE {task.name!r} from the Hub ({type(err).__name__}: {err}). Offline, pass "
            "--train_file/--validation_file with the task's columns "
            f"({', '.join(c for c in task.text_columns if c)}, label)"
        ) from err


def resolve_text_columns(columns: list[str], given: Optional[list[str]], task: Optional[GlueTask]) -> list[str]:
    """Explicit --text_columns, else the task's, else a GLUE-like pair or single column found in the data."""
    if given:
        if not 1 <= len(given) <= 2:
            raise ValueError(f"--text_columns takes one or two column names, got {given}")
        return list(given)
    if task is not None:
        return [c for c in task.text_columns if c]
    candidates = [[c for c in t.text_columns if c] for t in GLUE_TASKS.values()] + [["text"]]
    wanted = next((pair for pair in candidates if all(c in columns for c in pair)), None)
    if wanted is None:
        raise ValueError(f"cannot tell which columns hold the text (columns: {columns}); pass --text_columns NAME [NAME2]")
    return wanted


def check_columns(raw: datasets.DatasetDict, wanted: list[str]) -> None:
    for split, dataset in raw.items():
        missing = [c for c in wanted if c not in dataset.column_names]
        if missing:
            raise ValueError(
                f"column(s) {missing} not in the {split} data (columns: {dataset.column_names}); "
                "pass --text_columns/--label_column"
            )


@dataclass
class Labels:
    """What the labels are: a regression score, or classes (names in id order)."""

    regression: bool
    names: Optional[list]  # None for regression
    num_labels: int
    to_id: Optional[dict]  # raw value -> id, when the column is not a ClassLabel


def resolve_labels(reference: datasets.Dataset, label_column: str, task: Optional[GlueTask]) -> Labels:
    """Regression or classes, from the task or the data; GLUE ids in a local file keep their meaning."""
    if label_column not in reference.column_names:
        raise ValueError(f"label column {label_column!r} not in the data (columns: {reference.column_names}); pass --label_column")
    feature = reference.features[label_column]
    regression = task.is_regression if task else getattr(feature, "dtype", None) in ("float32", "float64")
    if regression:
        return Labels(True, None, 1, None)
    if isinstance(feature, datasets.ClassLabel):
        return Labels(False, list(feature.names), feature.num_classes, None)
    names = sorted(set(reference.unique(label_column)))
    if task is not None and all(isinstance(v, numbers.Integral) for v in names):
        # GLUE ids in a local file: keep them as they are, even if a class is absent from the sample
        if names and (min(names) < 0 or max(names) >= task.num_labels):
            raise ValueError(f"{task.name} labels are 0..{task.num_labels - 1}; the data has {names}")
        names = list(range(task.num_labels))
    elif task is not None and len(names) > task.num_labels:
        raise ValueError(f"{task.name} has {task.num_labels} labels but the data has {len(names)}: {names}")
    num_labels = task.num_labels if task is not None else len(names)
    if num_labels < 2:
        raise ValueError(f"classification needs at least 2 labels, the training data has {names}")
    return Labels(False, names, num_labels, {label: i for i, label in enumerate(names)})


def make_preprocess(tokenizer: Any, text_columns: list[str], label_column: str, labels: Labels,
                    max_length: int, pad_to_max_length: bool) -> Callable[[dict], dict]:
    """A batched ``datasets.map`` function: tokenize the text columns, map the labels to ids (or floats)."""

    def preprocess(examples: dict) -> dict:
        result = tokenizer(*[examples[c] for c in text_columns], padding="max_length" if pad_to_max_length else False,
                           max_length=max_length, truncation=True)
        values = examples[label_column]
        if labels.regression:
            result["label"] = [float(v) for v in values]
        elif labels.to_id is not None:
            unknown = sorted({str(v) for v in values if v not in labels.to_id})
            if unknown:
                raise ValueError(f"labels {unknown} do not occur in the training data (labels: {labels.names})")
            result["label"] = [labels.to_id[v] for v in values]
        else:
            result["label"] = list(values)
        return result

    return preprocess
