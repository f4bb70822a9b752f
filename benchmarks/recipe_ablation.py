"""What each choice of the sparse-aware recipe is worth on the GLUE example's offline data (90%).

    python benchmarks/recipe_ablation.py               # every row (about 1.5 hours on a quiet 2-core CPU)
    python benchmarks/recipe_ablation.py --rows dense-1k recipe-kd-1k
    python benchmarks/recipe_ablation.py --report      # rebuild the table from finished runs

Each row is one ``examples/glue/run.py`` run on the bundled sample (seed 42, 600 eval sentences, so
+-1.8 points of standard error per figure), differing only in the flags shown. Rows that start
``from the dense run`` prune a copy of the same-size dense row while distilling from it (what
``--teacher_model_name_or_path auto`` does in one run). Finished runs are lines of
benchmarks/results/recipe_ablation_runs.jsonl; the table goes to recipe_ablation.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from glue_minilm import RESULTS, load_run  # noqa: E402

RUNS_FILE = os.path.join(RESULTS, "recipe_ablation_runs.jsonl")
PLAIN = ["--recipe", "none", "--teacher_model_name_or_path", "none"]
RECIPE = ["--allocation", "global", "--lr_rewinding", "linear"]
# name -> (what it tests, flags); "{dense-1k}" stands for that row's output folder.
ROWS: dict[str, tuple[str, list[str]]] = {
    "dense-1k": ("dense, 1,000 training rows, 2 epochs", ["--sparsity", "0", "--max_train_samples", "1000"]),
    "gmp-1k": ("plain GMP 1x from the pretrained model (pooler dense)",
               ["--sparsity", "0.9", "--max_train_samples", "1000", *PLAIN, "--update_every", "5"]),
    "recipe-jump-1k": ("global + first step to 70% + LR rewinding, 3x, from the pretrained model, no teacher",
                       ["--sparsity", "0.9", "--max_train_samples", "1000", "--recipe", "none", *RECIPE,
                        "--teacher_model_name_or_path", "none", "--method_args", '{"initial_jump": 0.7}',
                        "--schedule_scale", "3", "--update_every", "6"]),
    "recipe-jump-kd-1k": ("the same, 3x, from the dense run, distilling from it",
                          ["--sparsity", "0.9", "--max_train_samples", "1000", "--recipe", "none", *RECIPE,
                           "--method_args", '{"initial_jump": 0.7}', "--schedule_scale", "3", "--update_every", "6",
                           "--model_name_or_path", "{dense-1k}", "--teacher_model_name_or_path", "{dense-1k}"]),
    "dense-3k": ("dense, all 3,000 training rows, 2 epochs", ["--sparsity", "0"]),
    "recipe-kd-3k": ("the recipe (global, LR rewinding, 8 updates), 2x, from the dense run, distilling from it "
                     "(= the GLUE example's default)",
                     ["--sparsity", "0.9", "--schedule_scale", "2", "--model_name_or_path", "{dense-3k}",
                      "--teacher_model_name_or_path", "{dense-3k}"]),
    "uniform-kd-3k": ("the same with uniform allocation",
                      ["--sparsity", "0.9", "--schedule_scale", "2", "--allocation", "uniform",
                       "--model_name_or_path", "{dense-3k}", "--teacher_model_name_or_path", "{dense-3k}"]),
    "end50-kd-3k": ("the same (global), pruning ramp over the first 50% instead of 75%",
                    ["--sparsity", "0.9", "--schedule_scale", "2", "--end", "0.5",
                     "--model_name_or_path", "{dense-3k}", "--teacher_model_name_or_path", "{dense-3k}"]),
    "recipe-kd-3k-4x": ("the recipe, 4x instead of 2x",
                        ["--sparsity", "0.9", "--schedule_scale", "4", "--model_name_or_path", "{dense-3k}",
                         "--teacher_model_name_or_path", "{dense-3k}"]),
}


def finished() -> list[dict]:
    if not os.path.isfile(RUNS_FILE):
        return []
    with open(RUNS_FILE, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def report() -> None:
    runs = {r["row"]: r for r in finished()}
    lines = ["GLUE example offline data (bundled Rotten Tomatoes sample, 600 eval sentences), all-MiniLM-L6-v2, "
             "90% of the encoder's Linear weights, seed 42, one run per row", "",
             "| row | what | accuracy | vs its dense row (points) | train runtime (s) |", "| --- | --- | ---: | ---: | ---: |"]
    for name, (what, _) in ROWS.items():
        run = runs.get(name)
        if run is None or run["accuracy"] != run["accuracy"]:  # not run, or stopped (NaN)
            note = f" ({run['note']})" if run and run.get("note") else ""
            lines.append(f"| {name} | {what}{note} | {'stopped' if run else 'not run'} | | |")
            continue
        dense = runs.get("dense-3k" if name.endswith("3k") else "dense-1k")
        gap = f"{100 * (run['accuracy'] - dense['accuracy']):+.1f}" if dense and dense is not run else ""
        note = f" ({run['note']})" if run.get("note") else ""
        lines.append(f"| {name} | {what}{note} | {run['accuracy']:.4f} | {gap} | {run['train_runtime_s']:.0f} |")
    lines += ["", "Train runtimes were measured on a 2-core CPU shared with other jobs (load 2-10): compare rows by "
              "accuracy, not time. Earlier figures on the same 1,000 rows (benchmarks/results/glue_minilm.md at commit "
              "7ac2acf): plain GMP with the pooler pruned 0.505; the bert-glue-extended preset (uniform, first step to "
              "70%, 3x, LR rewinding, from the pretrained model, no teacher) 0.670."]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(RESULTS, "recipe_ablation.md"), "w", encoding="utf-8") as handle:
        handle.write(text)
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--output_dir", default="/tmp/hf_sparse_recipe_ablation")
    parser.add_argument("--report", action="store_true")
    options = parser.parse_args()
    if not options.report:
        run = load_run()
        for name in options.rows:
            if any(r["row"] == name for r in finished()):
                continue
            folders = {f"{{{k}}}": os.path.join(options.output_dir, k) for k in ROWS}
            flags = [folders.get(f, f) for f in ROWS[name][1]]
            start = time.perf_counter()
            metrics = run.main(["--output_dir", os.path.join(options.output_dir, name), "--log_level", "warning",
                                "--disable_tqdm", "True", "--seed", "42", *flags])
            row = {"row": name, "accuracy": metrics["eval_accuracy"], "final_sparsity": metrics["final_sparsity"],
                   "train_runtime_s": metrics.get("train_runtime"), "wall_s": time.perf_counter() - start, "flags": flags}
            with open(RUNS_FILE, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")
    report()


if __name__ == "__main__":
    main()
