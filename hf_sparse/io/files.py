"""Atomic writes and save transactions: a failed save never leaves a half-written checkpoint behind.

A save writes every file of the new checkpoint into a staging folder inside the target folder,
verifies it, then swaps it in: the earlier files it replaces (or that would disagree with it)
move to a backup folder, the new files move into place, and the backup is deleted. Any error
before the end, including one during the swap, moves everything back: the previous checkpoint
stays loadable and exact. A hard crash during the swap itself leaves the backup folder
(``.tmp-hf_sparse-old-*``), which loaders name in their error.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Union

PathLike = Union[str, os.PathLike]
STAGING_PREFIX = ".tmp-hf_sparse-new-"
BACKUP_PREFIX = ".tmp-hf_sparse-old-"

logger = logging.getLogger(__name__)


@contextmanager
def atomic_path(path: PathLike) -> Iterator[str]:
    """Yield a temporary path in the target's folder; rename it over ``path`` on success."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=".tmp-", suffix="-" + os.path.basename(path), dir=directory)
    os.close(handle)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())


def new_save_id() -> str:
    """An id written into every file of one save, so a loader can tell files of different saves apart."""
    return uuid.uuid4().hex


def leftover_backups(directory: str) -> list[str]:
    """Backup folders an interrupted swap left in ``directory`` (they hold the previous checkpoint)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted(os.path.join(directory, n) for n in names if n.startswith(BACKUP_PREFIX))


@contextmanager
def save_transaction(
    directory: PathLike,
    replaces: Callable[[str], bool],
    verify: Callable[[str], None] = lambda staging: None,
) -> Iterator[str]:
    """Yield an empty staging folder; on success, verify it and swap its files into ``directory``.

    ``replaces(name)`` says which existing files of ``directory`` belong to an earlier checkpoint
    and must go (those the new save writes go in any case). ``verify(staging)`` raises to abort.
    """
    directory = os.fspath(directory)
    if os.path.lexists(directory) and not os.path.isdir(directory):
        raise ValueError(f"cannot save into {directory}: it is a file, not a folder")
    os.makedirs(directory, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=directory)
    os.chmod(staging, 0o777 & ~_current_umask())
    try:
        yield staging
        try:
            verify(staging)
        except (ValueError, FileNotFoundError) as err:  # name the target, not the staging folder about to go
            raise ValueError(
                f"the save into {directory} did not read back as what was saved, so nothing was replaced: "
                f"{str(err).replace(staging, directory)}"
            ) from err
        _swap(staging, directory, replaces)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _swap(staging: str, directory: str, replaces: Callable[[str], bool]) -> None:
    new = sorted(os.listdir(staging), key=_placement_order)
    old = [n for n in os.listdir(directory) if os.path.isfile(os.path.join(directory, n)) and (n in new or replaces(n))]
    backup = tempfile.mkdtemp(prefix=BACKUP_PREFIX, dir=directory)
    moved: list[str] = []
    placed: list[str] = []
    try:
        for name in old:
            os.replace(os.path.join(directory, name), os.path.join(backup, name))
            moved.append(name)
        for name in new:
            os.replace(os.path.join(staging, name), os.path.join(directory, name))
            placed.append(name)
    except BaseException:
        _undo(staging, directory, backup, placed, moved)
        raise
    try:
        shutil.rmtree(backup)
    except OSError as err:  # the new checkpoint is complete; a leftover backup only costs disk space
        logger.warning("could not remove %s after saving: %s", backup, err)


def _undo(staging: str, directory: str, backup: str, placed: Iterable[str], moved: Iterable[str]) -> None:
    for name in placed:
        os.replace(os.path.join(directory, name), os.path.join(staging, name))
    for name in moved:
        os.replace(os.path.join(backup, name), os.path.join(directory, name))
    os.rmdir(backup)


def _placement_order(name: str) -> tuple[int, str]:
    """Place masks and configs before weights, indexes last: a half-placed folder never looks complete."""
    if name.endswith(".index.json"):
        return (2, name)
    if name.startswith("model") and name.endswith(".safetensors"):
        return (1, name)
    return (0, name)
