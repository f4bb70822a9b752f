"""Exact selections over row-sharded tensors, in one process.

Ranks are simulated by threads that exchange small tensors through a barrier (a fake
``Reduction``), and each thread sees only its row chunk, cut like FSDP2's ``Shard(0)``
(ceil(rows / world) per rank, the last chunks short or empty). Every sharded result must be
bitwise the unsharded engine's on the whole tensors, ties included.
"""

from __future__ import annotations

import math
import threading

import pytest
import torch
from torch import nn

from hf_sparse import SparsityConfig
from hf_sparse.core import sharding
from hf_sparse.core.masks import kth_largest, nm_mask, overall_sparsity, threshold_masks, topk_mask
from hf_sparse.core.reduction import LOCAL, Reduction, use
from hf_sparse.core.targets import find_targets
from hf_sparse.registry import get_method_class


class _Hub:
    """The shared mailbox of ``world`` thread-ranks: every exchange is one all-gather."""

    def __init__(self, world: int):
        self.world = world
        self.barrier = threading.Barrier(world, timeout=60)
        self.slots: list = [None] * world
        self.exchanges = 0

    def exchange(self, rank: int, tensor: torch.Tensor) -> list[torch.Tensor]:
        self.slots[rank] = tensor.clone()
        self.barrier.wait()
        out = [s.clone() for s in self.slots]
        if rank == 0:
            self.exchanges += 1
        self.barrier.wait()
        return out


class _ThreadReduction(Reduction):
    def __init__(self, hub: _Hub, rank: int):
        self.hub, self.rank, self.world = hub, rank, hub.world

    def all_gather(self, tensor):
        return self.hub.exchange(self.rank, tensor)

    def all_reduce_sum(self, tensor):
        parts = self.all_gather(tensor)
        total = parts[0].clone()
        for part in parts[1:]:
            total += part
        return total


def _rows(tensor: torch.Tensor, world: int, rank: int) -> torch.Tensor:
    """FSDP2's chunk of dim 0 for ``rank``."""
    size = math.ceil(tensor.shape[0] / world)
    return tensor[min(rank * size, tensor.shape[0]): min((rank + 1) * size, tensor.shape[0])]


def _on_ranks(world: int, fn):
    """Run ``fn(rank, reduction)`` on ``world`` thread-ranks inside ``use(reduction)``; results by rank."""
    hub = _Hub(world)
    results: list = [None] * world
    errors: list = []

    def target(rank: int) -> None:
        try:
            with use(_ThreadReduction(hub, rank)) as reduction:
                results[rank] = fn(rank, reduction)
        except BaseException as err:  # surface it in the test thread
            errors.append(err)
            hub.barrier.abort()

    threads = [threading.Thread(target=target, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def _tied_scores(shape, seed: int, levels: int = 7) -> torch.Tensor:
    """Few distinct values (many ties), some -inf (pruned), one +inf and a -0.0."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, levels, shape, generator=g).float() / levels
    flat = scores.view(-1)
    flat[torch.randperm(flat.numel(), generator=g)[: flat.numel() // 5]] = float("-inf")
    flat[0] = float("inf")
    flat[1] = -0.0
    return scores


SHAPES = {"a": (5, 4), "b": (9, 3), "c": (1, 6), "d": (3, 2)}


@pytest.mark.parametrize("world", [2, 3, 4])
@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.37, 0.5, 0.9, 1.0])
def test_threshold_masks_bitwise_equal_to_unsharded(world, fraction):
    scores = {n: _tied_scores(s, seed=i) for i, (n, s) in enumerate(SHAPES.items())}
    total = sum(s.numel() for s in scores.values())
    n_keep = int(round(fraction * total))
    expected = threshold_masks(scores, n_keep, LOCAL)
    assert sum(int(m.sum()) for m in expected.values()) == n_keep
    parts = _on_ranks(world, lambda r, red: threshold_masks({n: _rows(s, world, r) for n, s in scores.items()}, n_keep))
    for name in scores:
        assert torch.equal(torch.cat([p[name] for p in parts]), expected[name]), name


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("n_keep", [0, 1, 7, 22, 23, 44, 45])
def test_topk_mask_bitwise_equal_to_unsharded(world, n_keep):
    scores = _tied_scores((9, 5), seed=3, levels=3)
    expected = topk_mask(scores, n_keep)
    parts = _on_ranks(world, lambda r, red: topk_mask(_rows(scores, world, r), n_keep))
    assert torch.equal(torch.cat(parts), expected)


def test_topk_mask_ties_go_to_the_lowest_flat_index():
    scores = torch.tensor([[0.5, 1.0, 0.5], [0.5, 0.2, 0.5]])
    assert topk_mask(scores, 3).tolist() == [[True, True, True], [False, False, False]]
    assert topk_mask(scores, 4).tolist() == [[True, True, True], [True, False, False]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kth_largest_matches_over_all_ranks(dtype):
    g = torch.Generator().manual_seed(0)
    values = torch.randn(37, 3, generator=g).to(dtype)
    values[0, 0], values[1, 1], values[2, 2], values[3, 0] = float("-inf"), float("inf"), -0.0, 0.0
    for k in (1, 2, 5, 50, 110, 111):
        expected = kth_largest([values], k, LOCAL)
        got = _on_ranks(3, lambda r, red: kth_largest([_rows(values, 3, r)], k))
        assert all(v.dtype == dtype and v.item() == expected.item() for v in got), (k, expected, got)


def test_order_keys_keep_float_order():
    values = torch.tensor([float("-inf"), -3.5, -1e-30, -0.0, 0.0, 1e-30, 2.0, float("inf")])
    keys = sharding.order_keys(values)
    assert keys[3] == keys[4]  # -0.0 == +0.0
    assert torch.all(keys[1:] >= keys[:-1]) and len(set(keys.tolist())) == len(values) - 1
    assert all(sharding.key_value(int(k), torch.float32).item() == v for k, v in zip(keys, values.tolist()))


def test_selection_communicates_counts_not_weights():
    scores = {"w": torch.randn(256, 256)}
    hub_sizes: list[int] = []

    class Counting(_ThreadReduction):
        def all_gather(self, tensor):
            if self.rank == 0:
                hub_sizes.append(tensor.numel())
            return super().all_gather(tensor)

    hub = _Hub(2)
    results = [None, None]

    def run(rank):
        with use(Counting(hub, rank)):
            results[rank] = threshold_masks({"w": _rows(scores["w"], 2, rank)}, 10000)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert torch.equal(torch.cat([results[0]["w"], results[1]["w"]]), threshold_masks(scores, 10000, LOCAL)["w"])
    assert max(hub_sizes) <= 4096 and sum(hub_sizes) < 8192  # histograms and counts, never the 65536 scores


def test_nm_mask_along_dim0_refuses_split_groups():
    scores = torch.randn(6, 4)
    with pytest.raises(ValueError, match="multiple of M=4"):
        _on_ranks(2, lambda r, red: nm_mask(_rows(scores, 2, r), 2, 4, in_dim=0))
    expected = nm_mask(torch.randn(8, 3), 2, 4, in_dim=0)
    assert int(expected.sum()) == 12


def test_random_scores_draw_the_unsharded_stream():
    like = torch.zeros(7, 3)
    expected = torch.rand(7, 3, generator=torch.Generator().manual_seed(5))

    def draw(rank, reduction):
        return sharding.random_rows(_rows(like, 2, rank), torch.Generator().manual_seed(5), reduction)

    assert torch.equal(torch.cat(_on_ranks(2, draw)), expected)


# -- every method's mask update, sharded vs whole ------------------------------------------------------
def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))


CASES = [
    ("gmp", "uniform", None),
    ("gmp", "global", None),
    ("gmp", "erk", None),
    ("gmp", "uniform", "2:4"),
    ("oneshot", "global", None),
    ("acdc", "global", None),
    ("set", "erk", None),
    ("rigl", "global", None),
    ("dst_ee", "uniform", None),
    ("cyclic", "uniform", None),
]


def _run_method(name: str, allocation: str, pattern, weights, grads, world=None, rank=None, **overrides):
    """init_masks then three updates, with weights rounded so ties occur; returns every masks dict."""
    config = dict(method=name, sparsity=0.75, allocation=allocation, targets=[r"^\d+$"], update_every=1, start=0, end=8,
                  recipe="none")  # the mechanics at exactly these steps
    config.update(overrides)
    if pattern:
        config.update(pattern=pattern, sparsity=0.5)
    if name in ("gmp",):
        config["initial_sparsity"] = 0.0
    cfg = SparsityConfig(**config)
    method = get_method_class(name)(cfg, find_targets(_model(), cfg.targets, cfg.ignore))
    method.setup(8)
    cut = (lambda t: _rows(t, world, rank)) if world else (lambda t: t)
    w = {n: cut(t) for n, t in weights.items()}
    g = {n: cut(t) for n, t in grads.items()}
    masks = method.init_masks(w, {n: torch.ones_like(t, dtype=torch.bool) for n, t in w.items()})
    history = [masks]
    for step in (1, 2, 3, 4):
        masks = method.update_masks(step, w, masks, g)
        history.append(masks)
    return history


@pytest.mark.parametrize("name,allocation,pattern", CASES)
def test_method_updates_sharded_equal_unsharded(name, allocation, pattern):
    g = torch.Generator().manual_seed(1)
    targets = find_targets(_model(), [r"^\d+$"], [])
    # rounded to few levels: many exact ties across shards and layers
    weights = {t.name: (torch.randn(t.param.shape, generator=g) * 4).round() / 4 for t in targets}
    grads = {t.name: (torch.randn(t.param.shape, generator=g) * 4).round() / 4 for t in targets}
    expected = _run_method(name, allocation, pattern, weights, grads)
    with use(LOCAL):
        assert max(overall_sparsity(m) for m in expected) >= 0.5  # real pruning was compared
    world = 3
    parts = _on_ranks(world, lambda r, red: _run_method(name, allocation, pattern, weights, grads, world, r))
    for i, masks in enumerate(expected):
        for n, mask in masks.items():
            assert torch.equal(torch.cat([p[i][n] for p in parts]), mask), (i, n)


@pytest.mark.parametrize("name", ["gmp", "rigl", "acdc"])
def test_global_floor_sharded_equal_unsharded(name):
    """A layer one threshold would empty keeps its floor, and row shards get the same masks bit for bit."""
    g = torch.Generator().manual_seed(2)
    targets = find_targets(_model(), [r"^\d+$"], [])
    weights = {t.name: (torch.randn(t.param.shape, generator=g) * 4).round() / 4 for t in targets}
    grads = {t.name: (torch.randn(t.param.shape, generator=g) * 4).round() / 4 for t in targets}
    weights["2.weight"] = weights["2.weight"] / 64  # far below the others: the threshold alone prunes it all
    plain = _run_method(name, "global", None, weights, grads, layer_floor=0.0)
    expected = _run_method(name, "global", None, weights, grads, layer_floor=0.5)
    numel, total = weights["2.weight"].numel(), sum(w.numel() for w in weights.values())
    binding = 0
    with use(LOCAL):
        for before, after in zip(plain, expected):
            kept = sum(int(m.sum()) for m in after.values())
            assert kept == sum(int(m.sum()) for m in before.values())  # the floor comes out of the same budget
            floor = int(0.5 * kept / total * numel) - 1  # the floor at this update's density, less rounding
            assert int(after["2.weight"].sum()) >= floor
            binding += int(before["2.weight"].sum()) < floor
    assert binding  # without the floor the layer went (nearly) empty at some update
    parts = _on_ranks(3, lambda r, red: _run_method(name, "global", None, weights, grads, 3, r, layer_floor=0.5))
    for i, masks in enumerate(expected):
        for n, mask in masks.items():
            assert torch.equal(torch.cat([p[i][n] for p in parts]), mask), (i, n)
