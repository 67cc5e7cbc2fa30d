"""The native sampler on hand-made distributions: greedy, top-k, top-p, min-p, penalties, seeds."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from qconv.runtime.tokenizer import Sampler

OFF = dict(top_k=0, top_p=1.0, min_p=0.0)


def logits_of(probs: list[float]) -> np.ndarray:
    return np.log(np.array(probs, dtype=np.float32))


def draw(sampler: Sampler, logits: np.ndarray, n: int) -> Counter:
    return Counter(sampler.sample(logits) for _ in range(n))


@pytest.mark.parametrize("seed", range(5))
def test_temperature_zero_is_argmax(seed):
    logits = np.random.default_rng(seed).normal(size=5000).astype(np.float32)
    sampler = Sampler(5000, temperature=0.0, seed=seed)
    assert sampler.sample(logits) == int(np.argmax(logits))


def test_greedy_takes_the_first_of_equal_best_logits_and_never_a_nan():
    """The plain scan's answer (the first index of the largest value; NaN never wins, index 0 if logits[0] is NaN),
    with and without penalties (the fast path reads the logits in place)."""
    rng = np.random.default_rng(5)
    for penalty in (1.0, 1.3):
        sampler = Sampler(1003, temperature=0.0, repeat_penalty=penalty)
        for trial in range(60):
            x = rng.standard_normal(1003).astype(np.float32)
            if trial % 3 == 0:
                x[rng.integers(0, 1003, 4)] = x.max() + 1.0  # ties for the best
            if trial % 4 == 0:
                x[rng.integers(1, 1003, 3)] = np.nan
            best = 0
            for i in range(1, len(x)):
                if x[i] > x[best]:
                    best = i
            assert sampler.sample(x) == best
        x[0] = np.nan
        assert Sampler(1003, temperature=0.0).sample(x) == 0


@pytest.mark.parametrize("seed", range(5))
def test_top_k_one_is_greedy(seed):
    logits = np.random.default_rng(seed).normal(size=5000).astype(np.float32)
    sampler = Sampler(5000, temperature=1.5, top_k=1, top_p=1.0, min_p=0.0, seed=seed)
    assert all(sampler.sample(logits) == int(np.argmax(logits)) for _ in range(20))


def test_same_seed_same_tokens_other_seed_other_tokens():
    logits = np.random.default_rng(7).normal(size=1000).astype(np.float32)
    runs = []
    for seed in (42, 42, 43):
        sampler = Sampler(1000, temperature=1.0, seed=seed, **OFF)
        runs.append([sampler.sample(logits) for _ in range(64)])
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    sampler = Sampler(1000, temperature=1.0, seed=42, **OFF)
    sampler.sample(logits)
    sampler.reset()  # back to the start of the seed's stream
    assert [sampler.sample(logits) for _ in range(64)] == runs[0]


def test_full_distribution_is_sampled_in_proportion():
    probs = [0.5, 0.3, 0.15, 0.05]
    counts = draw(Sampler(4, temperature=1.0, seed=1, **OFF), logits_of(probs), 20000)
    for token, p in enumerate(probs):
        assert abs(counts[token] / 20000 - p) < 0.015, (token, counts)


def test_min_p_drops_tokens_below_a_fraction_of_the_best():
    # min_p = 0.2: keep p >= 0.2 * 0.5 = 0.1, so token 3 (0.05) goes and the rest renormalize to 0.5/0.95, ...
    probs = [0.5, 0.3, 0.15, 0.05]
    counts = draw(Sampler(4, temperature=1.0, top_k=0, top_p=1.0, min_p=0.2, seed=3), logits_of(probs), 20000)
    assert counts[3] == 0
    for token in range(3):
        assert abs(counts[token] / 20000 - probs[token] / 0.95) < 0.015, counts


def test_top_p_keeps_the_smallest_prefix_reaching_p():
    # top_p = 0.75: 0.5 < 0.75 <= 0.5 + 0.3, so tokens 0 and 1 remain, at 0.5/0.8 and 0.3/0.8
    probs = [0.3, 0.05, 0.5, 0.15]
    counts = draw(Sampler(4, temperature=1.0, top_k=0, top_p=0.75, min_p=0.0, seed=5), logits_of(probs), 20000)
    assert set(counts) == {0, 2}
    assert abs(counts[2] / 20000 - 0.625) < 0.015


def test_top_p_on_a_large_vocabulary_matches_a_full_sort():
    # more than the first 256-candidate window is needed: the prefix grows in steps
    n = 20000
    logits = np.random.default_rng(11).normal(scale=0.5, size=n).astype(np.float32)
    p = np.exp(logits.astype(np.float64) - logits.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    keep = int(np.searchsorted(np.cumsum(p[order]), 0.9) + 1)
    allowed = set(order[:keep].tolist())
    assert keep > 1000
    sampler = Sampler(n, temperature=1.0, top_k=0, top_p=0.9, min_p=0.0, seed=9)
    drawn = [sampler.sample(logits) for _ in range(300)]
    assert set(drawn) <= allowed


def test_min_p_with_top_p_keeps_the_shorter_prefix():
    # top-p 0.9 alone keeps {0, 1, 2} (0.5 + 0.3 < 0.9 <= 0.95); min-p 0.5 keeps p >= 0.25: {0, 1}
    probs = [0.5, 0.3, 0.15, 0.05]
    counts = draw(Sampler(4, temperature=1.0, top_k=0, top_p=0.9, min_p=0.5, seed=6), logits_of(probs), 5000)
    assert set(counts) == {0, 1}
    counts = draw(Sampler(4, temperature=1.0, top_k=0, top_p=0.9, min_p=0.01, seed=6), logits_of(probs), 5000)
    assert set(counts) == {0, 1, 2}
    counts = draw(Sampler(4, temperature=1.0, top_k=0, top_p=1.0, min_p=5.0, seed=6), logits_of(probs), 100)
    assert set(counts) == {0}


def test_top_k_limits_to_the_k_best():
    logits = np.arange(100, dtype=np.float32) / 10
    counts = draw(Sampler(100, temperature=5.0, top_k=3, top_p=1.0, min_p=0.0, seed=2), logits, 3000)
    assert set(counts) == {97, 98, 99}


def test_large_top_k_limits_to_the_k_best():
    # k > 1024 takes the quickselect path instead of the small-k heap
    logits = np.random.default_rng(3).normal(size=5000).astype(np.float32)
    allowed = set(np.argsort(-logits, kind="stable")[:2000].tolist())
    sampler = Sampler(5000, temperature=50.0, top_k=2000, top_p=1.0, min_p=0.0, seed=2)
    drawn = {sampler.sample(logits) for _ in range(2000)}
    assert drawn <= allowed and len(drawn) > 500


def test_repeat_penalty_divides_positive_and_multiplies_negative_logits():
    # llama.cpp: logit <= 0 ? logit * penalty : logit / penalty, for tokens in the last N accepted
    sampler = Sampler(4, temperature=0.0, repeat_penalty=2.0, repeat_last_n=8)
    logits = np.array([2.0, 1.5, -1.0, -0.6], dtype=np.float32)
    assert sampler.sample(logits) == 0
    sampler.accept(0)  # 2.0 -> 1.0
    assert sampler.sample(logits) == 1
    negative = np.array([-1.0, -1.5, -9.0, -9.0], dtype=np.float32)
    assert sampler.sample(negative) == 1  # 0 is penalized: -1.0 -> -2.0 < -1.5
    sampler.accept(0)  # a token seen twice is penalized once
    assert sampler.sample(np.array([2.0, 0.99, -5.0, -5.0], dtype=np.float32)) == 0  # 2.0 / 2 = 1.0 > 0.99


def test_repeat_penalty_window_forgets_old_tokens():
    sampler = Sampler(4, temperature=0.0, repeat_penalty=4.0, repeat_last_n=2)
    logits = np.array([2.0, 1.0, 0.0, 0.0], dtype=np.float32)
    sampler.accept(0)
    assert sampler.sample(logits) == 1
    sampler.accept(2)
    sampler.accept(3)  # 0 has left the window of 2
    assert sampler.sample(logits) == 0


def test_frequency_and_presence_penalties_subtract():
    sampler = Sampler(3, temperature=0.0, frequency_penalty=0.5, presence_penalty=0.25, repeat_last_n=8)
    for _ in range(3):
        sampler.accept(0)
    # 3.0 - 3 * 0.5 - 0.25 = 1.25 < 1.3
    assert sampler.sample(np.array([3.0, 1.3, 0.0], dtype=np.float32)) == 1
    assert sampler.sample(np.array([3.0, 1.2, 0.0], dtype=np.float32)) == 0


def test_temperature_sharpens_and_flattens():
    probs = [0.6, 0.4]
    cold = draw(Sampler(2, temperature=0.25, seed=4, **OFF), logits_of(probs), 10000)
    hot = draw(Sampler(2, temperature=4.0, seed=4, **OFF), logits_of(probs), 10000)
    # p0 = 0.6^(1/T) / (0.6^(1/T) + 0.4^(1/T))
    for counts, temperature in ((cold, 0.25), (hot, 4.0)):
        a, b = 0.6 ** (1 / temperature), 0.4 ** (1 / temperature)
        assert abs(counts[0] / 10000 - a / (a + b)) < 0.02


def test_logits_from_a_native_pointer():
    from qconv.runtime._native import ffi

    values = ffi.new("float[]", [0.0, 3.0, 1.0])
    assert Sampler(3, temperature=0.0).sample(ffi.cast("const float *", values)) == 1


def test_wrong_vocabulary_size_and_bad_params_are_refused():
    sampler = Sampler(10, temperature=1.0)
    with pytest.raises(ValueError):
        sampler.sample(np.zeros(11, dtype=np.float32))
    with pytest.raises(ValueError):
        Sampler(0)
    with pytest.raises(ValueError):
        Sampler(10, repeat_penalty=0.0)
    assert not math.isnan(sampler.sample(np.zeros(10, dtype=np.float32)))
