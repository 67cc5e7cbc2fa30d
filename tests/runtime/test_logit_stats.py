"""qconv.runtime.logit_stats (native/stats/logit_stats.c) against float64 numpy: KLD within 1e-6 relative (also when the
divergence is tiny, where subtracting two log-sum-exps would lose it), argmaxes exact, NLLs within 1e-6 relative,
under the AVX-512 path and the scalar one."""

from __future__ import annotations

import numpy as np
import pytest

from qconv.runtime._native import lib
from qconv.runtime.logit_stats import logit_stats


def log_softmax64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def kld64(ref: np.ndarray, quant: np.ndarray) -> np.ndarray:
    """KL in float64 from terms that are all >= 0 (E_p[expm1(-v) + v], v = d - E_p[d], d = ref - quant): precise
    also for divergences of 1e-14, where sum p (log p - log q) is lost in float64's own rounding (1e-16 absolute)."""
    p = np.exp(log_softmax64(ref))
    d = ref.astype(np.float64) - quant.astype(np.float64)
    v = d - (p * d).sum(axis=-1, keepdims=True)
    return np.log1p((p * (np.expm1(-v) + v)).sum(axis=-1))


def reference(ref: np.ndarray, quant: np.ndarray, nxt: np.ndarray):
    r, q = log_softmax64(ref), log_softmax64(quant)
    kld = kld64(ref, quant)
    np.testing.assert_allclose(kld, (np.exp(r) * (r - q)).sum(axis=-1), rtol=1e-9, atol=1e-14)  # the textbook form
    rows = np.arange(len(nxt))
    safe = np.maximum(nxt, 0)
    nll_r = np.where(nxt >= 0, -r[rows, safe], np.nan)
    nll_q = np.where(nxt >= 0, -q[rows, safe], np.nan)
    return kld, r.argmax(-1), q.argmax(-1), nll_r, nll_q


def logits_pair(rng, n: int, vocab: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Model-like logits (a few peaked rows, a few flat ones) and a perturbed copy."""
    ref = (rng.standard_normal((n, vocab)) * rng.uniform(1.0, 4.0, (n, 1))).astype(np.float32)
    ref[0, 7] += 30.0  # one almost-certain token
    ref[1] *= 0.01  # nearly uniform
    quant = (ref + noise * rng.standard_normal((n, vocab))).astype(np.float32)
    return ref, quant


@pytest.fixture(params=["auto", "scalar"])
def variant(request):
    assert lib.qrt_kernels_force(request.param.encode()) == 0
    yield request.param
    lib.qrt_kernels_force(b"auto")


@pytest.mark.parametrize(("vocab", "noise"), [(49152, 0.3), (1000, 0.01), (4099, 1e-3), (37, 2.0)])
def test_matches_float64_numpy(variant, vocab, noise):
    rng = np.random.default_rng(vocab)
    n = 9
    ref, quant = logits_pair(rng, n, vocab, noise)
    nxt = rng.integers(0, vocab, n).astype(np.int32)
    nxt[3] = -1  # no next token known
    nxt[0] = 7
    got = logit_stats(ref, quant, nxt, threads=2)
    kld, am_r, am_q, nll_r, nll_q = reference(ref, quant, nxt)
    np.testing.assert_allclose(got.kld, kld, rtol=1e-6, atol=0)
    np.testing.assert_array_equal(got.argmax_ref, am_r)
    np.testing.assert_array_equal(got.argmax_quant, am_q)
    np.testing.assert_allclose(got.nll_ref, nll_r, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(got.nll_quant, nll_q, rtol=1e-6, atol=1e-9)
    assert np.isnan(got.nll_ref[3]) and np.isnan(got.nll_quant[3])


def test_real_model_logits(variant, smollm2_package_gguf):
    """Logits of the real model against a shifted, noisier copy: realistic peaked distributions, 49152 tokens."""
    from qconv.runtime.model import Model

    model = Model(smollm2_package_gguf, threads=2, ctx=64)
    tokens = model.tokenize("The capital of France is Paris. The quick brown fox jumps over the lazy dog.")[:24]
    ref = model.logits(tokens)
    rng = np.random.default_rng(3)
    quant = (ref * 1.01 + 0.05 * rng.standard_normal(ref.shape) + 2.0).astype(np.float32)  # + 2: a constant shift
    nxt = np.array(tokens[1:] + [-1], dtype=np.int32)
    got = logit_stats(ref, quant, nxt)
    kld, am_r, am_q, nll_r, nll_q = reference(ref, quant, nxt)
    np.testing.assert_allclose(got.kld, kld, rtol=1e-6, atol=0)
    np.testing.assert_array_equal(got.argmax_ref, am_r)
    np.testing.assert_array_equal(got.argmax_quant, am_q)
    np.testing.assert_allclose(got.nll_ref, nll_r, rtol=1e-6)
    np.testing.assert_allclose(got.nll_quant, nll_q, rtol=1e-6)


def test_identical_logits_give_zero_and_ties_take_the_first_index():
    ref = np.zeros((3, 64), dtype=np.float32)
    ref[:, 5] = ref[:, 40] = 2.0  # a tie: numpy's argmax takes the first
    got = logit_stats(ref, ref.copy())
    np.testing.assert_array_equal(got.kld, 0.0)
    np.testing.assert_array_equal(got.argmax_ref, 5)
    assert np.isnan(got.nll_ref).all()


def test_rows_split_across_threads_agree():
    rng = np.random.default_rng(1)
    ref, quant = logits_pair(rng, 37, 2048, 0.2)
    one = logit_stats(ref, quant, threads=1)
    many = logit_stats(ref, quant, threads=4)
    np.testing.assert_array_equal(one.kld, many.kld)
    np.testing.assert_array_equal(one.argmax_quant, many.argmax_quant)


def test_bad_input_is_a_clear_error():
    ref = np.zeros((2, 10), dtype=np.float32)
    with pytest.raises(ValueError, match="shapes"):
        logit_stats(ref, np.zeros((2, 11), dtype=np.float32))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        logit_stats(ref, ref, np.array([1, 10]))
    with pytest.raises(ValueError, match="next_tokens"):
        logit_stats(ref, ref, np.array([1]))
    assert logit_stats(ref[:0], ref[:0]).kld.shape == (0,)
