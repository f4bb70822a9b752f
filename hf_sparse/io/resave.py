"""Re-save a sparse model folder in another layout: the steps the CLI (export, compress) and the Hub push share.

Nothing outside the new checkpoint's own files is touched: the output must be another folder than
the source (compared after resolving links), the source's other files are copied only when they
are plain files or links into a Hugging Face cache snapshot (a link elsewhere is refused, never
followed), and a README.md the output already holds is kept unless hf_sparse wrote it.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Mapping, Optional, Union

import torch

from ..config import CONFIG_NAME, SparsityConfig
from .binding import read_side_config
from .load import load_sparse
from .model_card import CARD_NAME, is_hf_sparse_card, write_model_card
from .save import replaced_by_a_save, save_sparse

LAYOUTS = {"dense": False, "native": True, "compressed-tensors": "compressed-tensors"}


def same_folder(a: str, b: str) -> bool:
    """Whether two paths are one folder, after resolving symbolic links (and ``..``)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _hub_cache_link(source: str, path: str) -> bool:
    """A link of a Hugging Face cache snapshot (``snapshots/<rev>/file -> ../../blobs/<sha>``)."""
    snapshot = os.path.dirname(os.path.abspath(path))
    repo = os.path.dirname(os.path.dirname(snapshot))
    blobs = os.path.join(os.path.realpath(repo), "blobs") + os.sep
    return os.path.basename(os.path.dirname(snapshot)) == "snapshots" and os.path.realpath(path).startswith(blobs)


def refuse_links(folder: str) -> None:
    """Refuse a folder with symbolic links that lead out of it (copying or uploading would follow them)."""
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if os.path.islink(path) and not _hub_cache_link(folder, path):
            raise ValueError(
                f"{path} is a symbolic link (to {os.readlink(path)}); hf_sparse does not follow links out of a "
                "folder it copies or uploads: replace it by the file itself, or remove it"
            )


def copy_extras(source: str, target: str) -> None:
    """Copy tokenizer, plots, ...: every plain file but the checkpoint files a save writes, config.json
    and the model card (which describes the old layout). Files already in ``target`` are kept."""
    refuse_links(source)
    for name in os.listdir(source):
        path = os.path.join(source, name)
        if not os.path.isfile(path) or name.startswith(".tmp-") or replaced_by_a_save(name) or name in ("config.json", CARD_NAME):
            continue
        if not os.path.lexists(os.path.join(target, name)):
            shutil.copy2(path, os.path.join(target, name), follow_symlinks=False)


def saved_config(source: str) -> Optional[SparsityConfig]:
    """The source's sparsity_config.json (checked against its weights' header by ``load_sparse`` first)."""
    data = read_side_config(source)
    if data is None:
        return None
    try:
        return SparsityConfig.from_dict(data)
    except (TypeError, KeyError) as err:
        raise ValueError(f"{os.path.join(source, CONFIG_NAME)} is not a valid sparsity config: {err}") from err


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
    if same_folder(source, target):
        raise ValueError(f"the output folder {target} is the same folder as the input {source} (links resolved): choose another")
    refuse_links(source)
    model, loaded = load_sparse(source)
    masks = dict(masks) if masks else loaded
    config = config if config is not None else saved_config(source)
    layout = save_sparse(model, target, masks=masks, config=config, compressed=compressed, max_shard_size=max_shard_size)
    copy_extras(source, target)
    return layout, masks, config


def convert(source: str, target: str, compressed: Union[bool, str], max_shard_size: Union[int, str], card: bool) -> str:
    """``resave`` plus a fresh model card (the export and compress commands); a README.md that
    hf_sparse did not write is kept, never replaced."""
    layout, masks, config = resave(source, target, compressed, max_shard_size)
    existing = os.path.join(target, CARD_NAME)
    if card and (not os.path.lexists(existing) or is_hf_sparse_card(existing)):
        write_model_card(target, masks=masks, sparsity_config=config)
    return layout
