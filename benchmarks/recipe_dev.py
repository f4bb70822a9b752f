"""Re-deciding the recipe on the DEV set only: each try of issue 23 (deliverable 4) as a row, paired by seed.

    python benchmarks/recipe_dev.py --row fresh-fisher --seed 42   # one row of one seed (and its dense teacher)
    python benchmarks/recipe_dev.py --rows recipe fresh-fisher --seeds 42 43 44
    python benchmarks/recipe_dev.py --report                       # rebuild recipe_dev.md/png from the raw rows

Every row prunes a copy of the seed's dense model (`examples/glue/run.py --sparsity 0`, 2 epochs, trained here
if missing) to 90% while distilling from it, exactly as `benchmarks/main_job.py --row sparse-90`, with one
change per row (ROWS). The model is then scored on the 1,264 sentences of the dev set
(`examples/glue/data/rotten_tomatoes_dev.csv`), and on the 600-sentence dev sample run.py evaluates. This script
never opens the test file: every file it scores is checked to be listed as `dev` in `splits.json`, so a choice
made from these rows cannot leak test information.
Raw rows (argv, versions, git commit, dev predictions as a 0/1 string) go to
benchmarks/results/recipe_dev_runs.jsonl; `--report` writes recipe_dev.md and recipe_dev.png.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

import hf_sparse
from hf_sparse.reporting.paired import paired_bootstrap_gap
# run as `python benchmarks/recipe_dev.py`: its folder is on sys.path, so main_job's helpers import directly
from main_job import DATA, RESULTS, ROOT, final_sparsity, git_commit, predict, version_of

RUNS_FILE = os.path.join(RESULTS, "recipe_dev_runs.jsonl")
DEV_FILE = os.path.join(DATA, "rotten_tomatoes_dev.csv")
SPLITS_FILE = os.path.join(DATA, "splits.json")
BASELINE = "recipe"

SPARSE_90 = ["--sparsity", "0.9", "--model_name_or_path", "{dense}", "--teacher_model_name_or_path", "{dense}"]
# row -> (flags after the common ones, what it changes)
ROWS: dict[str, tuple[list[str], str]] = {
    "dense": (["--sparsity", "0"], "the dense teacher (2 epochs), for reference"),
    "recipe": (SPARSE_90, "today's default at 90%: fisher from a running mean of squared step gradients (decay 0.999)"),
    "fresh-fisher": ([*SPARSE_90, "--method_args", json.dumps({"criterion": "fisher", "fisher_estimate": "fresh"})],
                     "fisher re-estimated right before each pruning step from 16 fresh mini-batch gradients (oBERT)"),
    "empirical-fisher": ([*SPARSE_90, "--method_args", json.dumps({"criterion": "fisher", "fisher_estimate": "fresh",
                                                                  "fisher_gradients": "example"})],
                         "as fresh-fisher, from per-example gradients (16 batches x 32 = 512 examples)"),
}


def read_runs() -> list[dict]:
    if not os.path.isfile(RUNS_FILE):
        return []
    with open(RUNS_FILE, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def append_run(row: dict) -> None:
    os.makedirs(RESULTS, exist_ok=True)
    with open(RUNS_FILE, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row, sort_keys=True) + "\n")


def read_dev(path: str = DEV_FILE) -> tuple[list[str], np.ndarray, str]:
    """Sentences, labels and sha256 of a dev file; refuses any file splits.json does not list as dev."""
    with open(SPLITS_FILE, encoding="utf-8") as handle:
        role = json.load(handle)["files"].get(os.path.basename(path))
    if role != "dev":
        raise ValueError(f"recipe_dev scores dev files only; {os.path.basename(path)} is {role!r} in {SPLITS_FILE}")
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    with open(path, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    return [r["sentence"] for r in rows], np.array([int(r["label"]) for r in rows]), digest


def seed_dir(work_dir: str, seed: int) -> str:
    return os.path.join(work_dir, f"seed{seed}")


def run_row(name: str, seed: int, work_dir: str) -> dict:
    flags = ROWS[name][0]
    dense_dir = os.path.join(seed_dir(work_dir, seed), "dense")
    output_dir = os.path.join(seed_dir(work_dir, seed), name)
    argv = [sys.executable, os.path.join(ROOT, "examples", "glue", "run.py"), "--seed", str(seed),
            "--output_dir", output_dir, "--log_level", "warning", "--disable_tqdm", "True",
            *[f.replace("{dense}", dense_dir) for f in flags]]
    start = time.perf_counter()
    subprocess.run(argv, check=True, cwd=ROOT)
    wall = time.perf_counter() - start
    with open(os.path.join(output_dir, "all_results.json"), encoding="utf-8") as handle:
        results = json.load(handle)
    sentences, labels, digest = read_dev()
    predictions = predict(output_dir, sentences)
    return {
        "row": name, "seed": seed, "what": ROWS[name][1],
        "rerun": f"python benchmarks/recipe_dev.py --row {name} --seed {seed}",
        "argv": ["python", *[os.path.relpath(a, ROOT) if a.startswith(ROOT) else a for a in argv[1:]]],
        "hf_sparse": hf_sparse.__version__, "git": git_commit(), "python": platform.python_version(),
        "torch": version_of("torch"), "transformers": version_of("transformers"),
        "dev600_accuracy": results.get("eval_accuracy"), "dev_accuracy": float((predictions == labels).mean()),
        "dev_sha256": digest, "dev_predictions": "".join(map(str, predictions.tolist())),
        "final_sparsity": final_sparsity(output_dir), "train_runtime_s": results.get("train_runtime"),
        "wall_s": round(wall, 1), "load_avg": round(os.getloadavg()[0], 2),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }


# -- the report -----------------------------------------------------------------------------------------------
def correct(run: dict, labels: np.ndarray) -> np.ndarray:
    return (np.frombuffer(run["dev_predictions"].encode(), dtype=np.uint8) - ord("0") == labels).astype(np.float64)


def mean_sd(values: list[float]) -> str:
    sd = f" +- {100 * statistics.stdev(values):.2f}" if len(values) > 1 else ""
    return f"{100 * statistics.fmean(values):.2f}{sd}"


def report() -> None:
    _, labels, digest = read_dev()
    runs = [r for r in read_runs() if r["dev_sha256"] == digest]
    if not runs:
        print("no finished runs yet")
        return
    by = {(r["row"], r["seed"]): r for r in runs}  # the latest run of a (row, seed) counts
    lines = [
        "# Recipe re-decided on dev (issue 23): one change per row, 90% sparse, paired by seed",
        "",
        "all-MiniLM-L6-v2, 3,000 training sentences; each sparse row prunes a copy of its seed's 2-epoch dense",
        "model to 90% while distilling from it (the recipe: 3x = 6 epochs, LR rewinding, 8 mask updates).",
        "Accuracy in points on the dev set (1,264 sentences, `rotten_tomatoes_dev.csv`; the test set is never",
        "read by this script). Mean +- sd over seeds; the 600-sentence column is what run.py prints (a dev sample).",
        "Rerun a cell: `python benchmarks/recipe_dev.py --row ROW --seed SEED` (raw rows: recipe_dev_runs.jsonl).",
        "",
        "| row | what changes | seeds | dev accuracy | per seed | dev-600 | train s (mean) |",
        "| --- | --- | --- | ---: | --- | ---: | ---: |",
    ]
    for row in ROWS:
        these = sorted((r for (name, _), r in by.items() if name == row), key=lambda r: r["seed"])
        if not these:
            continue
        lines.append(
            f"| {row} | {ROWS[row][1]} | {', '.join(str(r['seed']) for r in these)} | "
            f"{mean_sd([r['dev_accuracy'] for r in these])} | "
            f"{' / '.join('%.2f' % (100 * r['dev_accuracy']) for r in these)} | "
            f"{mean_sd([r['dev600_accuracy'] for r in these])} | "
            f"{statistics.fmean(r['train_runtime_s'] for r in these):.0f} |")
    lines += ["", f"Difference to `{BASELINE}` on dev, in points, on the seeds both have: mean, paired bootstrap 95% "
              "interval (seeds and sentences resampled together), the per-seed differences and their sd.", "",
              "| row | seeds | diff [95% CI] | per seed | sd of diff | wins by more than its sd |",
              "| --- | --- | ---: | --- | ---: | --- |"]
    plot_rows = []
    for row in ROWS:
        if row in (BASELINE, "dense"):
            continue
        seeds = sorted(s for (name, s) in by if name == row and (BASELINE, s) in by)
        if not seeds:
            continue
        a = np.stack([correct(by[(row, s)], labels) for s in seeds])
        b = np.stack([correct(by[(BASELINE, s)], labels) for s in seeds])
        gap = paired_bootstrap_gap(a, b)
        per_seed = [100 * (by[(row, s)]["dev_accuracy"] - by[(BASELINE, s)]["dev_accuracy"]) for s in seeds]
        wins = "n/a (1 seed)" if len(seeds) < 2 else ("yes" if gap.mean > gap.seed_sd and gap.mean > 0 else "no")
        lines.append(f"| {row} | {', '.join(map(str, seeds))} | {gap.points()} | "
                     f"{' / '.join(f'{d:+.2f}' for d in per_seed)} | {100 * gap.seed_sd:.2f} | {wins} |")
        plot_rows.append((row, gap))
    lines += ["", "Train times are wall-clock on a shared, loaded 2-core machine (`load_avg` in the raw rows), "
              "one thread (OMP_NUM_THREADS=1); they are not speed figures."]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(RESULTS, "recipe_dev.md"), "w", encoding="utf-8") as handle:
        handle.write(text)
    print(text)
    plot(plot_rows)


def plot(rows: list) -> None:
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 0.6 + 0.7 * len(rows)))
    for i, (row, gap) in enumerate(rows):
        ax.errorbar([100 * gap.mean], [i], xerr=[[100 * (gap.mean - gap.low)], [100 * (gap.high - gap.mean)]],
                    fmt="o", capsize=4, color="tab:blue")
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_yticks(range(len(rows)), [f"{row} ({gap.seeds} seed{'s' if gap.seeds > 1 else ''})" for row, gap in rows])
    ax.set_xlabel(f"dev accuracy minus `{BASELINE}` (points, paired 95% CI)")
    ax.set_title("90% sparse, one change per row (dev set only)", fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS, "recipe_dev.png"), dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--row", choices=list(ROWS), help="one row (with --seed)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--rows", nargs="*", choices=list(ROWS), default=[])
    parser.add_argument("--seeds", type=int, nargs="*", default=[42, 43, 44])
    parser.add_argument("--work_dir", default="/tmp/hf_sparse_recipe_dev", help="where run folders (and dense teachers) go")
    parser.add_argument("--report", action="store_true", help="only rebuild recipe_dev.md/png from the raw rows")
    parser.add_argument("--force", action="store_true", help="run even if the row/seed is already recorded")
    options = parser.parse_args()
    if options.row is not None:
        if options.seed is None:
            parser.error("--row needs --seed")
        todo = [(options.row, options.seed)]
    else:
        todo = [(row, seed) for seed in options.seeds for row in options.rows]
    for row, seed in todo:
        if any(r["row"] == row and r["seed"] == seed for r in read_runs()) and not options.force:
            continue
        if row != "dense" and not os.path.isfile(os.path.join(seed_dir(options.work_dir, seed), "dense", "config.json")):
            dense = run_row("dense", seed, options.work_dir)  # the teacher this row starts from
            if not any(r["row"] == "dense" and r["seed"] == seed for r in read_runs()):
                append_run(dense)
        result = run_row(row, seed, options.work_dir)
        append_run(result)
        print(f"{row} seed {seed}: dev {result['dev_accuracy']:.4f} ({result['wall_s']:.0f} s)", flush=True)
    if todo or options.report:
        report()


if __name__ == "__main__":
    main()
