"""Does sparse-aware fine-tuning close the gap to dense? ("Accurate Neural Network Pruning Requires Rethinking Sparse Optimization")

Real data, offline, CPU-sized: scikit-learn's digits (1,797 real 8x8 handwritten digits; 75/25
stratified split) and an MLP 64-128-128-10 whose two hidden Linear layers are pruned to 90%
(the classifier stays dense). Recipes, each trained by ``SparseTrainer`` with AdamW and the
Trainer's linear LR decay unless said otherwise:

- dense: plain training, ``--epochs`` epochs (the "1x" budget; 20: dense accuracy has about converged).
- gmp-1x: preset ``bert-glue-1x`` (cubic 0 -> 90% over the first 75%, then fixed).
- gmp-1x-rewind: preset ``gmp-rewinding`` (gmp-1x with linear LR rewinding, same length).
- gmp-3x: gmp-1x with ``schedule_scale=3`` (ramp and fixed phase 3x longer, Trainer's LR decay).
- gmp-3x-rewind: preset ``bert-glue-extended`` (3x schedule, jump to 70% at the first pruning
  step, linear LR rewinding per pruning interval, last 25% at fixed sparsity).
- gmp-1x-kd: gmp-1x plus distillation from the seed's dense model (T = 2, alpha = 1).
- gmp-3x-rewind-kd: the full extended recipe (3x + rewinding + KD).
- acdc: preset ``acdc`` (global magnitude, 10% warm-up, 5% phases, 15% final sparse) at 1x.

``--init dense`` (default): every sparse run starts from the seed's trained dense model, as in
sparse fine-tuning; ``--init scratch``: from the same random initialisation as the dense run.
Mean +- std of test accuracy over ``--seeds`` seeds, the under-training verdict of each run, and a PNG
with the accuracy bars and the mean training-loss curves go to benchmarks/results/.
Run: ``python benchmarks/extended_schedule.py [--seeds 3] [--epochs 20] [--sparsity 0.9]`` (about 5 minutes
on 2 busy cores; it runs torch on one thread, ~50x faster than two contended ones for this MLP).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from torch import nn  # noqa: E402
from tqdm import tqdm  # noqa: E402
from transformers import PrinterCallback, Trainer, TrainingArguments  # noqa: E402

from hf_sparse import DistillationConfig, SparseTrainer, SparsityConfig  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
RECIPES = ["dense", "gmp-1x", "gmp-1x-rewind", "gmp-3x", "gmp-3x-rewind", "gmp-1x-kd", "gmp-3x-rewind-kd", "acdc"]
logger = logging.getLogger("extended_schedule")


class Digits(torch.utils.data.Dataset):
    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x = torch.tensor(x, dtype=torch.float32)
        self.y = torch.tensor(y, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


class MLP(nn.Module):
    def __init__(self, hidden: int = 128):
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.classifier = nn.Linear(hidden, 10)

    def forward(self, x, labels=None):
        logits = self.classifier(torch.relu(self.fc2(torch.relu(self.fc1(x)))))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return {"loss": loss, "logits": logits}


def sparsity_config(recipe: str, update_every: int, sparsity: float) -> SparsityConfig | None:
    if recipe == "dense":
        return None
    if recipe == "gmp-1x-rewind":
        return SparsityConfig.from_preset("gmp-rewinding", update_every=update_every, sparsity=sparsity)
    if recipe == "gmp-3x":
        return SparsityConfig.from_preset("bert-glue-1x", update_every=update_every, sparsity=sparsity, schedule_scale=3)
    if recipe.startswith("gmp-1x"):
        return SparsityConfig.from_preset("bert-glue-1x", update_every=update_every, sparsity=sparsity)
    if recipe.startswith("gmp-3x-rewind"):
        return SparsityConfig.from_preset("bert-glue-extended", update_every=update_every, sparsity=sparsity)
    return SparsityConfig.from_preset("acdc", sparsity=sparsity)


def run(
    recipe: str, seed: int, data, args_common: dict, teacher: nn.Module | None, out_dir: str, sparsity: float,
    from_dense: bool,
):
    train, test = data
    torch.manual_seed(seed)
    model = MLP()
    if from_dense and teacher is not None:  # sparse fine-tuning of the trained dense model
        model.load_state_dict(teacher.state_dict())
    args = TrainingArguments(output_dir=os.path.join(out_dir, f"{recipe}-{seed}"), seed=seed, **args_common)
    config = sparsity_config(recipe, args_common["logging_steps"] * 2, sparsity)
    if config is None:
        trainer = Trainer(model=model, args=args, train_dataset=train)
    else:
        kd = recipe.endswith("-kd")
        trainer = SparseTrainer(
            model=model, args=args, train_dataset=train, sparsity_config=config,
            teacher_model=teacher if kd else None, distillation=DistillationConfig() if kd else None,
        )  # fmt: skip
    trainer.remove_callback(PrinterCallback)
    start = time.time()
    trainer.train()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(test.x)["logits"].argmax(-1) == test.y).float().mean())
    history = trainer.state.log_history
    curve = [(e["step"], e["loss"]) for e in history if "loss" in e]
    verdict = next((e for e in reversed(history) if "undertraining_undertrained" in e), {})
    weights = torch.cat([model.fc1.weight.reshape(-1), model.fc2.weight.reshape(-1)])
    return model, {
        "recipe": recipe,
        "seed": seed,
        "accuracy": accuracy,
        "steps": trainer.state.global_step,
        "sparsity": float((weights == 0).float().mean()),
        "undertrained": verdict.get("undertraining_undertrained"),
        "tail_relative_drop": verdict.get("undertraining_relative_drop"),
        "seconds": time.time() - start,
        "curve": curve,
    }


def plot(results: list[dict], path: str, init: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(13, 4.8))
    means, stds = [], []
    for recipe in RECIPES:
        accs = [100 * r["accuracy"] for r in results if r["recipe"] == recipe]
        means.append(np.mean(accs))
        stds.append(np.std(accs))
    ax_acc.bar(range(len(RECIPES)), means, yerr=stds, capsize=4, color=["#555"] + ["#4c72b0"] * (len(RECIPES) - 1))
    ax_acc.set_xticks(range(len(RECIPES)), RECIPES, rotation=25, ha="right")
    low = min(m - s for m, s in zip(means, stds))
    ax_acc.set_ylim(max(0, low - 3), 100)
    ax_acc.set_ylabel("test accuracy (%)")
    ax_acc.set_title(f"digits MLP, {results[-1]['sparsity']:.0%} sparse hidden layers, from {init} (mean +- std)")
    for i, m in enumerate(means):
        ax_acc.text(i, m + 0.2, f"{m:.1f}", ha="center", va="bottom", fontsize=8)
    for recipe in RECIPES:
        curves = [r["curve"] for r in results if r["recipe"] == recipe]
        steps = [s for s, _ in curves[0]]
        length = min(len(c) for c in curves)
        mean = np.mean([[v for _, v in c[:length]] for c in curves], axis=0)
        style = "--" if recipe.endswith("-kd") else "-"
        ax_loss.plot(steps[:length], mean, style, label=recipe + (" (KD loss)" if recipe.endswith("-kd") else ""))
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("optimizer step")
    ax_loss.set_ylabel("training loss (mean over seeds)")
    ax_loss.set_title("training loss")
    ax_loss.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=float, default=20, help="the 1x budget (dense is about converged)")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument(
        "--init", choices=["dense", "scratch"], default="dense",
        help="sparse runs start from the seed's trained dense model (fine-tuning, the seed's setting) or from scratch",
    )  # fmt: skip
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=RESULTS)
    cli = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("hf_sparse").setLevel(logging.ERROR)  # the schedule_scale advice would repeat per run
    torch.set_num_threads(cli.threads)  # a tiny MLP: one thread is ~50x faster than two busy ones here
    os.makedirs(cli.out, exist_ok=True)
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data / 16.0, digits.target, test_size=0.25, stratify=digits.target, random_state=0
    )
    data = (Digits(x_train, y_train), Digits(x_test, y_test))
    common = dict(
        per_device_train_batch_size=cli.batch_size, num_train_epochs=cli.epochs, learning_rate=cli.lr,
        lr_scheduler_type="linear", weight_decay=0.0, logging_steps=5, save_strategy="no", report_to=[],
        use_cpu=True, disable_tqdm=True, dataloader_num_workers=0,
    )  # fmt: skip
    results = []
    scratch = os.path.join(cli.out, "_runs")
    bar = tqdm(total=cli.seeds * len(RECIPES), desc="runs")
    for seed in range(cli.seeds):
        teacher = None
        for recipe in RECIPES:
            model, result = run(recipe, seed, data, common, teacher, scratch, cli.sparsity, cli.init == "dense")
            if recipe == "dense":
                teacher = model
            results.append(result)
            bar.set_postfix(recipe=recipe, acc=f"{result['accuracy']:.3f}")
            bar.update()
    bar.close()

    rows = []
    for recipe in RECIPES:
        rs = [r for r in results if r["recipe"] == recipe]
        accs = np.array([100 * r["accuracy"] for r in rs])
        rows.append(
            {
                "recipe": recipe,
                "accuracy_mean": round(float(accs.mean()), 2),
                "accuracy_std": round(float(accs.std()), 2),
                "steps": rs[0]["steps"],
                "sparsity": round(float(np.mean([r["sparsity"] for r in rs])), 4),
                "undertrained_runs": sum(bool(r["undertrained"]) for r in rs),
                "seconds": round(float(np.mean([r["seconds"] for r in rs])), 1),
            }
        )
    lines = ["| recipe | test acc. (%) | steps | sparsity | under-trained runs | s/run |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['recipe']} | {r['accuracy_mean']:.2f} +- {r['accuracy_std']:.2f} | {r['steps']} | "
            f"{r['sparsity']:.3f} | {r['undertrained_runs']}/{cli.seeds} | {r['seconds']} |"
        )
    table = "\n".join(lines)
    print(table)
    name = f"extended_schedule_{cli.init}_{round(100 * cli.sparsity)}"
    with open(os.path.join(cli.out, name + ".md"), "w") as handle:
        handle.write(f"digits MLP 64-128-128-10, {cli.sparsity:.0%} sparse hidden layers, {cli.epochs:g} epochs = 1x, "
                     f"sparse runs start from {cli.init}, {cli.seeds} seeds, torch {torch.__version__}\n\n{table}\n")
    with open(os.path.join(cli.out, name + ".json"), "w") as handle:
        json.dump({"summary": rows, "runs": results, "settings": vars(cli)}, handle, indent=1)
    plot(results, os.path.join(cli.out, name + ".png"), cli.init)
    import shutil

    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
