"""Which files of a target folder a save replaces, and which ones it must never touch.

A save owns the checkpoint files of the layout it writes and of every layout that would disagree
with it (weights in any format, masks, the sparsity config, the resume state): those are
replaced. Everything else in the folder (tokenizer, plots, a hand-written README, files of other
tools) is kept. A folder holding a LoRA adapter is refused by :func:`save_sparse` rather than half
overwritten: peft and transformers would pair the adapter with the new weights.
"""

from __future__ import annotations

import os

from ..config import CONFIG_NAME
from .native_format import MASKS_PATTERN, NATIVE_PATTERN, WEIGHTS_PATTERN
from .shards import is_checkpoint_file
from .training_state import STATE_FILES

LEGACY_WEIGHTS = ("tf_model.h5", "flax_model.msgpack")
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin", "adapter_config.json")


def replaced_by_a_save(name: str) -> bool:
    """Files of an earlier model checkpoint that a new save removes (they would disagree with it).

    Weights in any layout (ours, transformers' shards and index, legacy formats), masks, the
    sparsity config and the resume state; tokenizer files, cards, plots and adapters stay.
    """
    if any(is_checkpoint_file(name, p) for p in (WEIGHTS_PATTERN, NATIVE_PATTERN, MASKS_PATTERN)):
        return True
    if name.startswith("pytorch_model") and (name.endswith(".bin") or name.endswith(".bin.index.json")):
        return True
    return name in LEGACY_WEIGHTS or name == CONFIG_NAME or name in STATE_FILES


def replaced_by_a_trainer_save(name: str) -> bool:
    """What ``SparseTrainer`` replaces in its own output folder: a model save or an adapter save
    (the adapter's weights and config go together, never one without the other)."""
    return replaced_by_a_save(name) or name in ADAPTER_FILES


def refuse_adapter_folder(directory: str) -> None:
    """A model save into a folder that holds a LoRA adapter would break both: refuse, naming the files."""
    found = sorted(n for n in ADAPTER_FILES if os.path.lexists(os.path.join(directory, n)))
    if found:
        raise ValueError(
            f"{directory} holds a LoRA adapter ({', '.join(found)}); saving a model there would leave the adapter "
            "paired with other weights. Save into another folder, or move the adapter files first"
        )

