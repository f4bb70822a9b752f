"""Calibration data through a model one block at a time.

The inputs of the first block (the hidden states and every keyword argument the model passes it,
e.g. attention masks and rotary embeddings) are captured by a pre-forward hook that stops the
model there. Each block then runs alone on those inputs; its outputs, computed after it was pruned,
become the inputs of the next block. Only one block's inputs and statistics live at a time, and a
block can be moved to an accelerator for its turn (``device``) while the rest stays where it is.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence, Union

import torch
from torch import nn

Batch = Union[Mapping[str, Any], torch.Tensor]


class _StopForward(Exception):
    """Raised by the capture hook: nothing after the first block needs to run."""


@dataclass
class BlockInput:
    """What one calibration batch gives a block: positional and keyword arguments, and the tokens that count."""

    args: tuple
    kwargs: dict
    token_mask: Optional[torch.Tensor] = None
    hidden_key: Optional[str] = field(default=None)  # the hidden states came as this keyword, not positionally

    def with_hidden(self, hidden: torch.Tensor) -> "BlockInput":
        if self.hidden_key is not None:
            return BlockInput(self.args, {**self.kwargs, self.hidden_key: hidden}, self.token_mask, self.hidden_key)
        return BlockInput((hidden,) + tuple(self.args[1:]), self.kwargs, self.token_mask, None)


def find_blocks(model: nn.Module, name: Optional[str] = None) -> tuple[str, Optional[nn.ModuleList]]:
    """The model's stack of repeated blocks: ``name`` (a module path, e.g. ``"model.layers"``) or the
    ``nn.ModuleList`` of same-class modules holding the most parameters (Llama's ``model.layers``,
    GPT-2's ``transformer.h``, BERT's ``bert.encoder.layer``). ``("", None)`` when there is none."""
    if name is not None:
        try:
            blocks = model.get_submodule(name)
        except AttributeError as err:
            raise ValueError(f"blocks={name!r} names no module of {type(model).__name__}") from err
        if not isinstance(blocks, (nn.ModuleList, nn.Sequential)) or len(blocks) == 0:
            raise ValueError(f"blocks={name!r} is a {type(blocks).__name__}, not a non-empty ModuleList of blocks")
        return name, blocks
    best, best_size = ("", None), 0
    for module_name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) < 1:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if size > best_size:
            best, best_size = (module_name, module), size
    return best


def _to(value: Any, device: Optional[torch.device]) -> Any:
    if device is None:
        return value
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to(v, device) for v in value)
    if isinstance(value, list):
        return [_to(v, device) for v in value]
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value


def model_inputs(batch: Batch, device: torch.device) -> dict:
    """A calibration batch as keyword arguments of the model's forward (a tensor is ``input_ids``);
    labels are dropped (no loss is needed) and the cache is off (each block runs several times)."""
    if isinstance(batch, torch.Tensor):
        batch = {"input_ids": batch}
    if not isinstance(batch, Mapping):
        raise TypeError(f"calibration batches must be dicts of model inputs or input_ids tensors, got {type(batch).__name__}")
    inputs = {k: _to(v, device) for k, v in batch.items() if k != "labels"}
    return inputs


def token_mask_of(batch_inputs: Mapping[str, Any]) -> Optional[torch.Tensor]:
    mask = batch_inputs.get("attention_mask")
    return mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None


@contextlib.contextmanager
def no_cache(model: nn.Module) -> Iterator[None]:
    """``config.use_cache = False`` for the duration (a KV cache would grow with every block rerun)."""
    config = getattr(model, "config", None)
    old = getattr(config, "use_cache", None)
    if config is not None and old is not None:
        config.use_cache = False
    try:
        yield
    finally:
        if config is not None and old is not None:
            config.use_cache = old


def input_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@torch.no_grad()
def capture_block_inputs(
    model: nn.Module, first_block: nn.Module, batches: Sequence[Batch], device: Optional[torch.device] = None
) -> list[BlockInput]:
    """Run the model on each batch up to ``first_block`` and keep that block's arguments (on ``device``)."""
    captured: list[BlockInput] = []
    current_mask: list[Optional[torch.Tensor]] = [None]

    def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden_key = None
        if not args:
            hidden_key = "hidden_states" if "hidden_states" in kwargs else next(iter(kwargs), None)
            if hidden_key is None:
                raise ValueError("one-shot calibration: the first block was called without inputs")
        captured.append(BlockInput(_to(args, device), _to(dict(kwargs), device), _to(current_mask[0], device), hidden_key))
        raise _StopForward

    handle = first_block.register_forward_pre_hook(hook, with_kwargs=True)
    where = input_device(model)
    try:
        with no_cache(model):
            for batch in batches:
                inputs = model_inputs(batch, where)
                current_mask[0] = token_mask_of(inputs)
                try:
                    model(**inputs)
                except _StopForward:
                    continue
                raise ValueError("one-shot calibration: the model's forward never reached its first block")
    finally:
        handle.remove()
    return captured


def hidden_of(output: Any) -> torch.Tensor:
    """The hidden states a block returns (a tensor, or the first item of a tuple or ModelOutput)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return output[0]
    if isinstance(output, Mapping):
        return next(iter(output.values()))
    raise TypeError(f"one-shot calibration: a block returned {type(output).__name__}, expected hidden states")


@torch.no_grad()
def run_block(
    block: nn.Module, inputs: Iterable[BlockInput], on_batch: Optional[Callable[[Optional[torch.Tensor]], None]] = None,
    keep_outputs: bool = True,
) -> list[torch.Tensor]:
    """Run ``block`` on each captured input; ``on_batch(token_mask)`` is called before each one."""
    outputs = []
    for item in inputs:
        if on_batch is not None:
            on_batch(item.token_mask)
        output = hidden_of(block(*item.args, **item.kwargs))
        if keep_outputs:
            outputs.append(output)
    return outputs
