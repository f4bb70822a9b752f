"""A SparseTrainer's model card and Hub upload: what the trainer knows (masks, config, logs, evaluation
results, run changes, warnings) handed to ``hf_sparse.io.model_card`` and ``hf_sparse.io.hub``."""

from __future__ import annotations

import os
from typing import Any, Optional, Union


def card_arguments(trainer: Any, **given: Any) -> dict:
    """Keyword arguments of ``write_model_card`` for ``trainer``'s run; ``given`` (model name, base model,
    datasets, tags...) wins, except that a Hub base model is read from the model's config when not given."""
    evals = {}
    for entry in trainer.state.log_history:  # the latest value of each eval metric
        evals.update({k: v for k, v in entry.items() if k.startswith("eval_")})
    name_or_path = getattr(getattr(trainer.model, "config", None), "_name_or_path", "") or None
    if given.get("base_model") is None and name_or_path and not os.path.isdir(name_or_path):
        given["base_model"] = name_or_path
    notes = list(trainer.run_changes) + list(trainer.undertraining.warnings)
    return dict(masks=trainer.sparsifier.masks, sparsity_config=trainer.sparsity_config,
                log_history=trainer.state.log_history, eval_results=evals or None, notes=notes, **given)


def write_trainer_card(trainer: Any, **given: Any) -> None:
    """The sparse model card (README.md + PNG plots) in ``trainer.args.output_dir``."""
    from ..io.model_card import write_model_card

    write_model_card(trainer.args.output_dir, **card_arguments(trainer, **given))


def push_compressed(
    trainer: Any, compressed: Union[bool, str], commit_message: Optional[str], token: Optional[str],
    revision: Optional[str], private: Optional[bool], **kwargs: Any,
) -> Any:
    """``trainer.push_to_hub(compressed=...)``: the saved folder converted in a temporary copy to the
    compressed layout and uploaded with the sparse card (``kwargs`` as for ``create_model_card``)."""
    from ..io.hub import push_to_hub

    if trainer.hub_model_id is None:
        trainer.init_hf_repo(token=token, private=private)
    trainer.save_model(_internal_call=True)
    if not trainer.is_world_process_zero():
        return None
    trainer.create_model_card(**kwargs)
    card = card_arguments(trainer, model_name=kwargs.get("model_name"), base_model=kwargs.get("finetuned_from"),
                          datasets=kwargs.get("dataset"), tags=kwargs.get("tags"))
    card.pop("sparsity_config")
    return push_to_hub(trainer.args.output_dir, trainer.hub_model_id, compressed=compressed, private=private,
                       token=token or trainer.args.hub_token, commit_message=commit_message, revision=revision,
                       config=trainer.sparsity_config, **card)
