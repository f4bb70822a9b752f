"""GLUE example offline default at dense / 80% / 90%: accuracy and wall time (examples/glue/run.py).

    python benchmarks/glue_minilm.py            # reduced size for a shared 2-core CPU (~10 min)
    python benchmarks/glue_minilm.py --full     # the offline default's size (1,000 examples, 2 epochs)

Model: the packaged all-MiniLM-L6-v2; data: the bundled Rotten Tomatoes sample (examples/glue/data).
Rows: dense (sparsity 0), GMP at 80% and 90% (the default method), and, where this hf_sparse has
presets (``SparsityConfig.from_preset``), the extended recipe ``bert-glue-extended`` at 80%/90%
(its ``schedule_scale`` makes those runs longer). Every row uses the same data, seed, batch size,
learning rate and ``update_every``. Writes benchmarks/results/glue_minilm.{json,md,png}.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
logger = logging.getLogger(__name__)

REDUCED = ["--max_train_samples", "256", "--max_eval_samples", "300", "--num_train_epochs", "1",
           "--per_device_train_batch_size", "16", "--max_seq_length", "64", "--update_every", "2"]
FULL = ["--update_every", "5"]


def load_run():
    sys.path.insert(0, os.path.join(ROOT, "examples", "glue"))
    spec = importlib.util.spec_from_file_location("glue_run", os.path.join(ROOT, "examples", "glue", "run.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["glue_run"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def rows(has_presets: bool) -> list[tuple[str, list[str]]]:
    out = [("dense", ["--sparsity", "0"]), ("gmp 80%", ["--sparsity", "0.8"]), ("gmp 90%", ["--sparsity", "0.9"])]
    if has_presets:
        out += [(f"extended {s}%", ["--preset", "bert-glue-extended", "--sparsity", f"0.{s // 10}"]) for s in (80, 90)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="the offline default's size instead of the reduced one")
    parser.add_argument("--output_dir", default="/tmp/hf_sparse_glue_minilm")
    options = parser.parse_args()
    run = load_run()
    has_presets = hasattr(run.SparsityConfig, "from_preset")
    size = FULL if options.full else REDUCED
    results = []
    for name, extra in rows(has_presets):
        out = os.path.join(options.output_dir, name.replace(" ", "_").replace("%", ""))
        args = ["--output_dir", out, "--log_level", "warning", "--disable_tqdm", "True", "--seed", "42", *size, *extra]
        start = time.perf_counter()
        metrics = run.main(args)
        wall = time.perf_counter() - start
        row = {"config": name, "accuracy": metrics["eval_accuracy"], "sparsity": metrics["final_sparsity"],
               "train_samples": metrics.get("train_samples"), "wall_s": wall,
               "train_runtime_s": metrics.get("train_runtime"), "args": extra}
        results.append(row)
        print(f"{name:>14}: accuracy {row['accuracy']:.4f}  sparsity {row['sparsity']:.3f}  wall {wall:.0f} s", flush=True)

    os.makedirs(RESULTS, exist_ok=True)
    header = {"size": "full offline default" if options.full else "reduced (see REDUCED in the script)",
              "size_args": size, "presets_available": has_presets}
    with open(os.path.join(RESULTS, "glue_minilm.json"), "w") as handle:
        json.dump({**header, "rows": results}, handle, indent=1)
    lines = [f"GLUE example, all-MiniLM-L6-v2 on the bundled Rotten Tomatoes sample, {header['size']}: "
             f"`{' '.join(size)}`", "", "| config | accuracy | final sparsity | train runtime (s) | wall (s) |",
             "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['config']} | {r['accuracy']:.4f} | {r['sparsity']:.3f} | {r['train_runtime_s'] or 0:.0f} | "
              f"{r['wall_s']:.0f} |" for r in results]
    if not has_presets:
        lines += ["", "Extended recipe (`--preset bert-glue-extended`) not measured: this hf_sparse has no presets."]
    lines += ["", f"Machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end (wall times scale with load)."]
    table = "\n".join(lines) + "\n"
    with open(os.path.join(RESULTS, "glue_minilm.md"), "w") as handle:
        handle.write(table)
    print("\n" + table)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.bar([r["config"] for r in results], [r["accuracy"] for r in results], color="tab:blue")
        ax.set_ylabel("validation accuracy")
        ax.set_ylim(0.4, 1.0)
        ax.set_title("MiniLM-L6 on Rotten Tomatoes sample (hf_sparse GLUE example)", fontsize=9)
        for i, r in enumerate(results):
            ax.text(i, r["accuracy"] + 0.01, f"{r['accuracy']:.3f}\n{r['wall_s']:.0f}s", ha="center", fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(RESULTS, "glue_minilm.png"), dpi=120)
    except ImportError:
        logger.warning("matplotlib missing: no PNG")


if __name__ == "__main__":
    main()
