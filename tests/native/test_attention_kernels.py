"""The AVX-512 attention kernels equal the scalar reference bit for bit (both follow ggml's summation orders, which
keeps f32/f16 KV-cache logits equal to llama.cpp's), in both orders (prompt and single-token), for f32 and f16
caches, at position counts around the 16-position blocks; with an f16 cache both round q and the weights to f16
themselves (inputs already rounded pass unchanged)."""

from __future__ import annotations

import numpy as np
import pytest

from qconv.runtime._native import ffi, lib

N_POS = [1, 15, 16, 17, 63, 64, 100, 512]


def needs_avx512():
    if not lib.qrt_kernel_variant_supported(b"avx512"):
        pytest.skip("no AVX-512 on this CPU")


def cache(rng, n_pos: int, stride: int, f16: bool) -> np.ndarray:
    rows = rng.standard_normal((n_pos, stride)).astype(np.float32)
    rows[:, 5] *= 30.0  # an outlier channel
    return rows.astype(np.float16) if f16 else rows


def scores(variant: str, q, k, n_pos, stride, hd, f16, vecdot) -> np.ndarray:
    att = np.zeros(max(n_pos, 1), dtype=np.float32)
    rc = lib.qrt_kernel_attn_scores(
        variant.encode(), ffi.from_buffer("float[]", att), ffi.from_buffer("float[]", q), ffi.from_buffer(k),
        n_pos, stride, hd, int(f16), int(vecdot), 0.125,
    )  # fmt: skip
    assert rc == 0
    return att[:n_pos]


def values(variant: str, w, v, n_pos, stride, hd, f16, vecdot) -> np.ndarray:
    out = np.zeros(hd, dtype=np.float32)
    rc = lib.qrt_kernel_attn_values(
        variant.encode(), ffi.from_buffer("float[]", out), ffi.from_buffer("float[]", w), ffi.from_buffer(v),
        n_pos, stride, hd, int(f16), int(vecdot),
    )  # fmt: skip
    assert rc == 0
    return out


def softmax_like(rng, n_pos: int) -> np.ndarray:
    """Weights over 12 decades, as softmax gives them: tiny ones become f16 subnormals when rounded."""
    w = np.exp(rng.uniform(-28.0, 0.0, n_pos)).astype(np.float32)
    return (w / w.sum()).astype(np.float32)


@pytest.mark.parametrize("f16", [False, True])
@pytest.mark.parametrize("vecdot", [0, 1])
@pytest.mark.parametrize("hd", [64, 80, 128, 256])
def test_avx512_equals_scalar(f16, vecdot, hd):
    needs_avx512()
    rng = np.random.default_rng(hd + 2 * vecdot + int(f16))
    stride = 3 * hd  # three KV heads side by side, as in the cache
    for n_pos in N_POS:
        k, v = cache(rng, n_pos, stride, f16), cache(rng, n_pos, stride, f16)
        q = rng.standard_normal(hd).astype(np.float32)
        want = scores("scalar", q, k, n_pos, stride, hd, f16, vecdot)
        np.testing.assert_array_equal(
            scores("avx512", q, k, n_pos, stride, hd, f16, vecdot), want, err_msg=f"scores {n_pos}"
        )
        w = softmax_like(rng, n_pos)
        want = values("scalar", w, v, n_pos, stride, hd, f16, vecdot)
        np.testing.assert_array_equal(
            values("avx512", w, v, n_pos, stride, hd, f16, vecdot), want, err_msg=f"values {n_pos}"
        )


@pytest.mark.parametrize("f16", [False, True])
@pytest.mark.parametrize("vecdot", [0, 1])
@pytest.mark.parametrize("hd", [64, 128, 256])
def test_avx512_group_of_heads_equals_each_head_alone(f16, vecdot, hd):
    """The heads that share a kv head, through the group kernels (one read of each key and value row for all of
    them in the prompt order), give each head the scalar reference's results of it alone."""
    needs_avx512()
    rng = np.random.default_rng(100 + hd + 2 * vecdot + int(f16))
    stride = 2 * hd
    for n_q in (1, 2, 3, 4):
        for n_pos in N_POS:
            k, v = cache(rng, n_pos, stride, f16), cache(rng, n_pos, stride, f16)
            q = rng.standard_normal((n_q, hd)).astype(np.float32)
            att_stride = n_pos + 3  # rows apart, as the model's per-thread buffer
            att = np.zeros((n_q, att_stride), dtype=np.float32)
            rc = lib.qrt_kernel_attn_scores_group(
                b"avx512", ffi.from_buffer("float[]", att), att_stride, ffi.from_buffer("float[]", q), n_q,
                ffi.from_buffer(k), n_pos, stride, hd, int(f16), vecdot, 0.125,
            )  # fmt: skip
            assert rc == 0
            w = np.zeros((n_q, att_stride), dtype=np.float32)
            for j in range(n_q):
                want = scores("scalar", q[j], k, n_pos, stride, hd, f16, vecdot)
                np.testing.assert_array_equal(att[j, :n_pos], want, err_msg=f"scores head {j} of {n_q}, {n_pos}")
                w[j, :n_pos] = softmax_like(rng, n_pos)
            want = [values("scalar", w[j, :n_pos].copy(), v, n_pos, stride, hd, f16, vecdot) for j in range(n_q)]
            out = np.zeros((n_q, hd), dtype=np.float32)
            rc = lib.qrt_kernel_attn_values_group(
                b"avx512", ffi.from_buffer("float[]", out), ffi.from_buffer("float[]", w), att_stride, n_q,
                ffi.from_buffer(v), n_pos, stride, hd, int(f16), vecdot,
            )  # fmt: skip
            assert rc == 0
            for j in range(n_q):
                np.testing.assert_array_equal(out[j], want[j], err_msg=f"values head {j} of {n_q}, {n_pos}")


@pytest.mark.parametrize("variant", ["scalar", "avx512"])
def test_f16_cache_rounds_query_and_weights(variant):
    """Rounding q and w to f16 before the call changes nothing: the kernels round them the same way."""
    if variant == "avx512":
        needs_avx512()
    rng = np.random.default_rng(7)
    hd, n_pos = 64, 40
    k, v = cache(rng, n_pos, hd, True), cache(rng, n_pos, hd, True)
    q = rng.standard_normal(hd).astype(np.float32)
    w = softmax_like(rng, n_pos)
    q16, w16 = q.astype(np.float16).astype(np.float32), w.astype(np.float16).astype(np.float32)
    for vecdot in (0, 1):
        np.testing.assert_array_equal(
            scores(variant, q, k, n_pos, hd, hd, True, vecdot), scores(variant, q16, k, n_pos, hd, hd, True, vecdot)
        )
        np.testing.assert_array_equal(
            values(variant, w, v, n_pos, hd, hd, True, vecdot), values(variant, w16, v, n_pos, hd, hd, True, vecdot)
        )
    # and the f32 cache keeps q unrounded: the scores differ
    k32 = k.astype(np.float32)
    assert not np.array_equal(
        scores(variant, q, k32, n_pos, hd, hd, False, 0), scores(variant, q16, k32, n_pos, hd, hd, False, 0)
    )


def test_probe_rejects_bad_arguments():
    att = np.zeros(4, dtype=np.float32)
    q = np.zeros(64, dtype=np.float32)
    k = np.zeros((4, 64), dtype=np.float32)
    args = (ffi.from_buffer("float[]", att), ffi.from_buffer("float[]", q), ffi.from_buffer(k), 4)
    assert lib.qrt_kernel_attn_scores(b"no-such", *args, 64, 64, 0, 0, 1.0) == -1
    assert lib.qrt_kernel_attn_scores(b"scalar", *args, 64, 60, 0, 0, 1.0) == -1  # hd not a multiple of 16
    assert lib.qrt_kernel_attn_scores(b"scalar", *args, 32, 64, 0, 0, 1.0) == -1  # stride below hd


def softmax(variant: str, x: np.ndarray) -> np.ndarray:
    y = np.ascontiguousarray(x, dtype=np.float32).copy()
    assert lib.qrt_kernel_attn_softmax(variant.encode(), ffi.from_buffer("float[]", y), len(y)) == 0
    return y


def test_softmax_avx512_equals_scalar():
    """The AVX-512 softmax equals op_softmax (the scalar reference) bit for bit, at lengths around the 16 blocks."""
    needs_avx512()
    rng = np.random.default_rng(11)
    for n in [1, 2, 15, 16, 17, 31, 100, 512, 2049]:
        x = (rng.standard_normal(n) * rng.uniform(0.1, 30.0)).astype(np.float32)
        want = softmax("scalar", x)
        np.testing.assert_array_equal(softmax("avx512", x), want, err_msg=f"n={n}")
        np.testing.assert_allclose(want.sum(dtype=np.float64), 1.0, rtol=1e-5)


def geglu(variant: str, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    y = np.ascontiguousarray(gate, dtype=np.float32).copy()
    up = np.ascontiguousarray(up, dtype=np.float32)
    assert (
        lib.qrt_kernel_geglu(variant.encode(), ffi.from_buffer("float[]", y), ffi.from_buffer("float[]", up), len(y))
        == 0
    )
    return y


def test_geglu_is_ggmls_f16_table_and_avx512_equals_scalar():
    """gelu(gate) * up as ggml computes it: the gate rounded to f16, gelu's tanh form rounded to f16, exact past
    +-10; the AVX-512 kernel equals the scalar reference bit for bit (tails included)."""
    rng = np.random.default_rng(5)
    for n in [1, 15, 16, 17, 2048, 2051]:
        gate = (rng.standard_normal(n) * 6).astype(np.float32)
        gate[:3] = [-10.0, 10.0, 12.5][: min(3, n)]
        up = rng.standard_normal(n).astype(np.float32)
        h = gate.astype(np.float16).astype(np.float32)
        gelu = (0.5 * h * (1 + np.tanh(np.float32(0.7978845608) * h * (1 + np.float32(0.044715) * h * h)))).astype(
            np.float16
        )
        want = np.where(gate <= -10, 0, np.where(gate >= 10, gate * up, gelu.astype(np.float32) * up))
        got = geglu("scalar", gate, up)
        np.testing.assert_allclose(got, want.astype(np.float32), rtol=2e-3, atol=1e-6, err_msg=f"n={n}")
        if lib.qrt_kernel_geglu(b"avx512", ffi.NULL, ffi.NULL, 0) == 0:
            np.testing.assert_array_equal(geglu("avx512", gate, up), got, err_msg=f"n={n}")
