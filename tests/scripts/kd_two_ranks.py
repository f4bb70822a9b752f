"""Two-rank distillation run (launched by tests/training/test_distill_multiprocess.py via accelerate)."""

import copy
import json
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from helpers import TinyMLP, VectorDataset, training_args  # noqa: E402

from hf_sparse import DistillationConfig, SparseTrainer, SparsityConfig  # noqa: E402
from hf_sparse.core.distributed import shutdown_distributed  # noqa: E402


def main(out: str) -> None:
    torch.manual_seed(0)
    student = TinyMLP()
    teacher = copy.deepcopy(student)
    with torch.no_grad():  # a teacher that differs from the student, identical on both ranks
        for p in teacher.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    before = [p.clone() for p in teacher.parameters()]
    args = training_args(out, max_steps=6, logging_steps=1, gradient_accumulation_steps=2,
                         ddp_find_unused_parameters=False)
    trainer = SparseTrainer(
        model=student, args=args, train_dataset=VectorDataset(n=96),
        sparsity_config=SparsityConfig(sparsity=0.5, start=2, end=4, update_every=2, recipe="none"),
        teacher_model=teacher, distillation=DistillationConfig(temperature=2.0, alpha=0.5),
    )
    trainer.train()
    world = dist.get_world_size()
    flat = torch.cat([p.detach().reshape(-1) for p in student.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    result = {
        "world_size": world,
        "same_student_on_ranks": all(torch.equal(gathered[0], g) for g in gathered),
        "teacher_unchanged": all(torch.equal(a, b) for a, b in zip(before, teacher.parameters())),
        "teacher_eval": not teacher.training,
        "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
        "sparsity": trainer.sparsifier.sparsity,
    }
    if trainer.args.process_index == 0:
        with open(os.path.join(out, "result.json"), "w") as handle:
            json.dump(result, handle)


if __name__ == "__main__":
    main(sys.argv[1])
    shutdown_distributed()
    # The results are on disk; skip interpreter teardown, where a leftover native thread has been
    # seen to abort a rank ("terminate called without an active exception") after the work succeeded.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
