#!/usr/bin/env python
"""Extreme sparsity on a small ResNet: RigL vs DST-EE vs EAST and EAST's ablations.

Data: scikit-learn's digits (1,797 real 8x8 scans, 10 classes) upscaled to 16x16, a stratified
85/15 split. Model: a transformers ResNet from scratch (stem 8, stages [8, 16] x 3 basic blocks,
so weight sharing has a third block to share). Recipe (the EAST authors' code, unverified): SGD
Nesterov momentum 0.9, lr 0.1, wd 5e-4, clip 1.0, lr x0.1 at 50% and 75%; ERK allocation; masks
updated every ``--update_every`` steps until 75% of training. Sparsity counts targeted conv weights
(stem and classifier dense); with weight sharing it is the budget over the unshared model.

The training loop is plain PyTorch around ``Sparsifier`` (the engine SparseTrainer uses), with the
method's ``prepare_model`` hook and DyReLU's beta schedule driven per step, because 54 Trainer runs
do not fit a shared 2-core CPU. Default size: ~10 minutes there. Writes
benchmarks/results/extreme_sparsity.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from hf_sparse import Sparsifier, SparsityConfig, get_method_class  # noqa: E402
from hf_sparse.vision.dyrelu import beta_at, remove_dyrelu, set_beta  # noqa: E402
from hf_sparse.vision.weight_sharing import materialize_shared_weights  # noqa: E402

logger = logging.getLogger(__name__)
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

VARIANTS: dict[str, dict] = {
    "rigl": dict(method="rigl"),
    "dst_ee": dict(method="dst_ee"),
    "east": dict(method="east"),
    "east_no_dyrelu": dict(method="east", method_args={"dyrelu": False}),
    "east_no_sharing": dict(method="east", method_args={"weight_sharing": False}),
    "east_no_cycles": dict(method="east", method_args={"cycles": 0}),
}


def load_digits_split(size: int, seed: int = 0):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = ((x - 0.3) / 0.4).expand(-1, 3, -1, -1).contiguous()
    y = torch.tensor(digits.target)
    train_idx, test_idx = train_test_split(np.arange(len(y)), test_size=0.15, random_state=seed, stratify=digits.target)
    return (x[train_idx], y[train_idx]), (x[test_idx], y[test_idx])


def build_model(seed: int, widths: tuple[int, int] = (8, 16)):
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(seed)
    config = ResNetConfig(embedding_size=widths[0], hidden_sizes=list(widths), depths=[3, 3], layer_type="basic",
                          num_labels=10)
    return ResNetForImageClassification(config)


def encoder_nonzeros(model) -> int:
    """Nonzero conv weights in the (materialised) encoder: every use of a shared weight counts."""
    return sum(int((m.weight != 0).sum()) for m in model.resnet.encoder.modules() if isinstance(m, torch.nn.Conv2d))


def run(variant: str, sparsity: float, seed: int, data, epochs: int, batch: int, update_every: int,
        widths: tuple[int, int] = (8, 16)) -> dict:
    (x_train, y_train), (x_test, y_test) = data
    model = build_model(seed, widths)
    config = SparsityConfig(sparsity=sparsity, allocation="erk", update_every=update_every, end=0.75, seed=seed,
                            **VARIANTS[variant])
    method_cls = get_method_class(config.method)
    callbacks = method_cls.prepare_model(model, config)
    dyrelu = any(type(c).__name__ == "DyReLUPhasingCallback" for c in callbacks)
    sparsifier = Sparsifier(model, config)
    steps_per_epoch = len(x_train) // batch
    total = epochs * steps_per_epoch
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [total // 2, total * 3 // 4], gamma=0.1)
    sparsifier.begin(total)
    generator = torch.Generator().manual_seed(seed)
    step = 0
    regrown = 0  # weights grown over the run (0 = the masks never moved)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x_train), generator=generator)
        for i in range(steps_per_epoch):
            if dyrelu:
                set_beta(model, beta_at(step, total))
            idx = order[i * batch : (i + 1) * batch]
            loss = model(pixel_values=x_train[idx], labels=y_train[idx]).loss
            loss.backward()
            step += 1
            sparsifier.prepare_gradients(step)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            if sparsifier.after_optimizer_step(step, optimizer):
                logs = sparsifier.last_update_logs
                regrown += int(logs.get("dst_regrown", logs.get("regrown", 0)))
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
    remove_dyrelu(model)
    materialize_shared_weights(model)
    model.eval()
    with torch.no_grad():
        accuracy = float((model(pixel_values=x_test).logits.argmax(-1) == y_test).float().mean())
    return {"variant": variant, "sparsity": sparsity, "seed": seed, "accuracy": accuracy,
            "mask_sparsity": sparsifier.sparsity, "nonzero_owned": sum(int(m.sum()) for m in sparsifier.masks.values()),
            "nonzero_effective": encoder_nonzeros(model), "regrown": regrown}


def paired(rows: list[dict], sparsities: list[float]) -> list[str]:
    """EAST minus each baseline, per seed (a seed fixes the batch order and the unshared layers' init)."""
    notes = []
    for s in sparsities:
        acc = {(r["variant"], r["seed"]): r["accuracy"] for r in rows if r["sparsity"] == s}
        for base in ("rigl", "dst_ee"):
            seeds = sorted(seed for (v, seed) in acc if v == "east" and (base, seed) in acc)
            if len(seeds) < 2:
                continue
            diffs = [acc[("east", seed)] - acc[(base, seed)] for seed in seeds]
            sd = statistics.stdev(diffs)
            notes.append(f"{s:.1%}: east - {base} = {statistics.mean(diffs):+.3f} ± {sd:.3f} over {len(diffs)} seeds "
                         f"(standard error {sd / len(diffs) ** 0.5:.3f}; east wins {sum(d > 0 for d in diffs)}, "
                         f"loses {sum(d < 0 for d in diffs)})")
    return notes


def budgets(rows: list[dict], sparsities: list[float]) -> list[str]:
    """Nonzero conv weights: owned (stored, the budget) and effective (every use of a shared weight)."""
    notes = []
    for s in sparsities:
        for variant in VARIANTS:
            cell = [r for r in rows if r["variant"] == variant and r["sparsity"] == s]
            if cell:
                notes.append(f"{s:.1%} {variant}: {statistics.mean(r['nonzero_owned'] for r in cell):.0f} stored, "
                             f"{statistics.mean(r['nonzero_effective'] for r in cell):.0f} effective nonzero conv weights, "
                             f"{statistics.mean(r['regrown'] for r in cell):.0f} weights regrown over the run")
    return notes


def summarise(rows: list[dict], sparsities: list[float]) -> tuple[dict, str]:
    table: dict = {}
    for variant in VARIANTS:
        for s in sparsities:
            accs = [r["accuracy"] for r in rows if r["variant"] == variant and r["sparsity"] == s]
            if accs:
                sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
                table.setdefault(variant, {})[s] = (statistics.mean(accs), sd, len(accs))
    header = "| variant | " + " | ".join(f"{s:.1%} sparsity" for s in sparsities) + " |"
    lines = [header, "|" + " --- |" * (len(sparsities) + 1)]
    for variant, cells in table.items():
        lines.append(f"| {variant} | " + " | ".join(
            f"{cells[s][0]:.3f} ± {cells[s][1]:.3f}" if s in cells else "-" for s in sparsities) + " |")
    return table, "\n".join(lines)


def plot(table: dict, sparsities: list[float], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = np.arange(len(sparsities))
    width = 0.8 / max(1, len(table))
    for i, (variant, cells) in enumerate(table.items()):
        means = [cells.get(s, (np.nan, 0, 0))[0] for s in sparsities]
        sds = [cells.get(s, (0, 0, 0))[1] for s in sparsities]
        ax.bar(xs + i * width - 0.4 + width / 2, means, width, yerr=sds, capsize=2, label=variant)
    ax.axhline(0.1, color="grey", linestyle=":", linewidth=1, label="chance")
    ax.set_xticks(xs, [f"{s:.1%}" for s in sparsities])
    ax.set_xlabel("sparsity of conv weights (budget)")
    ax.set_ylabel("test accuracy (digits)")
    ax.set_ylim(0, 1)
    ax.set_title("Small ResNet on digits: mean ± sd over seeds")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.99, 0.999])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--image_size", type=int, default=16)
    parser.add_argument("--update_every", type=int, default=6)
    parser.add_argument("--widths", type=int, nargs=2, default=[8, 16], help="channels of the two stages")
    parser.add_argument("--tag", default="", help="suffix of the result files (extreme_sparsity_<tag>.*)")
    parser.add_argument("--output_dir", default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    data = load_digits_split(args.image_size)
    rows = []
    started = time.time()
    jobs = [(v, s, seed) for s in args.sparsities for v in args.variants for seed in range(args.seeds)]
    for variant, sparsity, seed in tqdm(jobs, desc="runs"):
        rows.append(run(variant, sparsity, seed, data, args.epochs, args.batch, args.update_every, tuple(args.widths)))
    table, markdown = summarise(rows, args.sparsities)
    elapsed = time.time() - started
    os.makedirs(args.output_dir, exist_ok=True)
    stem = os.path.join(args.output_dir, "extreme_sparsity" + (f"_{args.tag}" if args.tag else ""))
    steps = args.epochs * (len(data[0][1]) // args.batch)
    notes = paired(rows, args.sparsities)
    with open(stem + ".json", "w", encoding="utf-8") as handle:
        json.dump({"args": vars(args), "elapsed_s": elapsed, "runs": rows}, handle, indent=1)
    with open(stem + ".md", "w", encoding="utf-8") as handle:
        handle.write(f"Test accuracy (mean ± sd over {args.seeds} seeds), stage widths {args.widths}, {args.epochs} "
                     f"epochs ({steps} steps, masks updated every {args.update_every}), {elapsed:.0f} s total\n\n")
        handle.write(markdown + "\n")
        if notes:
            handle.write("\nPaired per-seed differences (accuracy):\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
        handle.write("\nBudgets (mean over seeds):\n\n" + "\n".join(f"- {n}" for n in budgets(rows, args.sparsities)) + "\n")
    plot(table, args.sparsities, stem + ".png")
    print(markdown)
    print("\n".join(notes))
    print(f"{len(rows)} runs in {elapsed:.0f} s")


if __name__ == "__main__":
    main()
