"""Re-save a sparse model folder in another layout: the steps the CLI (export, compress) and the Hub push share."""

from __future__ import annotations

import os
import shutil
from typing import Any, Mapping, Optional, Union

import torch

from ..config import CONFIG_NAME, SparsityConfig
from .load import load_sparse
from .model_card import CARD_NAME, write_model_card
from .save import replaced_by_a_save, save_sparse

LAYOUTS = {"dense": False, "native": True, "compressed-tensors": "compressed-tensors"}


def copy_extras(source: str, target: str) -> None:
    """Copy tokenizer, plots, ...: every file but the checkpoint files a save writes (and config.json)."""
    for name in os.listdir(source):
        path = os.path.join(source, name)
        if not os.path.isfile(path) or name.startswith(".tmp-") or replaced_by_a_save(name) or name == "config.json":
            continue
        if not os.path.exists(os.path.join(target, name)):
            shutil.copy2(path, os.path.join(target, name))


def saved_config(source: str) -> Optional[SparsityConfig]:
    return SparsityConfig.from_pretrained(source) if os.path.isfile(os.path.join(source, CONFIG_NAME)) else None


def resave(
    source: str,
    target: str,
    compressed: Union[bool, str],
    max_shard_size: Union[int, str] = "5GB",
    masks: Optional[Mapping[str, torch.Tensor]] = None,
    config: Any = None,
) -> tuple[str, dict[str, torch.Tensor], Any]:
    """Load ``source`` (verified), save it into ``target`` in the given layout, copy its other files.

    The source's model card is not copied: its "how to load" describes the old layout. Returns
    (layout written, masks, sparsity config).
    """
    if os.path.abspath(source) == os.path.abspath(target):
        raise ValueError("the output folder must differ from the input folder")
    model, loaded = load_sparse(source)
    masks = dict(masks) if masks else loaded
    config = config if config is not None else saved_config(source)
    layout = save_sparse(model, target, masks=masks, config=config, compressed=compressed, max_shard_size=max_shard_size)
    copy_extras(source, target)
    card = os.path.join(target, CARD_NAME)
    if os.path.isfile(card):
        os.unlink(card)
    return layout, masks, config


def convert(source: str, target: str, compressed: Union[bool, str], max_shard_size: Union[int, str], card: bool) -> str:
    """``resave`` plus a fresh model card (the export and compress commands)."""
    layout, masks, config = resave(source, target, compressed, max_shard_size)
    if card:
        write_model_card(target, masks=masks, sparsity_config=config)
    return layout
