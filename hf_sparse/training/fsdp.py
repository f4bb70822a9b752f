"""SparseTrainer under FSDP2: what is refused, how the model is saved, where each rank's masks go.

Masks live as each rank's row chunks (see ``Sparsifier.bind``), so:

- ``save_model()`` gathers the whole weights (accelerate's full state dict, rank 0) and the whole
  masks (a collective), then writes the same dense layout as an unsharded run, whatever the
  plugin's ``state_dict_type`` (with ``SHARDED_STATE_DICT`` transformers alone writes nothing);
- every checkpoint also holds each rank's own masks and method state in
  ``hf_sparse_shards/rank-R-of-W/`` (no gather: resuming with the same world size reads them back);
  a checkpoint without them (an unsharded run's, or another world size's with whole masks) is cut;
- one save id, drawn on rank 0 and broadcast, binds a checkpoint: the whole-model save (with
  ``FULL_STATE_DICT``), every rank's masks and state, and, recorded in the rank states' headers,
  the size and crc32 of the Trainer's own resume files (``pytorch_model_fsdp_0/``, ``optimizer_0/``,
  RNG states, scheduler, trainer state), each rank hashing a share of them after the Trainer wrote
  them. A resume checks all of it before the Trainer loads anything (:func:`check_checkpoint`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from typing import TYPE_CHECKING, Any, Iterator, Optional

import torch.distributed as dist
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..core.distributed import rank_and_world
from ..io.binding import KEY_FILES, check_file_digests, check_rank_states, file_digest, rank_states, trainer_resume_files
from ..io.files import new_save_id
from ..io.training_state import has_sparsity_state, load_sparsity_state, save_sparsity_state

if TYPE_CHECKING:
    from .trainer import SparseTrainer

SHARDS_DIR = "hf_sparse_shards"


def refuse_unsupported(trainer: Any, method: Any, sparse_base: bool) -> None:
    """Clear errors for the sharded setups hf_sparse cannot keep exact (checked at construction).

    ``method``: the method (or its class); its ``fsdp_refusal`` may depend on its settings."""
    if getattr(trainer, "is_deepspeed_enabled", False):
        plugin = trainer.accelerator.state.deepspeed_plugin
        if getattr(plugin, "zero_stage", None) == 3:
            raise ValueError(
                "SparseTrainer does not support DeepSpeed ZeRO-3: its partitioned parameters are flat buffers "
                "without names or row layout, so masks cannot be kept on them. Use FSDP2 "
                "(accelerate launch --use_fsdp --fsdp_version 2) or DeepSpeed ZeRO-1/2"
            )
    if not getattr(trainer, "is_fsdp_enabled", False):
        return
    if not getattr(trainer.accelerator, "is_fsdp2", False):
        raise ValueError(
            "SparseTrainer supports FSDP2 only: FSDP1 flattens parameters, so masks cannot follow them. "
            "Set fsdp_config={'version': 2} (or accelerate launch --use_fsdp --fsdp_version 2)"
        )
    if sparse_base:
        raise ValueError(
            "a sparse LoRA base (base_masks= or a peft model) is not supported under FSDP; use DDP "
            "(accelerate launch --num_processes N without --use_fsdp)"
        )
    reason = getattr(method, "fsdp_refusal", None)
    if reason:
        raise ValueError(f"method {method.name!r} cannot run under FSDP: {reason}")


def is_fsdp2(trainer: Any) -> bool:
    return bool(getattr(trainer, "is_fsdp_enabled", False)) and bool(getattr(trainer.accelerator, "is_fsdp2", False))


def rank_dir(checkpoint: str, rank: int, world: int) -> str:
    return os.path.join(checkpoint, SHARDS_DIR, f"rank-{rank:05d}-of-{world:05d}")


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def shared_save_id() -> str:
    """A new save id, the same on every rank (rank 0 draws it)."""
    box = [new_save_id()]
    if _distributed():
        dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def checkpoint_save(trainer: "SparseTrainer", trial: Any) -> Iterator[None]:
    """Around ``Trainer._save_checkpoint`` (every rank): under FSDP2 one save id for the whole checkpoint;
    once the Trainer wrote its files, each rank writes its masks and state, recording its share of them."""
    if not is_fsdp2(trainer):
        yield
        return
    checkpoint = os.path.join(trainer._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}")
    trainer._hf_sparse_checkpoint = (os.path.abspath(checkpoint), shared_save_id())
    try:
        yield
        save_id = trainer._hf_sparse_checkpoint[1]
    finally:
        trainer._hf_sparse_checkpoint = None
    _write_rank_state(trainer, checkpoint, save_id)


def _write_rank_state(trainer: "SparseTrainer", checkpoint: str, save_id: str) -> None:
    rank, world = rank_and_world()
    if _distributed():
        dist.barrier()  # every rank's Trainer files are complete
    if rank == 0:  # rank folders of an earlier save into the same checkpoint with another world size
        for (_, other), folder in rank_states(checkpoint).items():
            if other != world:
                shutil.rmtree(folder)
    files = trainer_resume_files(checkpoint)
    mine = {name: file_digest(os.path.join(checkpoint, *name.split("/"))) for i, name in enumerate(files) if i % world == rank}
    config = trainer.sparsity_config.to_dict() if trainer.sparsity_config is not None else {}
    save_sparsity_state(rank_dir(checkpoint, rank, world), trainer.sparsifier.state_dict(), config, save_id,
                        {KEY_FILES: json.dumps(mine, sort_keys=True)})
    if _distributed():
        dist.barrier()  # the checkpoint is complete before any rank reads it


def save_model(trainer: "SparseTrainer", output_dir: str, internal: bool) -> None:
    """``Trainer.save_model`` under FSDP2 (every rank calls it; the collectives need them all), and the push
    to the Hub it asks for."""
    sparsifier = trainer.sparsifier
    sparsifier.bind()  # after evaluate() the root group may be unsharded: back to the shards
    pending = getattr(trainer, "_hf_sparse_checkpoint", None)
    checkpoint = internal and pending is not None and pending[0] == os.path.abspath(output_dir)
    save_id = pending[1] if checkpoint else shared_save_id()
    if checkpoint and "SHARDED_STATE_DICT" in str(trainer.accelerator.state.fsdp_plugin.state_dict_type):
        return  # the Trainer writes the sharded model and optimizer itself (pytorch_model_fsdp_0/); ranks: checkpoint_save
    state_dict = trainer.accelerator.get_state_dict(trainer.model)  # whole weights on rank 0 (CPU)
    trainer.save_checkpoint_files(output_dir, state_dict=state_dict, sparsity_state=sparsifier.full_state_dict(),
                                  save_id=save_id)
    if _distributed():
        dist.barrier()  # the folder is complete before any rank reads it
    if trainer.args.push_to_hub and not internal:
        trainer.push_to_hub(commit_message="Model save", revision=trainer.args.hub_revision)


def check_checkpoint(checkpoint: str) -> None:
    """Before a resume loads anything (every rank): the rank states, their masks and the whole-model save
    carry one save id, and the Trainer's files are the ones that save recorded, byte for byte (each rank
    checks a share; every rank raises the same error, naming the file)."""
    recorded = check_rank_states(checkpoint)  # header-only: the same answer on every rank
    rank, world = rank_and_world()
    error: Optional[str] = None
    try:
        check_file_digests(checkpoint, recorded, rank, world)
    except (ValueError, OSError) as err:
        error = str(err)
    errors = [error]
    if _distributed():
        errors = [None] * world
        dist.all_gather_object(errors, error)
    first = next((e for e in errors if e), None)
    if first:
        raise ValueError(first)


def load_rank_state(engine: Any, checkpoint: str) -> bool:
    """Restore this rank's masks into ``engine`` from ``checkpoint``; False when it holds none for this world size."""
    rank, world = rank_and_world()
    directory = rank_dir(checkpoint, rank, world)
    if has_sparsity_state(directory):
        state, _ = load_sparsity_state(directory)
        engine.load_state_dict(state)
        return True
    shards = os.path.join(checkpoint, SHARDS_DIR)
    if os.path.isdir(shards) and not has_sparsity_state(checkpoint):
        raise ValueError(
            f"{checkpoint} holds hf_sparse masks for {sorted(os.listdir(shards))[:1]} ... but not for rank {rank} of "
            f"{world}: resume with the world size it was saved with, or from a folder written by save_model()"
        )
    return False
