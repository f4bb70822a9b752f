"""Sparse FSDP2 vs dense FSDP2: per-rank peak memory and step time, side by side (2 CPU ranks).

    python benchmarks/fsdp_overhead.py [--steps 12] [--out benchmarks/results/fsdp_overhead]

A BERT-base-sized model (~110M parameters, built from config, nothing downloads) trained by the
plain ``Trainer`` (dense) and by ``SparseTrainer`` (GMP 90%, global allocation: the heaviest mask
update, one exact threshold over all targeted weights of both ranks) under FSDP2, each in its own
``torch.distributed.run`` launch of 2 CPU ranks (the test-only CPU patch ``hf_sparse.testing_utils.enable_cpu_fsdp``).

- memory: each rank's peak RSS while training (a 5 ms sampler thread from train begin; the
  unsharded model built before sharding is the same in both modes and is not counted);
- step time: median of the non-update steps, the one mask-update step, and the mean step time at
  ``update_every=100`` (99 plain steps + 1 update step), sparse over dense.
The update lands on step ``--update-step``; the masks are applied after every step in both cases.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _child(mode: str, steps: int, update_step: int, out: str) -> None:
    import psutil
    import torch
    import torch.distributed as dist
    from torch.utils.data import Dataset
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

    from hf_sparse import SparseTrainer, SparsityConfig
    from hf_sparse.testing_utils import enable_cpu_fsdp

    class Tokens(Dataset):
        def __init__(self, n: int, seq: int = 32):
            g = torch.Generator().manual_seed(0)
            self.ids = torch.randint(1, 30000, (n, seq), generator=g)

        def __len__(self):
            return len(self.ids)

        def __getitem__(self, i):
            return {"input_ids": self.ids[i], "attention_mask": torch.ones_like(self.ids[i]), "labels": int(self.ids[i, 0] % 2)}

    class Probe(TrainerCallback):
        """Step times and a 5 ms RSS sampler from train begin to train end."""

        def __init__(self):
            self.times: list[float] = []
            self.peak = 0
            self._stop = threading.Event()
            self._process = psutil.Process()

        def _sample(self):
            while not self._stop.is_set():
                self.peak = max(self.peak, self._process.memory_info().rss)
                time.sleep(0.005)

        def on_train_begin(self, args, state, control, **kwargs):
            self.begin_rss = self._process.memory_info().rss
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

        def on_step_begin(self, args, state, control, **kwargs):
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self._t)

        def on_train_end(self, args, state, control, **kwargs):
            self._stop.set()
            self._thread.join()

    enable_cpu_fsdp()
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig())  # bert-base shape, random init
    n_params = sum(p.numel() for p in model.parameters())
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix=f"fsdp_{mode}_"), max_steps=steps, per_device_train_batch_size=2,
        learning_rate=1e-4, logging_steps=1000, save_strategy="no", report_to=[], use_cpu=True, seed=0,
        disable_tqdm=True, dataloader_num_workers=0, fsdp=True,
        fsdp_config={"version": 2, "transformer_layer_cls_to_wrap": ["BertLayer"]},
    )  # fmt: skip
    probe = Probe()
    common = dict(model=model, args=args, train_dataset=Tokens(2 * 2 * steps), callbacks=[probe])
    if mode == "dense":
        trainer = Trainer(**common)
    else:
        config = SparsityConfig(method="gmp", sparsity=0.9, allocation="global", start=update_step, end=update_step,
                                update_every=100)  # fmt: skip
        trainer = SparseTrainer(sparsity_config=config, **common)
    trainer.train()
    result = {
        "mode": mode,
        "rank": dist.get_rank(),
        "params": n_params,
        "step_times": probe.times,
        "peak_rss": probe.peak,
        "begin_rss": probe.begin_rss,
        "sparsity": trainer.sparsifier.sparsity if mode == "sparse" else 0.0,
        "targeted": sum(p.numel() for p in trainer.sparsifier.params.values()) if mode == "sparse" else 0,
    }
    with open(os.path.join(out, f"{mode}_rank{dist.get_rank()}.json"), "w", encoding="utf-8") as handle:
        json.dump(result, handle)
    dist.barrier()
    dist.destroy_process_group()


def _launch(mode: str, steps: int, update_step: int, out: str) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__,
               "--child", mode, "--steps", str(steps), "--update-step", str(update_step), "--raw", out]  # fmt: skip
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    subprocess.run(command, env=env, check=True, timeout=1200, start_new_session=True)


def _report(raw: str, update_step: int) -> dict:
    runs = {}
    for mode in ("dense", "sparse"):
        runs[mode] = [json.load(open(os.path.join(raw, f"{mode}_rank{r}.json"), encoding="utf-8")) for r in (0, 1)]
    index = update_step - 1  # step_times[0] is step 1

    def plain(run):  # step 1 is warm-up; the update step is counted apart
        return statistics.median(t for i, t in enumerate(run["step_times"]) if i not in (0, index))

    rows = []
    for rank in (0, 1):
        dense, sparse = runs["dense"][rank], runs["sparse"][rank]
        d_plain, s_plain = plain(dense), plain(sparse)
        s_update = sparse["step_times"][index]
        d_update = dense["step_times"][index]
        rows.append({
            "rank": rank,
            "dense_peak_mib": dense["peak_rss"] / 2**20,
            "sparse_peak_mib": sparse["peak_rss"] / 2**20,
            "peak_ratio": sparse["peak_rss"] / dense["peak_rss"],
            "dense_step_s": d_plain,
            "sparse_step_s": s_plain,
            "plain_step_ratio": s_plain / d_plain,
            "update_step_s": s_update,
            "dense_same_step_s": d_update,
            "amortised_ratio_every_100": (99 * s_plain + s_update) / (99 * d_plain + d_update),
        })  # fmt: skip
    return {"params": runs["dense"][0]["params"], "targeted": runs["sparse"][0]["targeted"],
            "sparsity": runs["sparse"][0]["sparsity"], "rows": rows}  # fmt: skip


def _markdown(summary: dict, steps: int) -> str:
    lines = [
        "# Sparse FSDP2 vs dense FSDP2 (2 CPU ranks, gloo)",
        "",
        f"BERT-base shape from config ({summary['params'] / 1e6:.1f}M parameters; {summary['targeted'] / 1e6:.1f}M targeted), "
        f"batch 2 x 32 tokens per rank, {steps} steps, OMP_NUM_THREADS=1 per rank. Sparse: GMP to "
        f"{summary['sparsity']:.3f} with one global-threshold mask update (both ranks, exact). Measured on a shared "
        "2-core VM with other jobs running: step times carry +-10-20% noise.",
        "",
        "| rank | peak RSS dense (MiB) | peak RSS sparse (MiB) | ratio | step dense (s) | step sparse (s) | ratio | "
        "update step (s) | dense same step (s) | mean step ratio at update_every=100 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        lines.append(
            f"| {r['rank']} | {r['dense_peak_mib']:.0f} | {r['sparse_peak_mib']:.0f} | {r['peak_ratio']:.3f} | "
            f"{r['dense_step_s']:.3f} | {r['sparse_step_s']:.3f} | {r['plain_step_ratio']:.3f} | "
            f"{r['update_step_s']:.3f} | {r['dense_same_step_s']:.3f} | {r['amortised_ratio_every_100']:.3f} |"
        )
    lines += ["", "Goals (issue 16): peak memory <= 1.10x, step time at update_every=100 <= 1.05x.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--update-step", type=int, default=6)
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "fsdp_overhead"))
    parser.add_argument("--child", choices=["dense", "sparse"])
    parser.add_argument("--raw")
    args = parser.parse_args()
    if args.child:
        return _child(args.child, args.steps, args.update_step, args.raw)
    raw = tempfile.mkdtemp(prefix="fsdp_overhead_")
    for mode in ("dense", "sparse"):
        _launch(mode, args.steps, args.update_step, raw)
    summary = _report(raw, args.update_step)
    text = _markdown(summary, args.steps)
    with open(args.out + ".json", "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=1)
    with open(args.out + ".md", "w", encoding="utf-8") as handle:
        handle.write(text)
    print(text)


if __name__ == "__main__":
    main()
