"""``prune(model, ...)``: one-shot pruning of a model's targeted weights, in place, returning the masks.

Like jaxpruner's ``instant_sparsify``, but layer-wise with calibration data for the criteria that
need it (Wanda, SparseGPT): the model is walked one block at a time (see ``calibration``), each
block's layers are pruned from statistics of their own inputs, and the pruned block's outputs feed
the next block. Pruned weights become exactly 0 and the masks are attached to the model, so
``SparseTrainer`` with ``SparsityConfig(method="constant")`` (or ``gmp`` towards a higher sparsity)
continues from them, and ``save_sparse``/``save_model`` store them.
"""

from __future__ import annotations

import logging
from typing import Iterable, Optional, Sequence, Union

import torch
from torch import nn

from ..config import parse_nm
from ..core import distributed
from ..core.masks import overall_sparsity
from ..core.targets import Target, find_targets
from ..io.existing_masks import MASKS_ATTR, attach_masks
from .calibration import (
    Batch, capture_block_inputs, find_blocks, input_device, model_inputs, no_cache, run_block, token_mask_of,
)
from .methods import LayerSettings, OneShotMethod, get_oneshot_method
from .statistics import InputCollector

try:
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover
    Conv1D = ()

logger = logging.getLogger(__name__)

Masks = dict[str, torch.Tensor]


def resolve_sparsity(sparsity: Optional[float], pattern: str) -> tuple[float, Optional[tuple[int, int]]]:
    """(sparsity, (n, m) or None), checked as ``SparsityConfig`` checks them; default 0.5 or 1 - N/M."""
    nm = parse_nm(pattern)
    if sparsity is None:
        sparsity = 1.0 - nm[0] / nm[1] if nm else 0.5
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
        raise ValueError(f"prune: sparsity must be a number in [0, 1), got {sparsity!r}")
    if nm is not None and abs(sparsity - (1 - nm[0] / nm[1])) > 1e-9:
        raise ValueError(f"prune: pattern {pattern!r} fixes sparsity at {1 - nm[0] / nm[1]:g}; got sparsity={sparsity}")
    return float(sparsity), nm


@torch.no_grad()
def prune(
    model: nn.Module,
    sparsity: Optional[float] = None,
    pattern: str = "unstructured",
    method: str = "magnitude",
    calibration: Optional[Iterable[Batch]] = None,
    targets: Optional[Sequence[str]] = None,
    ignore: Optional[Sequence[str]] = None,
    *,
    blocks: Optional[str] = None,
    device: Union[str, torch.device, None] = None,
    block_size: int = 128,
    dampening: float = 0.01,
    attach: bool = True,
) -> Masks:
    """Prune ``model`` once, in place; return the masks (parameter name -> bool tensor, True = kept).

    Args:
        sparsity: fraction of zeros in each targeted weight (default 0.5, or 1 - N/M for ``pattern``).
        pattern: ``"unstructured"`` or ``"N:M"`` (e.g. ``"2:4"``: 2 kept of every 4 along the input dimension).
        method: ``"magnitude"`` (|w| per tensor, no data), ``"wanda"`` (|w| * ||x_j|| per output row) or
            ``"sparsegpt"`` (OBS reconstruction from X^T X, kept weights updated).
        calibration: batches for wanda/sparsegpt: dicts of model inputs (``input_ids``, ``attention_mask``;
            tokens where the attention mask is 0 are not counted) or ``input_ids`` tensors.
        targets, ignore: regexes over module names, as in ``SparsityConfig`` (default: every Linear/Conv1D
            but embeddings and heads).
        blocks: module path of the stack of repeated blocks (default: found, e.g. ``model.layers``).
        device: run each block there in turn (e.g. ``"cuda"`` for a model kept on the CPU); default: where it is.
        block_size, dampening: SparseGPT's column block and Hessian dampening (fraction of its mean diagonal).
        attach: record the masks on the model for ``SparseTrainer``/``save_sparse`` (exact even where a
            kept weight is 0).
    """
    sparsity, nm = resolve_sparsity(sparsity, pattern)
    spec = get_oneshot_method(method)
    if any(distributed.is_sharded(p) for p in model.parameters()):
        raise ValueError(
            "prune: the model's parameters are FSDP2 shards (DTensor); one-shot pruning needs whole weights. "
            "Prune before the Trainer or fully_shard prepares the model (the masks travel with it: SparseTrainer "
            "cuts them into row shards), or gather a full state dict first"
        )
    if block_size < 1:
        raise ValueError(f"prune: block_size must be >= 1, got {block_size}")
    if not dampening > 0:
        raise ValueError(f"prune: dampening must be > 0, got {dampening}")
    found = find_targets(model, targets, ignore)
    settings = LayerSettings(sparsity, nm, block_size, dampening)
    was_training = model.training
    model.eval()  # dropout off: statistics and block outputs must be those of inference
    try:
        if spec.statistic is None:
            masks = {t.name: _prune_target(t, spec, None, settings) for t in found}
        else:
            masks = _prune_calibrated(model, found, spec, settings, calibration, blocks, device)
    finally:
        model.train(was_training)
    if attach:
        attach_masks(model, {**(getattr(model, MASKS_ATTR, None) or {}), **masks})
    logger.info(
        "prune: %s %s at %.1f%% over %d weights (%.2f%% zeros)",
        method, pattern, 100 * sparsity, len(masks), 100 * overall_sparsity(masks),
    )
    return masks


def _layer_weight(target: Target) -> torch.Tensor:
    """The weight as (out_features, in_features): a view of a Linear's, the transpose of a Conv1D's."""
    return target.param.data if target.in_dim == 1 else target.param.data.t()


def _prune_target(target: Target, spec: type[OneShotMethod], statistic, settings: LayerSettings) -> torch.Tensor:
    if spec.statistic is None:  # data-free criteria work on the stored layout, convolutions included
        _, mask = spec.prune_layer(target.param.data, None, settings, in_dim=target.in_dim)
        target.param.data.masked_fill_(~mask, 0.0)
        return mask
    if statistic is None:
        raise ValueError(f"prune: no calibration input reached {target.module_name} (is it used in the forward pass?)")
    weight = _layer_weight(target)
    new_weight, mask = spec.prune_layer(weight, statistic, settings)
    if new_weight is not None:
        weight.copy_(new_weight)
    weight.masked_fill_(~mask, 0.0)
    return mask if target.in_dim == 1 else mask.t().contiguous()


def _prune_targets(
    targets: Sequence[Target], spec: type[OneShotMethod], collector: InputCollector, settings: LayerSettings, masks: Masks
) -> None:
    """Prune ``targets`` in order; a statistic (and what was derived from it) is freed after its last reader."""
    statistics = collector.statistics
    last_reader = {id(statistics[t.name]): t.name for t in targets if t.name in statistics}
    for target in targets:
        statistic = statistics.get(target.name)
        masks[target.name] = _prune_target(target, spec, statistic, settings)
        if statistic is not None and last_reader[id(statistic)] == target.name:
            statistic.release()


def _check_layers(model: nn.Module, found: Sequence[Target], method: str) -> None:
    modules = dict(model.named_modules())
    bad = [t.module_name for t in found if not isinstance(modules[t.module_name], (nn.Linear,) + ((Conv1D,) if isinstance(Conv1D, type) else ()))]
    if bad:
        raise ValueError(
            f"prune: method {method!r} handles nn.Linear and transformers' Conv1D layers; {bad[:3]} are not "
            "(use method='magnitude' for convolutions, or ignore=[...] them)"
        )


def _prune_calibrated(
    model: nn.Module, found: Sequence[Target], spec: type[OneShotMethod], settings: LayerSettings,
    calibration: Optional[Iterable[Batch]], blocks_name: Optional[str], device: Union[str, torch.device, None],
) -> Masks:
    if calibration is None:
        raise ValueError(f"prune: method {spec.name!r} needs calibration batches (calibration=[{{'input_ids': ...}}, ...])")
    batches = list(calibration)
    if not batches:
        raise ValueError(f"prune: method {spec.name!r} got an empty calibration set")
    _check_layers(model, found, spec.name)
    modules = dict(model.named_modules())
    compute = torch.device(device) if device is not None else None
    name, stack = find_blocks(model, blocks_name)
    per_block: dict[int, list[Target]] = {}
    outside: list[Target] = []
    for target in found:
        index = _block_index(target.module_name, name) if stack is not None else None
        (per_block.setdefault(index, []) if index is not None else outside).append(target)
    masks: Masks = {}
    tokens = 0
    if per_block:
        inputs = capture_block_inputs(model, stack[0], batches, device=compute)
        last = max(per_block)
        for index in range(last + 1):
            block = stack[index]
            home = input_device(block)
            if compute is not None:
                block.to(compute)
            logger.info("prune: block %d/%d (%s.%d)", index + 1, last + 1, name, index)
            try:
                block_targets = per_block.get(index, [])
                if block_targets:
                    collector = _collect(block_targets, modules, spec, lambda c: run_block(block, inputs, c.begin_batch, keep_outputs=False))
                    tokens = max([tokens] + [s.tokens for s in collector.statistics.values()])
                    _prune_targets(block_targets, spec, collector, settings, masks)
                if index < last:
                    inputs = [item.with_hidden(out) for item, out in zip(inputs, run_block(block, inputs))]
            finally:
                if compute is not None:
                    block.to(home)
        del inputs
    if outside:  # layers outside the block stack (or a model without one): one pass of the whole, pruned-so-far model
        logger.info("prune: %d targets outside the blocks (%s, ...) calibrated on a whole-model pass", len(outside), outside[0].module_name)
        where = input_device(model)

        def whole_model(collector: InputCollector) -> None:
            with no_cache(model):
                for batch in batches:
                    inputs_ = model_inputs(batch, where)
                    collector.begin_batch(token_mask_of(inputs_))
                    model(**inputs_)

        collector = _collect(outside, modules, spec, whole_model)
        tokens = max([tokens] + [s.tokens for s in collector.statistics.values()])
        _prune_targets(outside, spec, collector, settings, masks)
    logger.info("prune: %s calibrated on %d tokens", spec.name, tokens)
    return {t.name: masks[t.name] for t in found}


def _block_index(module_name: str, blocks_name: str) -> Optional[int]:
    prefix = f"{blocks_name}." if blocks_name else ""
    if not module_name.startswith(prefix):
        return None
    head = module_name[len(prefix):].split(".", 1)[0]
    return int(head) if head.isdigit() else None


def _collect(block_targets: Sequence[Target], modules: dict, spec: type[OneShotMethod], run) -> InputCollector:
    collector = InputCollector(spec.statistic)
    try:
        for target in block_targets:
            collector.attach(target.name, modules[target.module_name], _layer_weight(target).shape[1])
        run(collector)
    finally:
        collector.remove()
    return collector
