"""Exact global mask update on 100M weights: normal scores and the degenerate exact-tie cases.

Scores are |w| of 100M random-normal weights in BERT-base-like matrices (48 of 768x768, 12 of
3072x768, 12 of 768x3072, and the rest in one tensor); one global update keeps 10% (90% sparsity)
with ``hf_sparse.core.masks.threshold_masks`` (exact count, ties by flat order). Cases:

- ``normal``: distinct scores;
- ``all tied``: every score equal (the worst tie case: the k-th value sits in a 100M-long block);
- ``pruned -inf``: 95% of the scores at ``-inf`` (already pruned) and 10% to keep, so the
  threshold is ``-inf`` and most ties are kept in flat order.

The floor is one ``abs()`` pass over the same weights. Everything runs interleaved in one process
(``hf_sparse.inference.timing.interleaved_rounds``), so a busy machine slows every case alike:
compare the ratios, and read the seconds with the load average printed beside them.

    python benchmarks/mask_update_speed.py [--rounds 3] [--numel 100000000]

Writes benchmarks/results/mask_update_speed.md. Goals (issue 26): normal <= 0.3 s on a quiet
2-core machine (~2.3 abs passes); tie cases <= 2x the normal case.
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch

from hf_sparse.core.masks import threshold_masks
from hf_sparse.inference.timing import interleaved_rounds
from hf_sparse.io.files import atomic_write_text

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def weights(numel: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    shapes = [(768, 768)] * 48 + [(3072, 768)] * 12 + [(768, 3072)] * 12
    out: dict[str, torch.Tensor] = {}
    used = 0
    for i, shape in enumerate(shapes):
        if used + shape[0] * shape[1] > numel:
            break
        out[f"layer{i}"] = torch.randn(shape)
        used += shape[0] * shape[1]
    if numel > used:
        out["rest"] = torch.randn(numel - used)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--numel", type=int, default=100_000_000)
    parser.add_argument("--keep", type=float, default=0.1)
    args = parser.parse_args()
    w = weights(args.numel)
    n_keep = int(args.numel * args.keep)
    normal = {k: v.abs() for k, v in w.items()}
    tied = {k: torch.ones_like(v) for k, v in w.items()}
    g = torch.Generator().manual_seed(1)
    pruned = {k: torch.where(torch.rand(v.shape, generator=g) < 0.95, torch.full_like(v, float("-inf")), v) for k, v in normal.items()}
    cases = {
        "abs pass (floor)": lambda: [v.abs() for v in w.values()],
        "normal": lambda: threshold_masks(normal, n_keep),
        "all tied": lambda: threshold_masks(tied, n_keep),
        "pruned -inf": lambda: threshold_masks(pruned, n_keep),
    }
    for name, scores in (("normal", normal), ("all tied", tied), ("pruned -inf", pruned)):  # exact counts, checked once
        kept = sum(int(m.sum()) for m in threshold_masks(scores, n_keep).values())
        assert kept == n_keep, (name, kept, n_keep)
    times = interleaved_rounds(cases, args.rounds, warmup=1)
    median = {k: statistics.median(v) for k, v in times.items()}
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    lines = [
        f"# Exact global mask update, {args.numel / 1e6:.0f}M scores, keep {args.keep:.0%}",
        "",
        f"`python benchmarks/mask_update_speed.py --rounds {args.rounds}`; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} logical CPUs shared with other jobs "
        f"(load average {load}); cases interleaved in one process, median of {args.rounds} rounds.",
        "",
        "| case | seconds | x abs pass | x normal |",
        "|---|---|---|---|",
    ]
    for name, seconds in median.items():
        lines.append(f"| {name} | {seconds:.3f} | {seconds / median['abs pass (floor)']:.2f} | {seconds / median['normal']:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(RESULTS, exist_ok=True)
    atomic_write_text(os.path.join(RESULTS, "mask_update_speed.md"), text)


if __name__ == "__main__":
    main()
