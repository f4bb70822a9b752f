#!/usr/bin/env python
"""Sparse image classification with SparseTrainer (like transformers' run_image_classification.py).

Offline default (a few minutes on a CPU): scikit-learn's real handwritten digits (1,797 8x8 scans)
upscaled to 16x16 RGB, a small transformers ResNet from scratch, EAST at 90% sparsity::

    python examples/vision/run.py --output_dir out/vision
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \\
        --dynamo_backend no examples/vision/run.py --output_dir out/vision --use_cpu

Your data: ``--train_dir folder/`` (imagefolder: one sub-folder per class) or ``--dataset_name``
(a datasets name or local path with ``image``/``label`` columns). Models: ``--model_name_or_path``
is a hub id or local folder, or an architecture for a from-scratch model: ``resnet18``,
``resnet34``, ``resnet50``, ``resnet_tiny`` (transformers ResNet) or ``timm:resnet18`` etc.
(transformers' timm wrapper). Every SparsityConfig field is a flag (``--method``, ``--sparsity``,
``--allocation``, ``--method_args '{"cycles": 2}'``...; its ``seed`` is ``--sparsity_seed``), as are
``--preset`` and ``--sparsity_config FILE`` (``hf_sparse.SparsityArguments``).
The saved folder loads with ``transformers.pipeline("image-classification", model=output_dir)``.
Run as a script it switches the Hub and datasets offline only for what is local (the default, or
local folders): a Hub model id or dataset name you pass is downloaded as usual.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Optional

RESNETS = {  # name -> (depths, hidden sizes, layer type, stem width)
    "resnet_tiny": ([2, 3, 3], [16, 32, 64], "basic", 16),
    "resnet18": ([2, 2, 2, 2], [64, 128, 256, 512], "basic", 64),
    "resnet34": ([3, 4, 6, 3], [64, 128, 256, 512], "basic", 64),
    "resnet50": ([3, 4, 6, 3], [256, 512, 1024, 2048], "bottleneck", 64),
}


def offline_flags(argv: list[str]) -> dict[str, str]:
    """The offline switches this command line can take: none that would block a Hub model id or a
    Hub dataset the user named. The built-in digits and from-scratch models never need the network."""
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--dataset_name", default=None)
    peek.add_argument("--model_name_or_path", default="resnet_tiny")
    known, _ = peek.parse_known_args(argv)
    local_data = known.dataset_name is None or os.path.exists(known.dataset_name)
    model = known.model_name_or_path
    local_model = model in RESNETS or model.startswith("timm:") or os.path.exists(model)
    flags = {"HF_DATASETS_OFFLINE": "1"} if local_data else {}
    if local_data and local_model:
        flags["HF_HUB_OFFLINE"] = "1"
    return flags


if __name__ == "__main__":  # before transformers and datasets read them at import
    for key, value in offline_flags(sys.argv[1:]).items():
        os.environ.setdefault(key, value)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import HfArgumentParser, TrainingArguments, set_seed  # noqa: E402

from hf_sparse import SparseTrainer, SparsityArguments, sparsity_report  # noqa: E402
from hf_sparse.core.distributed import shutdown_distributed  # noqa: E402

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="resnet_tiny",
        metadata={"help": f"Hub id / local folder, or a from-scratch architecture: {sorted(RESNETS)} or timm:<name>."},
    )
    image_size: int = field(default=16, metadata={"help": "Side of the (square) training images."})


@dataclass
class DataArguments:
    dataset_name: Optional[str] = field(default=None, metadata={"help": "datasets name or local path (image, label)."})
    train_dir: Optional[str] = field(default=None, metadata={"help": "imagefolder directory (one folder per class)."})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Truncate the training set."})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Truncate the evaluation set."})
    eval_fraction: float = field(default=0.15, metadata={"help": "Held-out share when there is no validation split."})


def digits_dataset(seed: int):
    """scikit-learn's digits (real scans, 10 classes) as a datasets.Dataset of PIL images."""
    from datasets import ClassLabel, Dataset, Features, Image as ImageFeature
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = [Image.fromarray((img * 255.0 / 16.0).astype(np.uint8)).convert("RGB") for img in digits.images]
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=[str(i) for i in range(10)])})
    data = Dataset.from_dict({"image": images, "label": digits.target.tolist()}, features=features)
    return data


def load_data(data_args: DataArguments, seed: int):
    from datasets import DatasetDict, load_dataset

    if data_args.train_dir:
        raw = load_dataset("imagefolder", data_dir=data_args.train_dir)
    elif data_args.dataset_name:
        raw = load_dataset(data_args.dataset_name)
    else:
        raw = DatasetDict(train=digits_dataset(seed))
    if "validation" not in raw:
        split = raw["train"].train_test_split(test_size=data_args.eval_fraction, seed=seed, stratify_by_column="label")
        raw = DatasetDict(train=split["train"], validation=split["test"])
    for name, limit in (("train", data_args.max_train_samples), ("validation", data_args.max_eval_samples)):
        if limit is not None:
            raw[name] = raw[name].select(range(min(limit, len(raw[name]))))
    return raw


def build_model(model_args: ModelArguments, labels: list[str]):
    """A hub/local checkpoint, or a from-scratch ResNet; returns (model, image processor)."""
    from transformers import (
        AutoImageProcessor,
        AutoModelForImageClassification,
        ConvNextImageProcessor,
        ResNetConfig,
        ResNetForImageClassification,
        TimmWrapperConfig,
        TimmWrapperForImageClassification,
    )

    id2label = dict(enumerate(labels))
    label2id = {v: k for k, v in id2label.items()}
    name, size = model_args.model_name_or_path, model_args.image_size
    if name in RESNETS:
        depths, hidden, layer_type, stem = RESNETS[name]
        config = ResNetConfig(
            depths=depths, hidden_sizes=hidden, layer_type=layer_type, embedding_size=stem,
            num_labels=len(labels), id2label=id2label, label2id=label2id,
        )
        processor = ConvNextImageProcessor(size={"shortest_edge": size}, crop_pct=1.0)
        return ResNetForImageClassification(config), processor
    if name.startswith("timm:"):
        config = TimmWrapperConfig(architecture=name[5:], num_labels=len(labels), id2label=id2label, label2id=label2id)
        model = TimmWrapperForImageClassification(config)
        model.config.pretrained_cfg = dict(
            model.timm_model.pretrained_cfg, input_size=(3, size, size), crop_pct=1.0, num_classes=len(labels)
        )
        return model, None  # the pipeline builds timm's processor from config.json (pretrained_cfg)
    model = AutoModelForImageClassification.from_pretrained(
        name, num_labels=len(labels), id2label=id2label, label2id=label2id, ignore_mismatched_sizes=True
    )
    return model, AutoImageProcessor.from_pretrained(name)


def make_transform(size: int, mean, std):
    from torchvision import transforms

    pipeline = transforms.Compose(
        [transforms.Resize((size, size)), transforms.ToTensor(), transforms.Normalize(mean=mean, std=std)]
    )

    def transform(batch: dict) -> dict:
        batch["pixel_values"] = [pipeline(img.convert("RGB")) for img in batch["image"]]
        return batch

    return transform


def collate(examples: list[dict]) -> dict:
    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        "labels": torch.tensor([e["label"] for e in examples]),
    }


def compute_metrics(prediction) -> dict:
    return {"accuracy": float((np.argmax(prediction.predictions, axis=-1) == prediction.label_ids).mean())}


TRAINING_DEFAULTS = dict(
    output_dir="out/vision", num_train_epochs=3, per_device_train_batch_size=64, per_device_eval_batch_size=128,
    learning_rate=0.05, optim="sgd", optim_args="momentum=0.9,nesterov=True", weight_decay=5e-4, max_grad_norm=1.0,
    eval_strategy="epoch", save_strategy="no", logging_steps=10, report_to=[], remove_unused_columns=False,
    dataloader_num_workers=0,
)
OFFLINE_SPARSITY_DEFAULTS = dict(method="east", sparsity=0.9, allocation="erk", update_every=20)


def parse_args(argv: Optional[list[str]] = None):
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments, SparsityArguments))
    parser.set_defaults(**TRAINING_DEFAULTS, **OFFLINE_SPARSITY_DEFAULTS)
    return parser.parse_args_into_dataclasses(args=argv)


def main(argv: Optional[list[str]] = None) -> dict:
    model_args, data_args, training_args, sparsity_args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if training_args.should_log else logging.WARNING)
    set_seed(training_args.seed)
    sparsity_config = sparsity_args.to_sparsity_config()
    if sparsity_args.teacher() is not None:
        raise ValueError("examples/vision/run.py does not distil: drop --teacher_model_name_or_path (distillation: "
                         "examples/glue/run.py or hf_sparse.train_dense_then_sparse)")
    raw = load_data(data_args, training_args.seed)
    labels = raw["train"].features["label"].names
    model, processor = build_model(model_args, labels)
    if processor is None:
        mean, std = model.config.pretrained_cfg["mean"], model.config.pretrained_cfg["std"]
    else:
        mean, std = processor.image_mean, processor.image_std
    transform = make_transform(model_args.image_size, mean, std)
    train, evaluation = raw["train"].with_transform(transform), raw["validation"].with_transform(transform)

    trainer = SparseTrainer(
        model=model, args=training_args, train_dataset=train, eval_dataset=evaluation, data_collator=collate,
        compute_metrics=compute_metrics, sparsity_config=sparsity_config,
    )
    train_result = trainer.train()
    metrics = {**train_result.metrics, **trainer.evaluate()}
    trainer.save_model(training_args.output_dir)
    if trainer.is_world_process_zero():
        if processor is not None:
            processor.save_pretrained(training_args.output_dir)
        report = sparsity_report(trainer.model)
        metrics["conv_sparsity_saved"] = report["sparsity"]  # shared convs are materialised copies
        metrics["mask_sparsity"] = trainer.sparsifier.sparsity
        metrics["world_size"] = training_args.world_size
        with open(os.path.join(training_args.output_dir, "vision_results.json"), "w", encoding="utf-8") as handle:
            json.dump(metrics, handle, indent=1, default=float)
        logger.info("results: %s", metrics)
        print(report)
    return metrics


if __name__ == "__main__":
    main()
    shutdown_distributed()
