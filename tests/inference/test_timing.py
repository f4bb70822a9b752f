"""Timing decisions that noise cannot flip: confidence bounds, repeats while the bound straddles,
a "slower" verdict confirmed on fresh rounds. Every timer here is deterministic (seeded noise)."""

from __future__ import annotations

import math
import random

import pytest
import torch

from hf_sparse import to_sparse_inference
from hf_sparse.inference import decisions
from hf_sparse.inference.sparse_linear import SparseLinear
from hf_sparse.inference.timing import Speedup, decide, interleaved_rounds, interleaved_timer, median_bounds

from helpers import tiny_bert
from test_inference import always, bert_inputs, prune_


def noisy_timer(true_speedup: float, seed: int = 0, rounds: int = 5, spread: float = 0.25, moments=None, jitter: float = 0.05):
    """A seeded timer of a shared machine: each round a load factor (lognormal, ``spread``) hits both
    sides of the pair, plus independent ``jitter`` per side; ``other`` is ``true_speedup`` x faster
    than ``base``. ``moments``: {call index: speedup during that whole batch} (a noisy moment)."""
    rng = random.Random(seed)
    calls = []

    def timer(name, candidates):
        index = len(calls)
        calls.append(name)
        speedup = (moments or {}).get(index, true_speedup)
        keys = list(candidates)
        out = {k: [] for k in keys}
        for _ in range(rounds):
            load = math.exp(rng.gauss(0.0, spread))
            for i, k in enumerate(keys):
                base = 1.0 if i == 0 else 1.0 / speedup
                out[k].append(base * load * math.exp(rng.gauss(0.0, jitter)))
        return out

    timer.calls = calls
    return timer


def test_sign_test_bounds_match_the_binomial_table():
    assert median_bounds([1.0, 2.0, 3.0, 4.0]) == (0.0, math.inf)  # 4 rounds cannot give 90%
    assert median_bounds([5.0, 1.0, 3.0, 2.0, 4.0]) == (1.0, 5.0)  # 5 rounds: min and max (93.75%)
    # n = 20, 90%: P(B <= 5) = 0.021 <= 0.05 < P(B <= 6) = 0.058, so the 6th and 15th values
    assert median_bounds([float(v) for v in range(1, 21)]) == (6.0, 15.0)
    assert median_bounds([float(v) for v in range(1, 21)], confidence=0.95) == (6.0, 15.0)  # P(B<=5)=0.021 <= 0.025
    assert median_bounds([float(v) for v in range(1, 21)], confidence=0.99) == (4.0, 17.0)
    with pytest.raises(ValueError, match="confidence"):
        median_bounds([1.0], confidence=1.0)


def test_bound_covers_the_true_ratio_at_about_its_confidence():
    """Over 400 seeded experiments of 9 rounds, the 90% bound misses the true speedup ~<10% of the time."""
    rng = random.Random(3)
    misses = 0
    for _ in range(400):
        ratios = [1.5 * math.exp(rng.gauss(0.0, 0.3)) for _ in range(9)]
        low, high = median_bounds(ratios)
        misses += not (low <= 1.5 <= high)
    assert misses / 400 <= 0.12  # nominal 1 - 0.961 (9 rounds: k = 2 gives 96.1%) -> well under


def test_decide_repeats_while_the_bound_straddles_and_reports_it():
    timer = noisy_timer(1.2, seed=1, spread=0.4, jitter=0.1)
    d = decide(timer, "layer", {"dense": None, "spmm": None}, "dense", 1.1, min_rounds=5, max_rounds=200)
    assert d.settled and d.passed and d.best == "spmm"
    assert d.speedup.low >= 1.1 and d.speedup.low <= d.speedup.ratio <= d.speedup.high
    assert len(timer.calls) > 1  # the first 5 rounds straddled 1.1; it timed more
    assert d.speedup.rounds == 5 * len(timer.calls) == len(d.times["dense"])


def test_decide_stops_at_the_cap_and_lets_the_median_decide():
    timer = noisy_timer(1.1, seed=2)  # exactly at the threshold: the bound keeps straddling
    d = decide(timer, "layer", {"dense": None, "spmm": None}, "dense", 1.1, max_rounds=20)
    assert not d.settled and d.speedup.rounds == 20 and d.passed is (d.speedup.ratio >= 1.1)
    assert "straddles" in d.why


def test_a_noisy_moment_cannot_revert_a_faster_model():
    """The conversion is 1.5x faster, but during the first batch of whole-model rounds the machine
    made it look 0.6x (all 7 rounds of that batch): the fresh confirmation window disagrees, so the
    model stays converted and the reported bound is above 1."""
    model = prune_(tiny_bert().eval(), 0.9)
    model_calls = []
    noisy = noisy_timer(1.5, seed=4, rounds=7, moments={0: 0.6})

    def timer(name, candidates):
        if name == "<model>" and "sparse" in candidates:
            model_calls.append(name)
            return noisy(name, candidates)
        return always("spmm")(name, candidates)

    to_sparse_inference(model, bert_inputs(), timer=timer)
    plan = model.sparse_inference_plan
    assert not plan.reverted and plan.converted
    assert len(model_calls) > 2  # the "slower" verdict was not taken on the noisy batches alone
    assert plan.model_speedup_low is not None and plan.model_speedup_low <= plan.model_speedup <= plan.model_speedup_high
    assert any(isinstance(m, SparseLinear) for m in model.modules())
    assert "bound" in str(plan) and plan.to_dict()["model_rounds"] == plan.model_rounds


def test_a_slower_model_is_reverted_despite_noise():
    model = prune_(tiny_bert().eval(), 0.9)
    noisy = noisy_timer(0.85, seed=5, rounds=7, moments={0: 1.6})  # looks fast at first, is slower

    def timer(name, candidates):
        if name == "<model>" and "sparse" in candidates:
            return noisy(name, candidates)
        return always("spmm")(name, candidates)

    to_sparse_inference(model, bert_inputs(), timer=timer)
    plan = model.sparse_inference_plan
    assert plan.reverted and not plan.converted and plan.model_speedup < 1.0
    assert plan.model_speedup_high < 1.02 or not plan.model_settled
    assert not any(isinstance(m, SparseLinear) for m in model.modules())


def test_layer_choice_reports_its_bound_and_rounds():
    model = prune_(tiny_bert().eval(), 0.9)
    noisy = noisy_timer(2.0, seed=6)
    to_sparse_inference(model, bert_inputs(), timer=lambda n, c: noisy(n, c) if n != "<model>" else always("spmm")(n, c))
    chosen = [c for c in model.sparse_inference_plan if c.speedup is not None]
    assert chosen and all(c.rounds >= decisions.LAYER_ROUNDS["min_rounds"] for c in chosen)
    assert all(c.speedup_low <= c.speedup <= c.speedup_high for c in chosen)
    assert all(c.kernel != "dense" and c.settled for c in chosen)


def test_one_timing_loop_counts_rounds_and_warmups():
    counts = {"a": 0, "b": 0}

    def bump(k):
        def fn():
            counts[k] += 1

        return fn

    ticks = iter(range(1000))
    times = interleaved_rounds({"a": bump("a"), "b": bump("b")}, rounds=4, warmup=2, clock=lambda: float(next(ticks)))
    assert counts == {"a": 6, "b": 6} and all(t == [1.0] * 4 for t in times.values())
    timer = interleaved_timer(rounds=3)
    counts.update(a=0, b=0)
    timer("x", {"a": bump("a"), "b": bump("b")})
    timer("x", {"a": bump("a"), "b": bump("b")})  # a second batch of the same decision: no warm-up
    assert counts == {"a": 7, "b": 7}


def test_speedup_sides():
    s = Speedup.of([2.0] * 5, [1.0] * 5)
    assert (s.ratio, s.low, s.high, s.side(1.5), s.side(2.5)) == (2.0, 2.0, 2.0, "above", "below")
    assert Speedup.of([2.0] * 3, [1.0] * 3).side(1.5) == "straddles"  # too few rounds for a bound
    assert "rounds" in str(s)
    with pytest.raises(ValueError, match="equally many"):
        Speedup.of([1.0], [1.0, 2.0])
    assert torch.get_num_threads() >= 1
