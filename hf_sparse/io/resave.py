"""Re-save a sparse model folder in another layout (used by the export and compress commands)."""

from __future__ import annotations

import os
from typing import Union

from .save import save_sparse
from .hub import _copy_extras
from .load import load_sparse
from .model_card import CARD_NAME, write_model_card


def convert(source: str, target: str, compressed: Union[bool, str], max_shard_size: str, card: bool) -> str:
    if os.path.abspath(source) == os.path.abspath(target):
        raise ValueError("the output folder must differ from the input folder")
    model, masks = load_sparse(source)
    config_path = os.path.join(source, "sparsity_config.json")
    config = None
    if os.path.isfile(config_path):
        from ..config import SparsityConfig

        config = SparsityConfig.from_pretrained(source)
    layout = save_sparse(model, target, masks=masks, config=config, compressed=compressed, max_shard_size=max_shard_size)
    _copy_extras(source, target)
    if card:
        if os.path.isfile(os.path.join(target, CARD_NAME)):
            os.unlink(os.path.join(target, CARD_NAME))
        write_model_card(target, masks=masks, sparsity_config=config)
    return layout


LAYOUTS = {"dense": False, "native": True, "compressed-tensors": "compressed-tensors"}
