"""The README's main job, exactly as a user runs it, over several seeds: sparse vs dense, and its time.

    python benchmarks/main_job.py                 # seeds 42 43 44 (about 10 minutes each on a quiet 2-core CPU)
    python benchmarks/main_job.py --seeds 42      # one seed; finished seeds are kept and skipped
    python benchmarks/main_job.py --report        # rebuild the table from finished runs

Each run is ``python examples/glue/run.py --seed S`` with no other flag (the offline default: dense
fine-tuning, then the 90% sparse run distilling from it, teacher auto). The dense figure is the dense run
of the same seed inside the same job. Finished runs are lines of benchmarks/results/main_job_runs.jsonl; the
table (mean +- sd over seeds) goes to main_job.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from glue_minilm import RESULTS, append_run, load_run, read_runs, write_table  # noqa: E402

RUNS_FILE = os.path.join(RESULTS, "main_job_runs.jsonl")


def finished() -> list[dict]:
    return read_runs(RUNS_FILE)


def mean_sd(values: list[float]) -> str:
    sd = f" +- {statistics.stdev(values):.4f}" if len(values) > 1 else ""
    return f"{statistics.fmean(values):.4f}{sd}"


def report() -> None:
    runs = finished()
    if not runs:
        print("no finished runs yet")
        return
    lines = ["`python examples/glue/run.py --seed S` (no other flag): all-MiniLM-L6-v2, 3,000 bundled Rotten Tomatoes "
             "sentences, 600 eval sentences (+-1.8 points standard error per run), 90% of the encoder's Linear weights",
             "", "| seed | dense | sparse 90% | gap (points) | dense train (s) | sparse train (s) | job wall (s) |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in runs:
        lines.append(f"| {r['seed']} | {r['dense']:.4f} | {r['sparse']:.4f} | {100 * (r['sparse'] - r['dense']):+.1f} | "
                     f"{r['dense_train_s']:.0f} | {r['sparse_train_s']:.0f} | {r['wall_s']:.0f} |")
    gaps = [100 * (r["sparse"] - r["dense"]) for r in runs]
    gap = f"{statistics.fmean(gaps):+.1f}" + (f" +- {statistics.stdev(gaps):.1f}" if len(gaps) > 1 else "")
    lines.append(f"| mean +- sd ({len(runs)}) | {mean_sd([r['dense'] for r in runs])} | "
                 f"{mean_sd([r['sparse'] for r in runs])} | {gap} | | | |")
    loads = ", ".join(f"{r['load_avg']:.1f}" for r in runs)
    lines += ["", f"CPU load average when each run ended: {loads}."]
    write_table("main_job.md", "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="*", default=[42, 43, 44])
    parser.add_argument("--output_dir", default="/tmp/hf_sparse_main_job")
    parser.add_argument("--report", action="store_true")
    options = parser.parse_args()
    if not options.report:
        run = load_run()
        for seed in options.seeds:
            if any(r["seed"] == seed for r in finished()):
                continue
            start = time.perf_counter()
            metrics = run.main(["--output_dir", os.path.join(options.output_dir, f"seed{seed}"), "--seed", str(seed),
                                "--log_level", "warning", "--disable_tqdm", "True"])
            row = {"seed": seed, "dense": metrics["dense_eval_accuracy"], "sparse": metrics["eval_accuracy"],
                   "final_sparsity": metrics["final_sparsity"], "dense_train_s": metrics["dense_train_runtime"],
                   "sparse_train_s": metrics["train_runtime"], "wall_s": time.perf_counter() - start,
                   "load_avg": os.getloadavg()[0]}
            append_run(RUNS_FILE, row)
            print(f"seed {seed}: dense {row['dense']:.4f}, sparse {row['sparse']:.4f} ({row['wall_s']:.0f} s)", flush=True)
    report()


if __name__ == "__main__":
    main()
