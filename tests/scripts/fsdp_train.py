"""SparseTrainer under FSDP2 on 2 CPU ranks, one launch, many checks (results in OUT_DIR/results.json).

Run by tests/training/test_fsdp.py as
``python -m torch.distributed.run --standalone --nproc_per_node 2 fsdp_train.py OUT_DIR``.

accelerate does not turn FSDP on for CPU ranks; ``hf_sparse.testing_utils.enable_cpu_fsdp`` is the test-only patch.

Per scenario (a tiny BERT, every BertLayer its own FSDP2 group):
- after every optimizer step, the gathered weights are exactly 0 where the gathered masks prune,
  and the local Adam moments are 0 there;
- at every mask update, the gathered new masks equal an unsharded reference method (same class,
  same config, the whole weights/gradients/state) bit for bit;
- the engine holds sharded DTensor parameters and masks shaped like the local shards.
Then: resume from a checkpoint equals the uninterrupted run; ``save_model()`` with
``SHARDED_STATE_DICT`` writes a folder that plain ``from_pretrained`` and ``load_sparse`` read.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/ for helpers

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from helpers import PairDataset, tiny_bert, training_args  # noqa: E402
from hf_sparse import SparseTrainer, SparsityConfig, load_sparse  # noqa: E402
from hf_sparse.core.distributed import gather_rows, local, shutdown_distributed  # noqa: E402
from hf_sparse.core.reduction import LOCAL, use  # noqa: E402
from hf_sparse.core.targets import find_targets  # noqa: E402
from hf_sparse.registry import get_method_class  # noqa: E402
from hf_sparse.testing_utils import enable_cpu_fsdp  # noqa: E402

STEPS = 8
COMMON = dict(recipe="none", start=1, end=6, update_every=1, targets=[r"encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|intermediate\.dense|output\.dense)$"])
SCENARIOS = {
    "gmp_uniform": dict(method="gmp", sparsity=0.8, allocation="uniform"),
    "gmp_global": dict(method="gmp", sparsity=0.8, allocation="global"),  # + a FULL_STATE_DICT checkpoint
    # the recipe's criterion: the running mean of squared gradients lives in row shards
    "gmp_fisher_global": dict(method="gmp", sparsity=0.8, allocation="global", method_args={"criterion": "fisher"}),
    "gmp_2of4": dict(method="gmp", sparsity=0.5, pattern="2:4"),
    "rigl_global": dict(method="rigl", sparsity=0.8, allocation="global"),
    "set_erk": dict(method="set", sparsity=0.8, allocation="erk"),
    "dst_ee_uniform": dict(method="dst_ee", sparsity=0.8),
}


def fsdp_args(output_dir: str, state_dict_type: str = "FULL_STATE_DICT", **overrides):
    return training_args(
        output_dir, max_steps=STEPS, per_device_train_batch_size=4, learning_rate=5e-3, logging_steps=100,
        fsdp=True,
        fsdp_config={"version": 2, "transformer_layer_cls_to_wrap": ["BertLayer"], "state_dict_type": state_dict_type},
        **overrides,
    )  # fmt: skip


def whole(sparsifier, tensors):
    return {n: gather_rows(t, sparsifier.params[n]) for n, t in tensors.items()}


class Checks(TrainerCallback):
    """Invariants after every step and an unsharded reference at every mask update."""

    def __init__(self, trainer: SparseTrainer, config: SparsityConfig):
        self.trainer = trainer
        self.sp = trainer.sparsifier
        self.config = config
        self.reference = get_method_class(config.method)(config, find_targets(tiny_bert(), config.targets, config.ignore))
        self.steps: list[dict] = []
        self.updates: list[dict] = []
        method = self.sp.method
        original = method.update_masks

        def checked(step, weights, masks, grads=None):
            full_state = self.sp._map_weight_tensors(method.state_dict(), lambda n, t: gather_rows(t, self.sp.params[n]))
            full_w, full_m = whole(self.sp, weights), whole(self.sp, masks)
            full_g = whole(self.sp, grads) if grads is not None else None
            with use(LOCAL):
                self.reference.setup(method.total_steps)
                self.reference.load_state_dict(full_state)
                expected = self.reference.update_masks(step, full_w, full_m, full_g)
            new = original(step, weights, masks, grads)
            got = whole(self.sp, new)
            changed = any(not torch.equal(got[n], full_m[n]) for n in got)
            self.updates.append({"step": step, "equal": all(torch.equal(got[n], expected[n]) for n in got), "changed": changed})
            return new

        method.update_masks = checked

    def on_train_begin(self, args, state, control, **kwargs):
        from torch.distributed.tensor import DTensor

        self.sharded = all(isinstance(p, DTensor) for p in self.sp.params.values())
        self.local_masks = all(
            tuple(self.sp.masks[n].shape) == tuple(local(p).shape) and self.sp.masks[n].numel() < p.numel()
            for n, p in self.sp.params.items()
        )

    def on_step_end(self, args, state, control, **kwargs):
        masks = whole(self.sp, self.sp.masks)
        weights = {n: p.full_tensor().detach().cpu() for n, p in self.sp.params.items()}
        zeros = all(bool((weights[n][~masks[n]] == 0).all()) for n in masks)
        optimizer = kwargs["optimizer"]
        inner = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer
        moments = True
        for n, p in self.sp.params.items():
            for value in inner.state.get(p, {}).values():
                if isinstance(value, torch.Tensor) and local(value).shape == self.sp.masks[n].shape:
                    moments &= bool((local(value)[~self.sp.masks[n]] == 0).all())
        kept = sum(int(m.sum()) for m in masks.values())
        total = sum(m.numel() for m in masks.values())
        self.steps.append({"step": state.global_step, "zeros": zeros, "moments": moments, "sparsity": 1 - kept / total})


def train(name: str, spec: dict, out: str, **kwargs) -> tuple[SparseTrainer, Checks]:
    config = SparsityConfig(**{**COMMON, **spec})
    state_dict_type = kwargs.pop("state_dict_type", "FULL_STATE_DICT")
    resume = kwargs.pop("resume", None)
    trainer = SparseTrainer(
        model=tiny_bert(), args=fsdp_args(os.path.join(out, name), state_dict_type, **kwargs),
        train_dataset=PairDataset(n=96), sparsity_config=config,
    )
    checks = Checks(trainer, config)
    trainer.add_callback(checks)
    trainer.train(resume_from_checkpoint=resume)
    return trainer, checks


def summary(trainer: SparseTrainer, checks: Checks) -> dict:
    return {
        "is_fsdp2": bool(trainer.accelerator.is_fsdp2),
        "sharded_params": checks.sharded,
        "local_masks": checks.local_masks,
        "steps": checks.steps,
        "updates": checks.updates,
        "sparsity": trainer.sparsifier.sparsity,
    }


def main(out: str) -> None:
    enable_cpu_fsdp()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    results: dict = {"world_size": dist.get_world_size()}
    for name, spec in SCENARIOS.items():
        extra = dict(save_strategy="steps", save_steps=STEPS) if name == "gmp_global" else {}
        trainer, checks = train(name, spec, out, **extra)
        results[name] = summary(trainer, checks)
    results["full_checkpoint_files"] = sorted(os.listdir(os.path.join(out, "gmp_global", f"checkpoint-{STEPS}")))

    # resume (dst_ee: masks, per-weight counters, optimizer state) from sharded checkpoints
    spec = dict(method="dst_ee", sparsity=0.8, allocation="global")
    full, full_checks = train("resume_full", spec, out, state_dict_type="SHARDED_STATE_DICT", save_strategy="steps", save_steps=4)
    final_masks = whole(full.sparsifier, full.sparsifier.masks)
    final_weights = {n: p.full_tensor().detach().cpu() for n, p in full.sparsifier.params.items()}
    checkpoint = os.path.join(out, "resume_full", "checkpoint-4")
    resumed, _ = train("resume_part", spec, out, state_dict_type="SHARDED_STATE_DICT", resume=checkpoint)
    again_masks = whole(resumed.sparsifier, resumed.sparsifier.masks)
    again_weights = {n: p.full_tensor().detach().cpu() for n, p in resumed.sparsifier.params.items()}
    results["resume"] = {
        "rank_files": sorted(os.listdir(os.path.join(checkpoint, "hf_sparse_shards"))),
        "masks_equal": all(torch.equal(final_masks[n], again_masks[n]) for n in final_masks),
        "weights_equal": all(torch.equal(final_weights[n], again_weights[n]) for n in final_weights),
        "updates_after_checkpoint": sum(u["changed"] for u in full_checks.updates if u["step"] > 4),
    }

    # save_model with SHARDED_STATE_DICT (transformers alone writes nothing), after an evaluate()
    full.evaluate(PairDataset(n=16, seed=1))
    saved = os.path.join(out, "saved")
    full.save_model(saved)
    if rank == 0:
        from transformers import AutoModelForSequenceClassification

        plain = AutoModelForSequenceClassification.from_pretrained(saved)
        params = dict(plain.named_parameters())
        model, masks = load_sparse(saved)
        loaded = dict(model.named_parameters())
        results["saved"] = {
            "files": sorted(os.listdir(saved)),
            "plain_weights_equal": all(torch.equal(params[n].detach(), final_weights[n]) for n in final_weights),
            "plain_zeros": all(bool((params[n].detach()[~final_masks[n]] == 0).all()) for n in final_masks),
            "load_sparse_masks_equal": set(masks) == set(final_masks) and all(torch.equal(masks[n], final_masks[n]) for n in masks),
            "load_sparse_weights_equal": all(torch.equal(loaded[n].detach(), final_weights[n]) for n in final_weights),
        }
        with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=1)
    shutdown_distributed()


if __name__ == "__main__":
    main(sys.argv[1])
