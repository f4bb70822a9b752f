"""What ties the files of one save together beyond the save id: config.json and the side files.

The weights carry, in their header, the save id and the fields of ``config.json`` that change
what loads (:data:`BOUND_FIELDS`: class, dtype, ties, layer counts and sizes), as they were at
save time. A load compares them with ``config.json`` and refuses a folder whose config was edited
or copied from another save, naming the field. ``sparsity_config.json`` must equal the sparsity
config recorded in the same header. The resume state, the masks and an adapter carry the same
save id as the weights they were saved with.

It imports no torch, so a header-only reader (``inspect`` without ``--verify``) runs the same
checks as a load (:func:`check_save_binding`, :func:`check_state_binding`).

None of this is a signature: ids and fields sit in plain JSON headers and anyone can rewrite
them. They catch accidents (files copied between saves, edited configs), not tampering.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from typing import Any, Mapping, Optional

KEY_MODEL_CONFIG = "hf_sparse_model_config"
CONFIG_NAME = "sparsity_config.json"  # hf_sparse.config.CONFIG_NAME; this module imports neither torch nor config
# header keys and values of hf_sparse.io.native_format (which imports torch); a test keeps them equal
KEY_SAVE_ID = "hf_sparse_save_id"
KEY_MASKS = "hf_sparse_masks"
KEY_CONFIG = "hf_sparse_sparsity_config"
MASKS_IN_FILE, MASKS_IN_WEIGHTS = "file", "weights"
STATE_FILE = "sparsity_state.safetensors"  # hf_sparse.io.training_state.STATE_FILE
_MAX_HEADER = 100 * 1024 * 1024
#: config.json fields whose change alters the loaded weights (dtype, ties) or the model built
BOUND_FIELDS = (
    "architectures", "model_type", "dtype", "torch_dtype", "tie_word_embeddings", "tie_encoder_decoder",
    "num_hidden_layers", "num_layers", "n_layer", "num_decoder_layers", "encoder_layers", "decoder_layers",
    "hidden_size", "intermediate_size", "num_attention_heads", "vocab_size",
)
_RESAVE = "save the model again with hf_sparse.save_sparse into an empty folder"


def bound_fields(config: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    """The bound fields of a config.json dict (absent ones as None, so adding them is seen too)."""
    config = config or {}
    return {field: config.get(field) for field in BOUND_FIELDS}


def model_config_header(directory: str) -> dict[str, str]:
    """The header entry that binds the weights about to be written to ``directory/config.json`` ({} without one)."""
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        return {KEY_MODEL_CONFIG: json.dumps(bound_fields(json.load(handle)), sort_keys=True)}


def check_model_config(directory: str, weights_file: str, header: Mapping[str, str], config: Optional[dict]) -> None:
    """Refuse a config.json whose bound fields differ from the ones recorded with the weights."""
    raw = header.get(KEY_MODEL_CONFIG)
    if raw is None:
        return
    try:
        recorded = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{weights_file}: header {KEY_MODEL_CONFIG} is corrupt: {err}") from err
    if not isinstance(recorded, dict):
        raise ValueError(f"{weights_file}: header {KEY_MODEL_CONFIG} must be a JSON object")
    if config is None:
        raise ValueError(
            f"{directory} has no config.json, but {os.path.basename(weights_file)} was saved with one: restore it, or {_RESAVE}"
        )
    current = bound_fields(config)
    for field, value in sorted(recorded.items()):
        if current.get(field) != value:
            raise ValueError(
                f"{directory}/config.json field {field!r} is {current.get(field)!r} but {os.path.basename(weights_file)} "
                f"was saved with {value!r} (config.json edited or copied from another save; loading would change the "
                f"weights or the model): restore the field, or {_RESAVE}"
            )


def read_side_config(directory: str) -> Optional[dict]:
    """``sparsity_config.json`` of a folder as a JSON object (None when absent); ValueError when malformed."""
    path = os.path.join(directory, CONFIG_NAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{path} is corrupt: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object (the sparsity config), not {type(data).__name__}")
    return data


def check_side_config(directory: str, where: str, recorded: Optional[str]) -> None:
    """``sparsity_config.json`` must be the sparsity config recorded in the header of ``where`` (same save)."""
    side = read_side_config(directory)
    if side is None:
        return
    try:
        saved = json.loads(recorded) if recorded is not None else None
    except (json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{where}: its recorded sparsity config is corrupt: {err}") from err
    if side != saved:
        raise ValueError(
            f"{directory}/{CONFIG_NAME} differs from the sparsity config recorded in {os.path.basename(where)} "
            f"(a stale file from another save or run): delete {CONFIG_NAME}, or {_RESAVE}"
        )


def read_header_metadata(path: str) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file, from its header alone (no torch, no tensor read)."""
    try:
        with open(path, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            if size > _MAX_HEADER:
                raise ValueError(f"header of {size} bytes")
            header = json.loads(handle.read(size))
    except (OSError, struct.error, ValueError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"{path} is corrupt or truncated: {err}") from err
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return dict(metadata) if isinstance(metadata, dict) else {}


def check_save_binding(
    directory: str,
    weights_file: str,
    header: Mapping[str, str],
    masks_file: Optional[str],
    masks_header: Mapping[str, str],
    config: Optional[dict],
) -> None:
    """The header-level binding of a saved folder, the same for a load and for ``inspect``: the masks
    file is of the weights' save (or absent where the weights say so), and config.json and
    sparsity_config.json are the ones the weights were saved with."""
    where = header.get(KEY_MASKS)
    if masks_file is None:
        if where == MASKS_IN_FILE:
            raise ValueError(
                f"{weights_file} was saved with its masks in sparse_masks.safetensors, which is missing "
                f"(interrupted save or deleted file): without it kept zeros would be lost; {_RESAVE}"
            )
    else:
        weights_id, masks_id = header.get(KEY_SAVE_ID), masks_header.get(KEY_SAVE_ID)
        name = os.path.basename(masks_file)
        if weights_id is None or masks_id != weights_id or where == MASKS_IN_WEIGHTS:
            written_by = "hf_sparse" if weights_id is not None else "another tool (e.g. save_pretrained)"
            raise ValueError(
                f"{directory}: {name} belongs to another save than {os.path.basename(weights_file)} (written by "
                f"{written_by}): the masks would not match the weights. Delete {name} to take the masks from the "
                f"weights' zeros, or {_RESAVE}"
            )
    if KEY_SAVE_ID in header:  # files hf_sparse wrote: config.json and sparsity_config.json must be of this save
        check_model_config(directory, weights_file, header, config)
        check_side_config(directory, weights_file, header.get(KEY_CONFIG))


def check_state_binding(directory: str, weights_file: str, weights_id: Optional[str], state_file: str, state_id: Optional[str]) -> None:
    """A resume state (or masks saved with it) must be of the save that wrote the weights beside it."""
    if weights_id is None or state_id != weights_id:
        written_by = "another save" if weights_id is not None else "another tool (no hf_sparse save id)"
        raise ValueError(
            f"{directory}: {os.path.basename(weights_file)} and {state_file} are not from the same save "
            f"({os.path.basename(weights_file)} was written by {written_by}; files copied between checkpoints?): "
            "resuming would pair the weights of one save with the masks and state of another. Resume from an "
            "untouched checkpoint"
        )


def check_checkpoint_state(directory: str, weights_file: str, weights_id: Optional[str]) -> None:
    """Header-only: a Trainer checkpoint's resume state beside ``weights_file`` is of the same save, and so
    are an FSDP2 checkpoint's rank states (:func:`check_rank_states`; file contents are not read)."""
    path = os.path.join(directory, STATE_FILE)
    if os.path.isfile(path):
        check_state_binding(directory, weights_file, weights_id, STATE_FILE, read_header_metadata(path).get(KEY_SAVE_ID))
    check_rank_states(directory)


# -- FSDP2 checkpoints: the Trainer's per-rank files, bound by each rank's hf_sparse state -----------------
SHARDS_DIR = "hf_sparse_shards"  # hf_sparse.training.fsdp.SHARDS_DIR
MASKS_FILE = "sparse_masks.safetensors"
#: header key of a rank's state: JSON {path relative to the checkpoint: [size, crc32]} of Trainer files
KEY_FILES = "hf_sparse_trainer_files"
#: what a Trainer resume reads besides the weights hf_sparse binds itself: the sharded (or rank-0) model
#: and optimizer of FSDP (``pytorch_model_fsdp_0/``, ``optimizer_0/``, ``*.bin``), scheduler, scaler,
#: RNG states and the trainer state
TRAINER_RESUME_FILES = ("pytorch_model_fsdp", "optimizer", "scheduler", "scaler", "rng_state", "trainer_state.json")
_CHUNK = 16 * 2**20


def file_digest(path: str) -> list:
    """[size, crc32 hex] of a file, read in chunks (about 1 GB/s; the files of one rank)."""
    crc, size = 0, 0
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(_CHUNK)
            if not chunk:
                break
            crc, size = zlib.crc32(chunk, crc), size + len(chunk)
    return [size, f"{crc:08x}"]


def trainer_resume_files(checkpoint: str) -> list[str]:
    """Paths (relative, "/"-separated, sorted) of the Trainer's resume files in a checkpoint folder."""
    found = []
    for name in sorted(os.listdir(checkpoint)):
        if not name.startswith(TRAINER_RESUME_FILES):
            continue
        path = os.path.join(checkpoint, name)
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs.sort()
                found += [os.path.relpath(os.path.join(root, f), checkpoint).replace(os.sep, "/") for f in sorted(files)]
        else:
            found.append(name)
    return found


def rank_states(checkpoint: str) -> dict[tuple[int, int], str]:
    """{(rank, world): folder} of the per-rank hf_sparse states of an FSDP2 checkpoint ({} without any)."""
    shards = os.path.join(checkpoint, SHARDS_DIR)
    if not os.path.isdir(shards):
        return {}
    found = {}
    for name in sorted(os.listdir(shards)):
        parts = name.split("-")
        if len(parts) != 4 or parts[0] != "rank" or parts[2] != "of" or not (parts[1].isdigit() and parts[3].isdigit()):
            raise ValueError(f"{shards}/{name}: not a rank folder (rank-R-of-W): a stray file or folder; remove it")
        found[(int(parts[1]), int(parts[3]))] = os.path.join(shards, name)
    return found


def check_rank_states(checkpoint: str) -> dict[str, list]:
    """Header-only: every rank state of an FSDP2 checkpoint, its masks and the whole-model save beside them
    carry one save id, and the Trainer files they recorded are the ones present. Returns the recorded
    {file: [size, crc32]} (their contents are checked by :func:`check_file_digests`)."""
    ranks = rank_states(checkpoint)
    if not ranks:
        return {}
    worlds = sorted({world for _, world in ranks})
    if len(worlds) > 1 or sorted(r for r, _ in ranks) != list(range(worlds[0])):
        raise ValueError(
            f"{checkpoint}/{SHARDS_DIR} holds rank folders {sorted(os.path.basename(p) for p in ranks.values())}: "
            "not one complete set of one world size (folders of another save or run mixed in); resume from an "
            "untouched checkpoint"
        )
    ids: dict[str, Optional[str]] = {}
    recorded: dict[str, list] = {}
    legacy = []
    for (rank, world), folder in sorted(ranks.items()):
        where = f"{SHARDS_DIR}/{os.path.basename(folder)}"
        state = os.path.join(folder, STATE_FILE)
        if not os.path.isfile(state):
            raise ValueError(f"{checkpoint}: {where} has no {STATE_FILE} (interrupted save?): resume from another checkpoint")
        header = read_header_metadata(state)
        ids[f"{where}/{STATE_FILE}"] = header.get(KEY_SAVE_ID)
        masks = os.path.join(folder, MASKS_FILE)
        if os.path.isfile(masks):
            ids[f"{where}/{MASKS_FILE}"] = read_header_metadata(masks).get(KEY_SAVE_ID)
        if KEY_FILES not in header:
            legacy.append(where)
            continue
        try:
            files = json.loads(header[KEY_FILES])
        except (json.JSONDecodeError, RecursionError) as err:
            raise ValueError(f"{checkpoint}/{where}/{STATE_FILE}: header {KEY_FILES} is corrupt: {err}") from err
        if not isinstance(files, dict):
            raise ValueError(f"{checkpoint}/{where}/{STATE_FILE}: header {KEY_FILES} must be a JSON object")
        recorded.update(files)
    top = os.path.join(checkpoint, STATE_FILE)
    if os.path.isfile(top):  # FULL_STATE_DICT: the whole masks and state of the same save
        ids[STATE_FILE] = read_header_metadata(top).get(KEY_SAVE_ID)
    if len(set(ids.values())) > 1 or None in ids.values():
        first = next(iter(ids))
        odd = next((name for name, value in ids.items() if value != ids[first] or value is None), first)
        raise ValueError(
            f"{checkpoint}: {odd} and {first} are not from the same save (save ids {ids[odd]!r} vs {ids[first]!r}; "
            "files copied between checkpoints or an interrupted save): resuming would pair one rank's masks or "
            "state with another save's. Resume from an untouched checkpoint"
        )
    present = trainer_resume_files(checkpoint)
    if legacy:
        if any(name.startswith("pytorch_model_fsdp") for name in present):
            raise ValueError(
                f"{checkpoint}: {legacy[0]}/{STATE_FILE} records none of the Trainer's files (written by an older "
                "hf_sparse), so its sharded model cannot be checked to be of the same save; resume is refused. "
                "Load the weights and train without resume_from_checkpoint, or resume from a newer checkpoint"
            )
        return {}
    missing = sorted(set(recorded) - set(present))
    extra = sorted(set(present) - set(recorded))
    if missing or extra:
        raise ValueError(
            f"{checkpoint}: the Trainer's files differ from the ones its save recorded (missing {missing[:3]}, "
            f"not of this save {extra[:3]}): files copied, deleted or an interrupted save; resume from an "
            "untouched checkpoint"
        )
    return recorded


def check_file_digests(checkpoint: str, recorded: Mapping[str, list], rank: int = 0, world: int = 1) -> None:
    """Contents of the recorded Trainer files (this rank's share: every ``world``-th from ``rank``)."""
    for index, name in enumerate(sorted(recorded)):
        if index % world != rank:
            continue
        path = os.path.join(checkpoint, *name.split("/"))
        if file_digest(path) != list(recorded[name]):
            raise ValueError(
                f"{path} is not the file its save wrote (size or crc32 differs: copied from another checkpoint, "
                "edited or truncated): resuming would mix saves. Resume from an untouched checkpoint"
            )
