"""Fresh gradients on demand: what a method that re-estimates something right before a mask update needs.

oBERT (Kurtic et al. 2022, "The Optimal BERT Surgeon") estimates the empirical Fisher from m fresh
gradients of the current (masked) model right before each pruning step, instead of reusing gradients
from earlier steps. A method asks for them with ``PruningMethod.fresh_gradients_wanted(step)`` (a
``GradientRequest``); the engine fetches them from its ``gradient_sampler``, which the training loop
provides (``SparseTrainer`` builds one over its training set; a hand-written loop builds a
``GradientSampler`` from a batch source and a loss).

Why the sampler does what it does:
- the model runs in eval mode (no dropout), so the gradients are those of the model as deployed, and
  every rank and a resumed run get the same ones;
- the batches are drawn by a generator seeded from the request (the run's seed and the step), not from
  the training loader: a resumed run sees the same calibration batches as an uninterrupted one, and the
  training data order and the global RNG are untouched;
- the gradients already on the parameters (the optimizer step's) are set aside and put back afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping

import torch
from torch import nn

from . import distributed


@dataclass(frozen=True)
class GradientRequest:
    """``batches`` training batches; one gradient per batch, or per example (``per_example``) of each batch.

    ``seed`` picks the batches (the same seed gives the same batches on every rank and after a resume).
    """

    batches: int
    per_example: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.batches, bool) or not isinstance(self.batches, int) or self.batches < 1:
            raise ValueError(f"GradientRequest.batches must be a positive integer, got {self.batches!r}")


def split_examples(batch: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A collated batch as batches of one example: every tensor with the batch's leading size is sliced.

    Padding is kept (an example padded to the batch's length, with its attention mask, gives the same
    loss as alone, up to rounding). Values that are not tensors are copied to every example.
    """
    sizes = {v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor) and v.dim() > 0}
    if len(sizes) != 1:
        raise ValueError(f"cannot split a batch into examples: its tensors have leading sizes {sorted(sizes)} "
                         "(expected one batch size)")
    size = sizes.pop()
    return [
        {k: (v[i : i + 1] if isinstance(v, torch.Tensor) and v.dim() > 0 else v) for k, v in batch.items()}
        for i in range(size)
    ]


class GradientSampler:
    """Gradients of the targeted weights on freshly drawn training batches, one dict per batch (or example).

    ``batches(n, seed)`` yields ``n`` collated batches (on the model's device) chosen by ``seed``;
    ``loss(model, batch)`` returns the scalar loss of one batch (e.g. ``model(**batch).loss``).
    """

    def __init__(
        self,
        model: nn.Module,
        batches: Callable[[int, int], Iterable[Mapping[str, Any]]],
        loss: Callable[[nn.Module, Mapping[str, Any]], torch.Tensor],
    ):
        self.model = model
        self.batches = batches
        self.loss = loss
        #: How many forward/backward passes the sampler has run (the cost, for logs and tests).
        self.passes = 0

    def __call__(self, request: GradientRequest, params: Mapping[str, torch.Tensor]) -> Iterator[dict[str, torch.Tensor]]:
        """Yield ``{name: gradient}`` (this rank's rows under FSDP2) for each batch or example of ``request``.

        Each yielded dict is valid until the next one is asked for. Close the iterator (or exhaust it)
        to restore the model's mode and the gradients it had.
        """
        model = self.model
        every = [p for p in model.parameters() if p.requires_grad]
        kept = [p.grad for p in every]
        was_training = model.training
        for p in every:
            p.grad = None
        model.eval()
        try:
            for batch in self.batches(request.batches, request.seed):
                for part in (split_examples(batch) if request.per_example else [batch]):
                    with torch.enable_grad():
                        loss = self.loss(model, part)
                        if loss.dim() != 0:
                            raise ValueError(f"the calibration loss must be a scalar, got shape {tuple(loss.shape)}")
                        loss.backward()
                    self.passes += 1
                    yield {name: distributed.local(p.grad) for name, p in params.items() if p.grad is not None}
                    for p in every:
                        p.grad = None
        finally:
            for p, grad in zip(every, kept):
                p.grad = grad
            model.train(was_training)


def seeded_batches(dataset: Any, batch_size: int, collate: Callable[[list], Mapping[str, Any]],
                   to_device: Callable[[Mapping[str, Any]], Mapping[str, Any]] = lambda b: b,
                   ) -> Callable[[int, int], Iterator[Mapping[str, Any]]]:
    """A ``batches(n, seed)`` source for ``GradientSampler``: ``n`` batches drawn without replacement from
    ``dataset`` (a sized, indexable dataset) by a generator seeded with ``seed``."""
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise ValueError("fresh gradients need a sized, indexable training set (not an IterableDataset)")

    def batches(n: int, seed: int) -> Iterator[Mapping[str, Any]]:
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(dataset), generator=generator).tolist()
        needed = n * batch_size
        while len(order) < needed:  # a set smaller than the request: go round again, in a new order
            order += torch.randperm(len(dataset), generator=generator).tolist()
        for start in range(0, needed, batch_size):
            yield to_device(collate([dataset[i] for i in order[start : start + batch_size]]))

    return batches
