"""Accuracy vs sparsity of all-MiniLM-L6-v2 on the whole Rotten Tomatoes corpus (issue 18's benchmark).

    python benchmarks/glue_minilm.py                       # every row of PLAN (hours on a 2-core CPU)
    python benchmarks/glue_minilm.py --rows dense auto-90  # some rows; finished runs are kept and skipped
    python benchmarks/glue_minilm.py --report              # only rebuild the table and plot from finished runs

Data: examples/glue/data/rotten_tomatoes_full_{train,test}.csv (12,610 fresh/rotten snippets; 2,600 held out,
stratified; rebuild: examples/glue/data/README.md). ``--train_size`` takes a fixed subset of the 10,010 training
rows (the first N of a seeded shuffle) so the plan fits a 2-core CPU; the table says which. Every run is
``examples/glue/run.py`` with the same TrainingArguments (2 epochs, batch 32, LR 1e-4, seed per run): rows differ
only in their sparsity flags. Rows: dense; plain GMP (``--recipe none``: the dense recipe, no teacher); the recipe
(``recipe="auto"``) without a teacher, from the pretrained model; the script's default
(``--teacher_model_name_or_path auto``: prune a copy of the dense run of the same seed while distilling from it);
rows with ``mag`` pin the magnitude criterion the recipe used before it chose ``fisher``.
Each finished run is a line of benchmarks/results/glue_minilm_runs.jsonl; the summary (mean +- sd over seeds)
goes to glue_minilm.{md,json,png}.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "examples", "glue", "data")
RESULTS = os.path.join(ROOT, "benchmarks", "results")
RUNS_FILE = os.path.join(RESULTS, "glue_minilm_runs.jsonl")
logger = logging.getLogger(__name__)

# The recipe before it chose the fisher criterion (rows "-mag-", measured at commit 90dcc70).
MAGNITUDE = ["--method_args", '{"criterion": "magnitude"}']
# name -> (sparsity, extra flags, seeds); "kd" rows distil from the dense run of the same seed.
PLAN: dict[str, tuple[float, list[str], tuple[int, ...]]] = {
    "dense": (0.0, [], (1, 2, 3)),
    "auto-80": (0.8, [], (1,)),
    "auto-90": (0.9, [], (1,)),
    "auto-95": (0.95, [], (1,)),
    "gmp-80": (0.8, ["--recipe", "none"], (1,)),
    "gmp-90": (0.9, ["--recipe", "none"], (1,)),
    "gmp-95": (0.95, ["--recipe", "none"], (1,)),
    "auto-kd-80": (0.8, ["kd"], (1, 2, 3)),
    "auto-kd-90": (0.9, ["kd"], (1, 2, 3)),
    "auto-kd-95": (0.95, ["kd"], (1,)),
    "auto-mag-80": (0.8, MAGNITUDE, (1,)),
    "auto-mag-90": (0.9, MAGNITUDE, (1,)),
    "auto-mag-95": (0.95, MAGNITUDE, (1,)),
    "auto-kd-mag-80": (0.8, ["kd", *MAGNITUDE], (1, 2, 3)),
    "auto-kd-mag-90": (0.9, ["kd", *MAGNITUDE], (1, 2, 3)),
    "auto-kd-mag-95": (0.95, ["kd", *MAGNITUDE], (1,)),
}


def load_run():
    sys.path.insert(0, os.path.join(ROOT, "examples", "glue"))
    spec = importlib.util.spec_from_file_location("glue_run", os.path.join(ROOT, "examples", "glue", "run.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["glue_run"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def read_runs(path: str) -> list[dict]:
    """The finished runs of a benchmark: one JSON object per line of ``path`` (none yet: [])."""
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def append_run(path: str, row: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")


def write_table(name: str, text: str) -> None:
    """``text`` into benchmarks/results/``name``, and on the screen."""
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, name), "w", encoding="utf-8") as handle:
        handle.write(text)
    print(text)


def finished_runs() -> list[dict]:
    return read_runs(RUNS_FILE)


def run_one(run, row: str, seed: int, options: argparse.Namespace) -> dict:
    sparsity, extra, _ = PLAN[row]
    out = os.path.join(options.output_dir, f"{row}-s{seed}")
    flags = [f for f in extra if f != "kd"]
    if "kd" in extra:  # = --teacher_model_name_or_path auto, reusing the dense run of the same seed
        teacher = os.path.join(options.output_dir, f"dense-s{seed}")
        if not os.path.isfile(os.path.join(teacher, "config.json")):
            raise RuntimeError(f"row {row}: run 'dense' with seed {seed} first (its model is the teacher)")
        flags += ["--model_name_or_path", teacher, "--teacher_model_name_or_path", teacher]
    else:
        flags += ["--teacher_model_name_or_path", "none"]
    args = ["--train_file", os.path.join(DATA, "rotten_tomatoes_full_train.csv"),
            "--validation_file", os.path.join(DATA, "rotten_tomatoes_full_test.csv"),
            "--max_train_samples", str(options.train_size), "--max_seq_length", str(options.max_seq_length),
            "--output_dir", out, "--log_level", "warning", "--disable_tqdm", "True", "--seed", str(seed),
            "--sparsity", str(sparsity), *flags]
    start = time.perf_counter()
    metrics = run.main(args)
    return {"row": row, "seed": seed, "sparsity_target": sparsity, "accuracy": metrics["eval_accuracy"],
            "final_sparsity": metrics["final_sparsity"], "train_runtime_s": metrics.get("train_runtime"),
            "wall_s": time.perf_counter() - start, "train_size": options.train_size,
            "max_seq_length": options.max_seq_length, "flags": flags, "load_avg": os.getloadavg()[0]}


def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    for name in PLAN:
        values = [r["accuracy"] for r in runs if r["row"] == name]
        if not values:
            continue
        rows.append({"row": name, "sparsity": PLAN[name][0], "n": len(values), "mean": statistics.fmean(values),
                     "sd": statistics.stdev(values) if len(values) > 1 else None,
                     "train_runtime_s": statistics.fmean(r["train_runtime_s"] or 0 for r in runs if r["row"] == name)})
    return rows


def write_report(runs: list[dict]) -> None:
    rows = summarise(runs)
    if not rows:
        print("no finished runs yet")
        return
    dense = next((r["mean"] for r in rows if r["row"] == "dense"), None)
    sizes = sorted({(r["train_size"], r["max_seq_length"]) for r in runs})
    lines = [f"all-MiniLM-L6-v2 on Rotten Tomatoes (whole corpus: train subset {', '.join(str(s[0]) for s in sizes)} "
             f"of 10,010, test 2,600 held out, max_seq_length {', '.join(str(s[1]) for s in sizes)}), "
             "examples/glue/run.py defaults (2 epochs, batch 32, LR 1e-4); accuracy mean +- sd over seeds", "",
             "| row | sparsity | seeds | accuracy | vs dense (points) | train runtime (s) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        sd = f" +- {r['sd']:.4f}" if r["sd"] is not None else ""
        gap = f"{100 * (r['mean'] - dense):+.1f}" if dense is not None and r["row"] != "dense" else ""
        lines.append(f"| {r['row']} | {r['sparsity']:.0%} | {r['n']} | {r['mean']:.4f}{sd} | {gap} | {r['train_runtime_s']:.0f} |")
    lines += ["", "Majority-class rate of the test set: 0.5785. Train runtimes: one 2-core CPU, no other heavy job."]
    with open(os.path.join(RESULTS, "glue_minilm.json"), "w", encoding="utf-8") as handle:
        json.dump({"rows": rows, "runs": runs}, handle, indent=1)
    write_table("glue_minilm.md", "\n".join(lines) + "\n")
    plot(rows, dense)


def plot(rows: list[dict], dense) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    styles = {"gmp": ("tab:red", "-", "plain GMP (recipe='none')"), "auto": ("tab:blue", "-", "default (recipe='auto')"),
              "auto-kd": ("tab:green", "-", "default + distillation"),
              "auto-mag": ("tab:blue", ":", "default, magnitude criterion (before)"),
              "auto-kd-mag": ("tab:green", ":", "default + distillation, magnitude (before)")}
    for family, (color, line, label) in styles.items():
        points = [r for r in rows if r["row"].rsplit("-", 1)[0] == family]
        if points:
            ax.errorbar([100 * r["sparsity"] for r in points], [r["mean"] for r in points], linestyle=line,
                        yerr=[r["sd"] or 0 for r in points], marker="o", color=color, label=label, capsize=3)
    if dense is not None:
        ax.axhline(dense, color="black", linestyle="--", label="dense")
        ax.axhspan(dense - 0.02, dense, color="grey", alpha=0.15, label="within 2 points")
    ax.axhline(0.5785, color="grey", linestyle=":", label="majority class")
    ax.set_xlabel("sparsity of the encoder's Linear weights (%)")
    ax.set_ylabel("test accuracy")
    ax.set_title("all-MiniLM-L6-v2, Rotten Tomatoes", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS, "glue_minilm.png"), dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="*", default=list(PLAN), choices=list(PLAN), help="rows of PLAN to run")
    parser.add_argument("--seeds", type=int, nargs="*", help="only these seeds (default: each row's own)")
    parser.add_argument("--train_size", type=int, default=1000, help="fixed subset of the 10,010 training rows")
    parser.add_argument("--max_seq_length", type=int, default=64, help="longest snippet: 72 tokens; 64 cuts 0.07%%")
    parser.add_argument("--output_dir", default="/tmp/hf_sparse_glue_minilm")
    parser.add_argument("--report", action="store_true", help="only rebuild the table and plot")
    options = parser.parse_args()
    if not options.report:
        run = load_run()
        for row in options.rows:
            for seed in options.seeds or PLAN[row][2]:
                done = {(r["row"], r["seed"], r["train_size"]) for r in finished_runs()}
                if (row, seed, options.train_size) in done:
                    continue
                result = run_one(run, row, seed, options)
                append_run(RUNS_FILE, result)
                print(f"{row} seed {seed}: accuracy {result['accuracy']:.4f} ({result['wall_s']:.0f} s)", flush=True)
    write_report(finished_runs())


if __name__ == "__main__":
    main()
