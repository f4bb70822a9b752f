"""One Trainer checkpoint folder as one transaction: the Trainer's files plus the masks and resume state.

Everything is written into a staging folder (the weights with hf_sparse's header in their first write,
one masks file, one state file), checked, then swapped in (``hf_sparse.io.files.save_transaction``):
an interrupted save leaves the previous checkpoint in ``output_dir`` as it was.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from ..io.files import new_save_id, save_transaction
from ..io.replace_policy import replaced_by_a_trainer_save
from ..io.save import write_dense_checkpoint
from ..io.training_state import read_back_checkpoint, write_state


def save_checkpoint(
    output_dir: str, write_trainer_files: Callable[[str], None], sparsity_state: dict, config: Optional[Any],
    save_id: Optional[str] = None,
) -> None:
    """Write ``output_dir`` transactionally. ``write_trainer_files(folder)`` is the Trainer's own ``_save``
    into the staging folder; ``sparsity_state`` is the engine's ``state_dict()`` (whole masks under FSDP2);
    ``config`` the run's ``SparsityConfig`` or None; ``save_id`` the id of the save (new by default; under
    FSDP2 the checkpoint's, shared with the rank states)."""
    config_dict = config.to_dict() if config is not None else None
    save_id = save_id or new_save_id()
    with save_transaction(output_dir, replaced_by_a_trainer_save, verify=read_back_checkpoint) as staging:
        masks = {name: mask.detach().cpu() for name, mask in sparsity_state["masks"].items()}
        write_dense_checkpoint(staging, lambda header: write_trainer_files(staging), masks, config_dict, save_id)
        write_state(staging, sparsity_state, config_dict or {}, save_id)
