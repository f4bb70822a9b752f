"""FSDP2 checkpoints bind the Trainer's per-rank files to one save (2 CPU ranks; results in OUT_DIR/results.json).

Run by tests/training/test_fsdp_binding.py as
``python -m torch.distributed.run --standalone --nproc_per_node 2 fsdp_binding.py OUT_DIR``.

Two runs (``SHARDED_STATE_DICT`` and ``FULL_STATE_DICT``) save checkpoints at steps 4 and 8. Copies of
checkpoint-4 then get one file or folder of checkpoint-8 (a rank's model or optimizer shard, a rank's
masks and state, the rank-0 model file) and a resume from each is attempted: every rank must refuse
it with the same error, naming the file, before the Trainer loads anything. The untouched
checkpoint resumes.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/ for helpers
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tests/scripts/ for fsdp_train

import torch.distributed as dist  # noqa: E402

from fsdp_train import fsdp_args  # noqa: E402
from helpers import PairDataset, tiny_bert  # noqa: E402
from hf_sparse import SparseTrainer, SparsityConfig  # noqa: E402
from hf_sparse.core.distributed import shutdown_distributed  # noqa: E402
from hf_sparse.testing_utils import enable_cpu_fsdp  # noqa: E402

SPEC = dict(recipe="none", method="gmp", sparsity=0.8, start=1, end=6, update_every=1,
            targets=[r"encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|intermediate\.dense|output\.dense)$"])
RANK1 = "hf_sparse_shards/rank-00001-of-00002"
MUTATIONS = {  # name: (state_dict_type, what is copied from checkpoint-8 into checkpoint-4)
    "model shard of rank 1": ("SHARDED_STATE_DICT", "pytorch_model_fsdp_0/__1_0.distcp"),
    "model shard metadata": ("SHARDED_STATE_DICT", "pytorch_model_fsdp_0/.metadata"),
    "optimizer shard of rank 0": ("SHARDED_STATE_DICT", "optimizer_0/__0_0.distcp"),
    "masks and state of rank 1": ("SHARDED_STATE_DICT", RANK1),
    "masks of rank 1": ("SHARDED_STATE_DICT", f"{RANK1}/sparse_masks.safetensors"),
    "rng state of rank 1": ("SHARDED_STATE_DICT", "rng_state_1.pth"),
    "full model file": ("FULL_STATE_DICT", "pytorch_model_fsdp.bin"),
    "masks and state of rank 1 (full)": ("FULL_STATE_DICT", RANK1),
}


def trainer(out: str, state_dict_type: str, **kwargs) -> SparseTrainer:
    return SparseTrainer(model=tiny_bert(), args=fsdp_args(out, state_dict_type, **kwargs),
                         train_dataset=PairDataset(n=96), sparsity_config=SparsityConfig(**SPEC))


def resume(out: str, state_dict_type: str, checkpoint: str) -> dict:
    try:
        run = trainer(out, state_dict_type)
        run.train(resume_from_checkpoint=checkpoint)
    except ValueError as err:
        return {"refused": True, "error": str(err)}
    return {"refused": False, "error": None, "step": run.state.global_step}


def main(out: str) -> None:
    enable_cpu_fsdp()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    results: dict = {"world_size": dist.get_world_size()}
    runs = {}
    for kind in ("SHARDED_STATE_DICT", "FULL_STATE_DICT"):
        runs[kind] = os.path.join(out, kind)
        trainer(runs[kind], kind, save_strategy="steps", save_steps=4).train()
        results[f"files {kind}"] = sorted(os.listdir(os.path.join(runs[kind], "checkpoint-4")))
    for i, (name, (kind, copied)) in enumerate(MUTATIONS.items()):
        folder = os.path.join(out, f"mixed-{i}")
        if rank == 0:
            shutil.copytree(os.path.join(runs[kind], "checkpoint-4"), folder)
            source, target = os.path.join(runs[kind], "checkpoint-8", copied), os.path.join(folder, copied)
            if os.path.isdir(source):
                shutil.rmtree(target)
                shutil.copytree(source, target)
            else:
                shutil.copy2(source, target)
        dist.barrier()
        result = resume(os.path.join(out, f"resumed-{i}"), kind, folder)
        errors = [None, None]
        dist.all_gather_object(errors, result["error"])
        results[name] = {**result, "same_error_on_every_rank": errors[0] == errors[1], "copied": copied}
    for kind in ("SHARDED_STATE_DICT", "FULL_STATE_DICT"):
        results[f"untouched {kind}"] = resume(os.path.join(out, f"untouched-{kind}"), kind, os.path.join(runs[kind], "checkpoint-4"))
    if rank == 0:
        with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=1)
    shutdown_distributed()


if __name__ == "__main__":
    main(sys.argv[1])
