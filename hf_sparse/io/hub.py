"""push_to_hub: upload a sparse model folder (weights, masks, card, plots) through huggingface_hub.

Everything up to the upload is local and testable: the folder is written (or converted) first,
then ``HfApi.create_repo`` + ``HfApi.upload_folder`` send it as is.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Mapping, Optional, Union

import torch
from huggingface_hub import HfApi
from torch import nn

from .save import Compressed, layout_of, save_sparse
from .load import detect_format
from .model_card import CARD_NAME, write_model_card
from .resave import refuse_links, resave


def push_to_hub(
    model_or_dir: Union[nn.Module, str, os.PathLike],
    repo_id: str,
    compressed: Optional[Compressed] = None,
    private: Optional[bool] = None,
    token: Optional[str] = None,
    masks: Optional[Mapping[str, torch.Tensor]] = None,
    config: Any = None,
    commit_message: str = "Upload sparse model (hf_sparse)",
    revision: Optional[str] = None,
    **card_kwargs: Any,
):
    """Upload a model or a saved folder to ``repo_id`` with its model card and plots.

    ``compressed``: layout to upload (False dense + masks, True native, "compressed-tensors");
    ``None`` uploads a folder as it is (a model is then saved dense + masks). A folder in another
    layout is converted in a temporary copy; a folder without README.md (or a converted one) gets
    a sparse model card (``card_kwargs`` go to :func:`hf_sparse.io.model_card.write_model_card`).
    Returns huggingface_hub's ``CommitInfo``.
    """
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="hf_sparse-push-") as staging:
        if isinstance(model_or_dir, nn.Module):
            folder = staging
            save_sparse(model_or_dir, folder, masks=masks, config=config, compressed=compressed or False)
            write_model_card(folder, masks=masks, sparsity_config=config, **card_kwargs)
            card_kwargs = {}
        else:
            source = os.fspath(model_or_dir)
            refuse_links(source)  # upload_folder would follow them
            folder = source
            if compressed is not None and detect_format(source) != layout_of(compressed):
                folder = staging
                resave(source, folder, compressed, masks=masks, config=config)
            if not os.path.isfile(os.path.join(folder, CARD_NAME)):
                write_model_card(folder, masks=masks, sparsity_config=config, **card_kwargs)
        api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message=commit_message,
            revision=revision,
            ignore_patterns=["checkpoint-*", "checkpoint-*/**", ".tmp-*", "_*"],
        )

