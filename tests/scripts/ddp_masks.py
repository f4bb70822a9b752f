"""Two ranks, one launch: are the masks bitwise equal on every rank after every step?

Run by tests/core/test_distributed.py as
``accelerate launch --multi_gpu --num_processes 2 ... ddp_masks.py OUT_DIR``.
It trains a tiny MLP with gmp, set, rigl and dst_ee in turn (several mask updates each) with
``sync_masks=False``, so equality proves the decisions themselves agree (all-reduced gradients,
identically seeded generators), not just the rank-0 broadcast. Two controls show the check can
fail and that the broadcast repairs it: SET with a different seed per rank, without and with sync.
Rank 0 writes ``OUT_DIR/results.json``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/ for helpers

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from helpers import TinyMLP, VectorDataset, training_args  # noqa: E402
from hf_sparse import SparseTrainer, SparsityConfig  # noqa: E402
from hf_sparse.core.distributed import shutdown_distributed  # noqa: E402
from hf_sparse.core.distributed import gather_masks_equal, world_size  # noqa: E402

DST = dict(sparsity=0.8, allocation="erk", start=2, end=10, update_every=2)
SCENARIOS = {
    "gmp": dict(method="gmp", sparsity=0.8, start=2, end=8, update_every=2, recipe="none"),
    "set": dict(method="set", **DST),
    "rigl": dict(method="rigl", **DST),
    "dst_ee": dict(method="dst_ee", **DST),
    "set_rank_seeds_unsynced": dict(method="set", rank_seed=True, **DST),  # must differ
    "set_rank_seeds_synced": dict(method="set", rank_seed=True, sync=True, **DST),  # broadcast repairs it
}


class MaskAgreement(TrainerCallback):
    """After train begin and every optimizer step, all ranks compare their masks (a collective)."""

    def __init__(self, trainer: SparseTrainer):
        self.sparsifier = trainer.sparsifier
        self.checks: list[dict] = []
        self._last = None

    def _check(self, step: int) -> None:
        masks = self.sparsifier.masks
        changed = self._last is not None and any(not torch.equal(self._last[n], m) for n, m in masks.items())
        self._last = {n: m.clone() for n, m in masks.items()}
        self.checks.append({"step": step, "equal": gather_masks_equal(masks), "changed": changed})

    def on_train_begin(self, args, state, control, **kwargs):
        self._check(0)

    def on_step_end(self, args, state, control, **kwargs):
        self._check(state.global_step)


def run(name: str, spec: dict, out_dir: str) -> dict:
    spec = dict(spec)
    rank = dist.get_rank()
    seed = rank if spec.pop("rank_seed", False) else 0
    sync = spec.pop("sync", False)
    config = SparsityConfig(seed=seed, sync_masks=sync, **spec)
    torch.manual_seed(0)
    trainer = SparseTrainer(
        model=TinyMLP(dim=16, hidden=64),
        args=training_args(
            os.path.join(out_dir, name),
            max_steps=10,
            per_device_train_batch_size=8,
            learning_rate=0.05,
            ddp_find_unused_parameters=False,
            logging_steps=100,
        ),
        train_dataset=VectorDataset(n=160),
        sparsity_config=config,
    )
    checker = MaskAgreement(trainer)
    trainer.add_callback(checker)
    trainer.train()
    return {
        "all_equal": all(c["equal"] for c in checker.checks),
        "checks": checker.checks,
        "updates": trainer.sparsifier.update_count,
        "masks_changed_at": [c["step"] for c in checker.checks if c["changed"]],
        "sparsity": trainer.sparsifier.sparsity,
    }


def main() -> None:
    out_dir = sys.argv[1]
    if not dist.is_initialized():  # the Trainer would init it lazily; we need the rank first
        dist.init_process_group("gloo")
    assert world_size() == 2, f"expected 2 ranks, got {world_size()}"
    results = {"world_size": world_size()}
    with tempfile.TemporaryDirectory() as scratch:
        for name, spec in SCENARIOS.items():
            results[name] = run(name, spec, scratch)
    if dist.get_rank() == 0:
        with open(os.path.join(out_dir, "results.json"), "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
    shutdown_distributed()
    # The results are on disk; skip interpreter teardown, where a leftover native thread has been
    # seen to abort a rank ("terminate called without an active exception") after the work succeeded.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
