"""The main job's accuracy, measured so an expert can trust it: disjoint sets, budget-matched dense
references, per-example predictions, paired bootstrap intervals over seeds and test sentences.

    python benchmarks/main_job.py --row sparse-90 --seed 42      # one row of one seed (and the dense run it needs)
    python benchmarks/main_job.py --rows dense sparse-90 --seeds 42 43 44
    python benchmarks/main_job.py --report                       # rebuild table + plot from the raw rows

Every row is `examples/glue/run.py` with the flags in ROWS, on the offline default's data: 3,000 training
sentences (train set), 600 validation sentences (dev set: what run.py prints, and the only figure any choice
may use), then the saved model predicts the 2,525 test sentences once (set `test`, examples/glue/data).
Rows:
- `dense`: the dense fine-tuning (2 epochs; = `python examples/glue/run.py --sparsity 0`); the teacher of the rest.
- `dense-cont`: that model trained 6 more epochs densely, no teacher: dense at the sparse pipeline's total length.
- `dense-selfkd`: the same 6 epochs distilling from `dense` (self-distillation at that length).
- `sparse-S`: a copy of `dense` pruned to S with the default recipe while distilling from it (the README's
  two-command form of the main job; the recipe runs 3x = 6 epochs at 80/90%, 4x = 8 epochs at 95/97%).
The gap of each sparse row is taken against the best dense reference (highest mean test accuracy: the
conservative choice), as a mean over seeds with a paired bootstrap 95% interval (hf_sparse.reporting.paired).
Raw rows (argv, versions, dev/test accuracy, test predictions as a 0/1 string) go to
benchmarks/results/main_job_runs.jsonl; `--report` writes main_job.md and main_job.png from them.
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "examples", "glue", "data")
RESULTS = os.path.join(ROOT, "benchmarks", "results")
RUNS_FILE = os.path.join(RESULTS, "main_job_runs.jsonl")
TEST_FILE = os.path.join(DATA, "rotten_tomatoes_test.csv")
SETTINGS = {  # setting -> data flags; "full": all 8,820 training sentences (deliverable: how the gap moves with data)
    "main": [],
    "full": ["--train_file", os.path.join(DATA, "rotten_tomatoes_full_train.csv"),
             "--validation_file", os.path.join(DATA, "rotten_tomatoes_validation.csv")],
}
CONTINUATION_EPOCHS = "6"  # the sparse stage's length at 80/90% (recipe 3x of the dense 2 epochs)

# row -> (flags after the common ones, needs the dense run of the same seed)
ROWS: dict[str, tuple[list[str], bool]] = {
    "dense": (["--sparsity", "0"], False),
    "dense-cont": (["--sparsity", "0", "--model_name_or_path", "{dense}", "--teacher_model_name_or_path", "none",
                    "--num_train_epochs", CONTINUATION_EPOCHS], True),
    "dense-selfkd": (["--sparsity", "0", "--model_name_or_path", "{dense}", "--teacher_model_name_or_path", "{dense}",
                      "--num_train_epochs", CONTINUATION_EPOCHS], True),
    **{f"sparse-{p}": (["--sparsity", f"0.{p}", "--model_name_or_path", "{dense}",
                        "--teacher_model_name_or_path", "{dense}"], True) for p in ("80", "90", "95", "97")},
}
DENSE_REFERENCES = ("dense", "dense-cont", "dense-selfkd")
MIN_SEEDS = 5  # per headline cell, before a goal counts as met
GOALS = {"sparse-80": 1.0, "sparse-90": 2.0, "sparse-95": 3.0}  # points below the best dense, on test


def read_runs() -> list[dict]:
    if not os.path.isfile(RUNS_FILE):
        return []
    with open(RUNS_FILE, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def latest_runs(runs: list[dict]) -> tuple[list[dict], list[dict]]:
    """The last recorded run of each (setting, row, seed) cell, and the runs a rerun (``--force``) superseded.

    Raw rows are never rewritten: a rerun on a newer library appends, and the report uses the newest."""
    latest: dict[tuple, dict] = {}
    superseded = []
    for run in runs:
        key = (run.get("setting"), run["row"], run["seed"])
        if key in latest:
            superseded.append(latest[key])
        latest[key] = run
    return list(latest.values()), superseded


def append_run(row: dict) -> None:
    os.makedirs(RESULTS, exist_ok=True)
    with open(RUNS_FILE, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row, sort_keys=True) + "\n")


def read_test() -> tuple[list[str], np.ndarray, str]:
    with open(TEST_FILE, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    with open(TEST_FILE, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    return [r["sentence"] for r in rows], np.array([int(r["label"]) for r in rows]), digest


def predict(folder: str, sentences: list[str], batch_size: int = 64) -> np.ndarray:
    """Class predictions of the saved model in ``folder`` (tokenized as run.py does: truncation at 128)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))  # similar lengths: little padding
    predictions = np.empty(len(sentences), dtype=np.int64)
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            batch = tokenizer([sentences[i] for i in index], truncation=True, max_length=128, padding=True, return_tensors="pt")
            predictions[index] = model(**batch).logits.argmax(-1).numpy()
    return predictions


def seed_folder(work_dir: str, setting: str, seed: int) -> str:
    """Where one seed's runs go (the main setting keeps the flat layout its first rows were written in)."""
    return os.path.join(work_dir, *([] if setting == "main" else [setting]), f"seed{seed}")


def run_row(name: str, seed: int, work_dir: str, setting: str = "main") -> dict:
    flags, needs_dense = ROWS[name]
    flags = [*SETTINGS[setting], *flags]
    seed_dir = seed_folder(work_dir, setting, seed)
    dense_dir = os.path.join(seed_dir, "dense")
    if needs_dense and not os.path.isfile(os.path.join(dense_dir, "config.json")):
        raise FileNotFoundError(f"{name} needs the dense run of seed {seed} in {dense_dir}: run --row dense first")
    output_dir = os.path.join(seed_dir, name)
    argv = [sys.executable, os.path.join(ROOT, "examples", "glue", "run.py"), "--seed", str(seed),
            "--output_dir", output_dir, "--log_level", "warning",
            "--disable_tqdm", "True", *[f.replace("{dense}", dense_dir) for f in flags]]
    start = time.perf_counter()
    subprocess.run(argv, check=True, cwd=ROOT)
    wall = time.perf_counter() - start
    with open(os.path.join(output_dir, "all_results.json"), encoding="utf-8") as handle:
        results = json.load(handle)
    sentences, labels, digest = read_test()
    predictions = predict(output_dir, sentences)
    return {
        "row": name, "seed": seed, "setting": setting,
        "rerun": f"python benchmarks/main_job.py --row {name} --seed {seed} --setting {setting}",
        "argv": ["python", *[os.path.relpath(a, ROOT) if a.startswith(ROOT) else a for a in argv[1:]]],
        "hf_sparse": hf_sparse.__version__, "git": git_commit(), "python": platform.python_version(),
        "torch": version_of("torch"), "transformers": version_of("transformers"),
        "dev_accuracy": results.get("eval_accuracy"), "test_accuracy": float((predictions == labels).mean()),
        "test_sha256": digest, "test_predictions": "".join(map(str, predictions.tolist())),
        "final_sparsity": final_sparsity(output_dir), "train_runtime_s": results.get("train_runtime"),
        "wall_s": round(wall, 1), "load_avg": round(os.getloadavg()[0], 2),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),  # 1 vs 2 threads changes the last bits, not the result
    }


def final_sparsity(output_dir: str) -> float | None:
    path = os.path.join(output_dir, "sparsity_report.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle).get("sparsity")


def version_of(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# -- the report -----------------------------------------------------------------------------------------------
def correct_matrix(runs: list[dict], row: str, seeds: list[int], labels: np.ndarray) -> np.ndarray:
    by_seed = {r["seed"]: r for r in runs if r["row"] == row}
    return np.stack([np.frombuffer(by_seed[s]["test_predictions"].encode(), dtype=np.uint8) - ord("0") == labels
                     for s in seeds]).astype(np.float64)


def at_majority(run: dict, labels: np.ndarray) -> bool:
    """A model that predicts (almost) one class only, or scores no better than the majority rate."""
    predictions = np.frombuffer(run["test_predictions"].encode(), dtype=np.uint8) - ord("0")
    majority = max(labels.mean(), 1 - labels.mean())
    return max(predictions.mean(), 1 - predictions.mean()) > 0.98 or run["test_accuracy"] <= majority + 0.005


def mean_sd(values: list[float]) -> str:
    sd = f" +- {statistics.stdev(values):.4f}" if len(values) > 1 else ""
    return f"{statistics.fmean(values):.4f}{sd}"


SETTING_TEXT = {
    "main": ("main_job", "Main job", "3,000 training sentences (train set)"),
    "full": ("main_job_full", "Whole training set", "all 8,820 training sentences (train set)"),
}


def report(setting: str = "main") -> None:
    stem, title, train_text = SETTING_TEXT[setting]
    _, labels, digest = read_test()
    runs = [r for r in read_runs() if r.get("setting") == setting and r["test_sha256"] == digest]  # other test files: not comparable
    runs, superseded = latest_runs(runs)
    if not runs:
        print(f"{setting}: no finished runs yet")
        return
    seeds_of = {row: sorted({r["seed"] for r in runs if r["row"] == row}) for row in ROWS}
    lines = [
        f"# {title}: sparse vs the best dense reference (test set, 2,525 sentences never used for a choice)",
        "",
        f"all-MiniLM-L6-v2, {train_text}, the default recipe with distillation from the",
        "2-epoch dense model. Accuracy on the dev sample (600, what run.py prints) and on test; mean +- sd over seeds.",
        f"Rerun any cell: `python benchmarks/main_job.py --row ROW --seed SEED --setting {setting}` (raw rows: main_job_runs.jsonl).",
        "",
        "| row | seeds | library (git) | dev accuracy | test accuracy | train (s, mean) |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    for row in ROWS:
        these = [r for r in runs if r["row"] == row]
        if not these:
            continue
        flag = " (at majority rate!)" if any(at_majority(r, labels) for r in these) else ""
        commits = ", ".join(sorted({r.get("git", "?") for r in these}))
        lines.append(f"| {row}{flag} | {', '.join(map(str, seeds_of[row]))} | {commits} | {mean_sd([r['dev_accuracy'] for r in these])} | "
                     f"{mean_sd([r['test_accuracy'] for r in these])} | {statistics.fmean(r['train_runtime_s'] for r in these):.0f} |")
    lines += ["", "Gap to the best dense reference, on test, in points: mean over seeds, paired bootstrap 95% interval",
              "(seeds and sentences resampled together), and the sd of the per-seed gaps.", "",
              "| sparse row | best dense | seeds | gap [95% CI] | sd of gap | vs dense (2 epochs) | goal | met |",
              "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |"]
    plot_rows = []
    for row in [r for r in ROWS if r.startswith("sparse-") and seeds_of[r]]:
        refs = [ref for ref in DENSE_REFERENCES if set(seeds_of[row]) <= set(seeds_of[ref])]
        if not refs:
            continue
        seeds = seeds_of[row]
        sparse = correct_matrix(runs, row, seeds, labels)
        best = max(refs, key=lambda ref: correct_matrix(runs, ref, seeds, labels).mean())
        gap = paired_bootstrap_gap(sparse, correct_matrix(runs, best, seeds, labels))
        short = paired_bootstrap_gap(sparse, correct_matrix(runs, "dense", seeds, labels))
        goal = GOALS.get(row)
        met = "" if goal is None else ("yes" if 100 * gap.mean >= -goal else "no")
        if goal is not None and gap.seeds < MIN_SEEDS:
            met += f" ({gap.seeds} of {MIN_SEEDS} seeds)"
        lines.append(f"| {row} | {best} | {', '.join(map(str, seeds))} | {gap.points()} | {100 * gap.seed_sd:.1f} | "
                     f"{short.points()} | {'' if goal is None else f'-{goal:.1f}'} | {met} |")
        plot_rows.append((row, best, gap))
    if any(r.get("git") == "5fc1e39" for r in runs):
        lines += ["", "Rows with `git` 5fc1e39 ran on the library as of 0b12bad plus this script and the disjoint data "
                  "(the commit was rebased onto main as 2441c22 and is not on main itself)."]
    if any(seeds_of[r] for r in ("sparse-95", "sparse-97")):
        lines += ["", "The 95/97% rows run 2 + 8 epochs (the recipe's 4x); the dense references run 2 + 6. Their gap is "
                  "against references two epochs shorter than the pipeline (dense-cont gained nothing from 2 to 8 "
                  "epochs, see the table)."]
    if superseded:
        lines += ["", "Superseded by a rerun on a newer library (kept in the raw file, not used above):", "",
                  "| row | seed | library (git) | dev accuracy | test accuracy |", "| --- | --- | --- | ---: | ---: |"]
        lines += [f"| {r['row']} | {r['seed']} | {r.get('git', '?')} | {r['dev_accuracy']:.4f} | {r['test_accuracy']:.4f} |"
                  for r in sorted(superseded, key=lambda r: (r["row"], r["seed"]))]
    lines += ["", "Train times are wall-clock on the machine as it was (often shared and loaded: `load_avg` in the raw "
              "rows); they are not speed figures."]
    missing = [ref for ref in DENSE_REFERENCES if not seeds_of[ref]]
    if missing:
        lines += ["", f"Not yet measured: {', '.join(missing)}; a gap is only against the references measured on the same seeds."]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(RESULTS, f"{stem}.md"), "w", encoding="utf-8") as handle:
        handle.write(text)
    print(text)
    plot(plot_rows, stem, title)


def plot(rows: list, stem: str, title: str) -> None:
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    for i, (row, best, gap) in enumerate(rows):
        ax.errorbar([100 * gap.mean], [i], xerr=[[100 * (gap.mean - gap.low)], [100 * (gap.high - gap.mean)]],
                    fmt="o", capsize=4, color="tab:blue")
        goal = GOALS.get(row)
        if goal is not None:
            ax.plot([-goal], [i], marker="|", markersize=16, color="tab:red")
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_yticks(range(len(rows)), [f"{row}\nvs {best} ({gap.seeds} seed{'s' if gap.seeds > 1 else ''})" for row, best, gap in rows])
    ax.set_xlabel("test accuracy gap to the best dense (points, 95% CI)")
    ax.set_title(f"{title}: sparse vs best dense (red tick: goal)", fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS, f"{stem}.png"), dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--row", choices=list(ROWS), help="one row (with --seed)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--rows", nargs="*", choices=list(ROWS), default=[])
    parser.add_argument("--seeds", type=int, nargs="*", default=[42, 43, 44, 45, 46])
    parser.add_argument("--setting", choices=list(SETTINGS), default="main", help="which training data (see SETTINGS)")
    parser.add_argument("--work_dir", default="/tmp/hf_sparse_main_job", help="where run folders (and dense teachers) go")
    parser.add_argument("--report", action="store_true", help="only rebuild main_job.md/png from the raw rows")
    parser.add_argument("--force", action="store_true", help="run even if the row/seed is already recorded")
    options = parser.parse_args()
    if options.row is not None:
        if options.seed is None:
            parser.error("--row needs --seed")
        todo = [(options.row, options.seed)]
    else:
        todo = [(row, seed) for row in options.rows for seed in options.seeds]
    for row, seed in todo:
        done = any(r["row"] == row and r["seed"] == seed and r.get("setting") == options.setting for r in read_runs())
        if done and not options.force:
            continue
        dense_config = os.path.join(seed_folder(options.work_dir, options.setting, seed), "dense", "config.json")
        if ROWS[row][1] and not os.path.isfile(dense_config):
            recorded = any(r["row"] == "dense" and r["seed"] == seed and r.get("setting") == options.setting
                           for r in read_runs())
            dense = run_row("dense", seed, options.work_dir, options.setting)  # the teacher this row starts from
            if not recorded:
                append_run(dense)
        result = run_row(row, seed, options.work_dir, options.setting)
        append_run(result)
        print(f"{row} seed {seed}: dev {result['dev_accuracy']:.4f}, test {result['test_accuracy']:.4f} "
              f"({result['wall_s']:.0f} s)", flush=True)
    if todo or options.report:
        for setting in SETTINGS:
            report(setting)


if __name__ == "__main__":
    main()
